"""Runs inside the sandbox (bwrap or wasm): execute the user's code, report what happened.

Stdlib only, no corral imports: this file is the only host code the guest sees. It splits off
the last expression (ast) to return its repr, reports a user exception as type/message/line,
saves matplotlib figures left open into the output dir and reports. In bwrap mode the result (a
JSON line) and the output files (a tar stream) leave through a pipe, as the output dir is a tmpfs
that vanishes with the sandbox; in wasm mode the output dir is a host mount, the result a file.
Imports are kept few and lazy: they are paid on every run.
"""

import ast
import contextlib
import io
import json
import os
import sys
from typing import Any

USER_FILE = "<code>"
REPR_MAX = 10_000
MESSAGE_MAX = 2_000


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:limit] + "... [truncated]"


def _user_line(exc: BaseException) -> int | None:
    import traceback

    if isinstance(exc, SyntaxError) and exc.filename == USER_FILE:
        return exc.lineno
    line = None
    for frame, lineno in traceback.walk_tb(exc.__traceback__):
        if frame.f_code.co_filename == USER_FILE:
            line = lineno
    return line


def _run_user_code(source: str, result: dict[str, Any]) -> None:
    namespace: dict[str, Any] = {"__name__": "__main__", "__builtins__": __builtins__}
    try:
        tree = ast.parse(source, filename=USER_FILE, mode="exec")
        last: ast.Expression | None = None
        tail = tree.body[-1] if tree.body else None
        if isinstance(tail, ast.Expr):
            tree.body.pop()
            last = ast.Expression(tail.value)
        exec(compile(tree, USER_FILE, "exec"), namespace)  # noqa: S102 - running it is the point
        if last is not None:
            value = eval(compile(last, USER_FILE, "eval"), namespace)  # noqa: S307
            if value is not None:
                result["last_expr_repr"] = _cut(repr(value), REPR_MAX)
    except SystemExit as exc:
        if exc.code not in (None, 0):
            result["error"] = {"type": "SystemExit", "message": str(exc.code), "line": None}
    except BaseException as exc:  # the user's failure is a normal result
        result["error"] = {
            "type": type(exc).__name__,
            "message": _cut(str(exc), MESSAGE_MAX),
            "line": _user_line(exc),
        }


def _save_figures(output_dir: str, formats: tuple[str, ...], result: dict[str, Any]) -> None:
    plt = sys.modules.get("matplotlib.pyplot")
    if plt is None:
        return
    for number in plt.get_fignums():
        for fmt in formats:
            name = f"figure-{number}.{fmt}"
            suffix = 1
            while os.path.lexists(os.path.join(output_dir, name)):
                name = f"figure-{number}-{suffix}.{fmt}"
                suffix += 1
            try:
                plt.figure(number).savefig(os.path.join(output_dir, name), format=fmt, dpi=100)
                result["figures"].append(name)
            except Exception as exc:
                result["notes"].append(f"could not save figure {number} as {fmt}: {exc}")


def _send(
    result_fd: int, output_dir: str, result: dict[str, Any], max_files: int, max_file_bytes: int
) -> None:
    """The result as one JSON line, then (only if there are files) a tar stream of the output
    dir's regular files, never symlinks. tarfile is imported only when there is a file."""
    files: list[str] = []
    for entry in sorted(os.scandir(output_dir), key=lambda e: e.name):
        if entry.is_symlink():
            result["notes"].append(f"skipped {entry.name}: symbolic links are not collected")
        elif not entry.is_file(follow_symlinks=False):
            result["notes"].append(f"skipped {entry.name}: only plain files are collected")
        elif len(files) >= max_files:
            result["notes"].append(f"skipped {entry.name}: more than {max_files} files")
        elif entry.stat(follow_symlinks=False).st_size > max_file_bytes:
            result["notes"].append(f"skipped {entry.name}: larger than {max_file_bytes} bytes")
        else:
            files.append(entry.name)
    with os.fdopen(result_fd, "wb", buffering=1 << 16) as out:
        out.write(json.dumps(result).encode() + b"\n")
        if not files:
            return
        import tarfile

        with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tar:
            for name in files:
                fd = os.open(os.path.join(output_dir, name), os.O_RDONLY | os.O_NOFOLLOW)
                with os.fdopen(fd, "rb") as fh:
                    info = tarfile.TarInfo("output/" + name)
                    info.size = os.fstat(fh.fileno()).st_size
                    tar.addfile(info, fh)


def _seed_mpl_cache(source_dir: str) -> None:
    """Copy the pre-built font list into MPLCONFIGDIR so matplotlib skips its font scan."""
    target = os.environ.get("MPLCONFIGDIR")
    if not source_dir or not target or not os.path.isdir(source_dir):
        return
    with contextlib.suppress(OSError):
        os.makedirs(target, exist_ok=True)
        for name in os.listdir(source_dir):
            with open(os.path.join(source_dir, name), "rb") as src:
                data = src.read()
            with open(os.path.join(target, name), "wb") as dst:
                dst.write(data)


def main() -> None:
    # One JSON argument (json is needed anyway; argparse would cost a few ms per run).
    conf: dict[str, Any] = json.loads(sys.argv[1])
    if conf.get("max_processes"):
        # Set here, inside the sandbox's own user namespace, RLIMIT_NPROC counts only the
        # sandbox's processes (on the host it would count every process of the worker's user).
        import resource

        nproc = int(conf["max_processes"])
        resource.setrlimit(resource.RLIMIT_NPROC, (nproc, nproc))
    code_path = conf.get("code")
    if code_path:
        with open(code_path, encoding="utf-8") as fh:
            source = fh.read()
    else:
        source = sys.stdin.read()
    _seed_mpl_cache(conf.get("mpl_cache", ""))
    output_dir = conf.get("output", "/output")
    os.chdir(output_dir)
    sys.argv = ["main.py"]
    sys.stdin = io.StringIO()  # the user's code gets an empty stdin
    result: dict[str, Any] = {"last_expr_repr": None, "error": None, "figures": [], "notes": []}
    main_pid = os.getpid()
    _run_user_code(source, result)
    if os.getpid() != main_pid:  # a process the user's code forked: only the first one reports
        os._exit(0)
    formats = tuple(f for f in conf.get("formats", ["png"]) if f in ("png", "svg"))
    _save_figures(output_dir, formats or ("png",), result)
    sys.stdout.flush()
    sys.stderr.flush()
    if conf["mode"] == "bwrap":
        _send(conf["result_fd"], output_dir, result, conf["max_files"], conf["max_file_bytes"])
    else:
        with open(conf["result"], "w", encoding="utf-8") as fh:
            json.dump(result, fh)


if __name__ == "__main__":
    main()
