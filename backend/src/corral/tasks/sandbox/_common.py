"""Host-side helpers both backends share: output caps, collecting files, user-facing messages."""

from __future__ import annotations

import os
import stat
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from corral.tasks.sandbox import (
    Sandbox,
    SandboxFailure,
    SandboxResult,
    SandboxUnavailable,
    UserCodeError,
)
from corral.tasks.sandbox.settings import SandboxLimits

IMAGE_TYPES: dict[str, str] = {
    ".png": "image/png",
    ".svg": "image/svg+xml",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".gif": "image/gif",
    ".webp": "image/webp",
}

MB = 1 << 20
GUEST_TMP = "/tmp"  # noqa: S108 - a path inside the sandbox (its own tmpfs), not the host's
GUEST_MPL_DIR = f"{GUEST_TMP}/matplotlib"


def content_type_of(name: str) -> str | None:
    """Image type by extension; ``None`` for anything that is not a figure."""
    return IMAGE_TYPES.get(os.path.splitext(name)[1].lower())


def safe_name(name: str) -> bool:
    """One plain path component: no separators, no dot-names, no NUL, printable."""
    return (
        bool(name)
        and len(name) <= 200
        and "/" not in name
        and "\0" not in name
        and name not in {".", ".."}
        and not name.startswith(".")
        and name.isprintable()
    )


@dataclass
class Collected:
    files: list[Path] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def collect_outputs(output_dir: Path, limits: SandboxLimits) -> Collected:
    """Regular files at the top of ``output_dir``, never following symlinks, each and all capped.

    Anything else (links, folders, devices, oversize files) is left out with a note saying why.
    """
    out = Collected()
    total = 0
    max_file = limits.max_file_mb * MB
    max_total = limits.output_max_mb * MB
    try:
        names = sorted(os.listdir(output_dir))
    except OSError as exc:
        out.notes.append(f"could not list the output files: {exc.strerror}")
        return out
    for name in names:
        path = output_dir / name
        try:
            st = os.lstat(path)
        except OSError:
            continue
        if stat.S_ISLNK(st.st_mode):
            out.notes.append(f"skipped {name}: symbolic links are not collected")
        elif not stat.S_ISREG(st.st_mode):
            out.notes.append(f"skipped {name}: only plain files are collected")
        elif not safe_name(name):
            out.notes.append(f"skipped {name!r}: unusable file name")
        elif len(out.files) >= limits.max_output_files:
            out.notes.append(f"skipped {name}: more than {limits.max_output_files} files")
        elif st.st_size > max_file:
            out.notes.append(f"skipped {name}: larger than {limits.max_file_mb} MB")
        elif total + st.st_size > max_total:
            out.notes.append(f"skipped {name}: output files over {limits.output_max_mb} MB")
        else:
            total += st.st_size
            out.files.append(path)
    return out


def open_nofollow(path: Path) -> int:
    """A read descriptor for a regular file, refusing symlinks at the last component."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise OSError(f"{path.name} is not a regular file")
    return fd


def new_run_dir(parent: Path | None) -> Path:
    """A private per-run directory (0700) under ``parent`` or the system temp dir."""
    if parent is not None:
        parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix="corral-run-", dir=parent))


def kill_message(reason: str, limits: SandboxLimits) -> tuple[str, str]:
    """(error type, message) a user sees when the sandbox stopped their code."""
    return {
        "wall_time": (
            "TimeLimitExceeded",
            f"the code ran longer than {limits.wall_s:g} s and was stopped",
        ),
        "cpu_time": (
            "TimeLimitExceeded",
            f"the code used more than {limits.cpu_s} s of CPU time and was stopped",
        ),
        "memory": (
            "MemoryLimitExceeded",
            f"the code used more than {limits.memory_mb} MB of memory and was stopped",
        ),
        "output": (
            "OutputLimitExceeded",
            f"the code wrote more than {limits.output_max_mb} MB of files and was stopped",
        ),
        "signal": ("SandboxKilled", "the code was killed by a signal"),
    }.get(reason, ("SandboxKilled", f"the code was stopped ({reason})"))


def explain_error(err_type: str, message: str, limits: SandboxLimits) -> str:
    """Add the relevant limit to errors that come from hitting one, so users know what to fix."""
    low = message.lower()
    if err_type == "MemoryError":
        return f"{message or 'out of memory'} (the sandbox allows {limits.memory_mb} MB)".strip()
    if "file too large" in low or "errno 27" in low:
        return f"{message} (files are limited to {limits.max_file_mb} MB)"
    if "no space left" in low:
        return f"{message} (the sandbox's disk holds {limits.tmpfs_mb} MB)"
    if err_type == "BlockingIOError" and "resource temporarily unavailable" in low:
        return f"{message} (the sandbox allows at most {limits.max_processes} processes)"
    if "too many open files" in low:
        return f"{message} (at most {limits.max_open_files} open files)"
    return message


def apply_report(result: SandboxResult, report: dict[str, object] | None, limits: SandboxLimits,
                 exit_status: int | None) -> None:  # fmt: skip
    """Fill ``result`` from the runner's ``result.json`` (untrusted: the user's code can forge it,
    which only changes its own result)."""
    if report is None:
        result.error = UserCodeError(
            type="SandboxExit",
            message=f"the program ended (exit status {exit_status}) before reporting a result",
        )
        return
    notes = report.get("notes")
    if isinstance(notes, list):
        result.notes.extend(str(n)[:500] for n in notes[:50])
    expr = report.get("last_expr_repr")
    result.last_expr_repr = expr if isinstance(expr, str) else None
    error = report.get("error")
    if isinstance(error, dict):
        err_type = str(error.get("type") or "Error")[:200]
        line = error.get("line")
        result.error = UserCodeError(
            type=err_type,
            message=explain_error(err_type, str(error.get("message") or ""), limits),
            line=line if isinstance(line, int) else None,
        )


def note_truncation(result: SandboxResult, limits: SandboxLimits) -> None:
    for name, cut in (("stdout", result.stdout_truncated), ("stderr", result.stderr_truncated)):
        if cut:
            result.notes.append(f"{name} was cut at {limits.stdout_max_bytes} bytes")


SELF_TEST_CODE = (
    "import os, socket\n"
    "assert not os.path.exists('/etc/passwd'), 'host files visible'\n"
    "assert not any(k.startswith(('TASKS_', 'CORRAL_', 'AWS_')) for k in os.environ), 'env'\n"
    "print(6 * 7)\n"
    "6 * 7\n"
)


def run_self_test(
    sandbox: Sandbox, label: str, limits: SandboxLimits, work_dir: Path | None, probe: str = ""
) -> None:
    """Run known code through ``sandbox``; ``SandboxUnavailable`` unless it answers 42 exactly.

    ``probe`` (backend-specific checks, e.g. bwrap's seccomp filter) runs first and must not
    print or fail."""
    with tempfile.TemporaryDirectory(prefix="corral-selftest-", dir=work_dir) as d:
        out, inp = Path(d) / "out", Path(d) / "in"
        out.mkdir()
        inp.mkdir()
        try:
            result = sandbox.run(
                probe + SELF_TEST_CODE, input_dir=inp, output_dir=out, limits=limits
            )
        except SandboxFailure as exc:
            raise SandboxUnavailable(f"{label} self-test could not start: {exc}") from exc
    if result.error is not None or result.stdout != "42\n" or result.last_expr_repr != "42":
        raise SandboxUnavailable(
            f"{label} self-test gave a wrong answer: error={result.error} "
            f"stdout={result.stdout[:200]!r} stderr={result.stderr[-500:]!r}"
        )
