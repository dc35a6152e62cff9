"""Warm sandboxes: one bwrap per session, each running a zygote that already imported the stack.

``ZygoteSandbox`` starts ``bwrap ... python /session/kernel.py`` with the same options as a
one-shot run (``BwrapSandbox.sandbox_argv``: new namespaces, read-only binds, tmpfs, seccomp
filter, rlimits) plus the session guest at ``/session`` and a private, initially empty input
directory at ``/input``. The zygote imports numpy, pandas, scipy and matplotlib, says ``ready``
and waits; ``fork`` gives a kernel with a fresh namespace. ``WarmPool`` keeps a few of them
ready, so a new session only pays a fork.

Every bwrap is started from one long-lived thread (``Spawner``): ``--die-with-parent`` uses
``PR_SET_PDEATHSIG``, which fires when the *thread* that started the process exits.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import os
import queue
import resource
import select
import shutil
import signal
import struct
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any, TypeVar

import structlog

from corral.tasks.object_store import Buffer
from corral.tasks.sandbox import SandboxFailure, cgroups
from corral.tasks.sandbox import seccomp as seccomp_filter
from corral.tasks.sandbox.bwrap import MPL_CACHE, BwrapSandbox, _rlimits
from corral.tasks.sandbox.settings import SandboxLimits
from corral.tasks.sessions.settings import SessionSettings

log = structlog.get_logger(__name__)

SESSION_GUEST_DIR = Path(__file__).resolve().parent / "guest"
HEAD = struct.Struct(">IQ")
MAX_HEADER = 8 << 20
F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)
WIDE_PIPE, NARROW_PIPE = 1 << 20, 1 << 16  # 1 MB is the unprivileged maximum by default
STACK_HEADROOM_MB = 1024  # address space of the warm stack (numpy, pandas, scipy, matplotlib)
T = TypeVar("T")


class SandboxGone(SandboxFailure):
    """The session's sandbox (zygote and kernel) is no longer running."""


class Spawner:
    """Runs callables on one thread that lives as long as the host."""

    def __init__(self) -> None:
        self._jobs: queue.Queue[tuple[Callable[[], Any], Future[Any]]] = queue.Queue()
        self._thread = threading.Thread(target=self._loop, name="sandbox-spawner", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while True:
            fn, fut = self._jobs.get()
            if not fut.set_running_or_notify_cancel():
                continue
            try:
                fut.set_result(fn())
            except BaseException as exc:
                fut.set_exception(exc)

    def call(self, fn: Callable[[], T]) -> T:
        fut: Future[T] = Future()
        self._jobs.put((fn, fut))
        return fut.result()


class FrameReader:
    """Incremental parser of the guest's frames (``>IQ`` lengths, JSON header, payload)."""

    def __init__(self, max_payload: int) -> None:
        self.buf = bytearray()
        self.max_payload = max_payload

    def feed(self, data: bytes) -> None:
        self.buf += data

    def next(self) -> tuple[dict[str, Any], bytearray] | None:
        if len(self.buf) < HEAD.size:
            return None
        hlen, plen = HEAD.unpack_from(self.buf)
        if hlen > MAX_HEADER or plen > self.max_payload:
            raise SandboxFailure(f"session sent an oversized frame ({hlen} + {plen} bytes)")
        end = HEAD.size + hlen + plen
        if len(self.buf) < end:
            return None
        header = json.loads(bytes(self.buf[HEAD.size : HEAD.size + hlen]))
        # The payload keeps the buffer it arrived in (a 100 MB snapshot is not copied): what
        # follows the frame moves to a new buffer, and dropping the prefix is O(1).
        payload, self.buf = self.buf, self.buf[end:]
        del payload[end:]
        del payload[: HEAD.size + hlen]
        if not isinstance(header, dict):
            raise SandboxFailure("session sent a malformed frame")
        return header, payload


def encode_frame(header: dict[str, Any], payload: bytes = b"") -> bytes:
    raw = json.dumps(header).encode()
    return HEAD.pack(len(raw), len(payload)) + raw + payload


class ZygoteSandbox:
    """One bwrap running a zygote; later one kernel at a time forked from it."""

    def __init__(self, proc: subprocess.Popen[bytes], cmd_fd: int, out_fd: int, home: Path,
                 max_payload: int) -> None:  # fmt: skip
        self.proc = proc
        self.cmd_fd = cmd_fd
        self.out_fd = out_fd
        self.home = home
        self.input_dir = home / "input"
        self.reader = FrameReader(max_payload)
        self.started = time.monotonic()
        self.warm_s: float | None = None
        self.kernel_pid: int | None = None
        self.cgroup: cgroups.RunCgroup | None = None
        for fd in (out_fd, self.stdout_fd, self.stderr_fd):
            os.set_blocking(fd, False)

    @property
    def stdout_fd(self) -> int:
        assert self.proc.stdout is not None
        return self.proc.stdout.fileno()

    @property
    def stderr_fd(self) -> int:
        assert self.proc.stderr is not None
        return self.proc.stderr.fileno()

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    def send(self, header: dict[str, Any], payload: Buffer = b"") -> None:
        raw = json.dumps(header).encode()
        try:
            for part in (HEAD.pack(len(raw), len(payload)) + raw, payload):
                data = memoryview(part)
                while data:
                    data = data[os.write(self.cmd_fd, data) :]
        except (BrokenPipeError, OSError) as exc:
            raise SandboxGone(f"the session sandbox is gone: {exc}") from exc

    def receive(
        self,
        deadline: float,
        on_stdout: Callable[[bytes], None] | None = None,
        on_stderr: Callable[[bytes], None] | None = None,
    ) -> tuple[dict[str, Any], bytearray] | None:
        """The next frame, feeding stdout/stderr meanwhile; ``None`` at the deadline."""
        fds: dict[int, Callable[[bytes], None]] = {self.out_fd: self.reader.feed}
        fds[self.stdout_fd] = on_stdout or (lambda _b: None)
        fds[self.stderr_fd] = on_stderr or (lambda _b: None)
        while True:
            frame = self.reader.next()
            if frame is not None:
                return frame
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            ready, _, _ = select.select(list(fds), [], [], min(remaining, 1.0))
            for fd in ready:
                try:
                    data = os.read(fd, 1 << 20)
                except BlockingIOError:
                    continue
                if not data:
                    if fd == self.out_fd:
                        raise SandboxGone("the session sandbox exited")
                    del fds[fd]
                    continue
                fds[fd](data)

    def drain(self, on_stdout: Callable[[bytes], None], on_stderr: Callable[[bytes], None]) -> None:
        """Read what is already in the stdout/stderr pipes, without waiting."""
        for fd, sink in ((self.stdout_fd, on_stdout), (self.stderr_fd, on_stderr)):
            while True:
                try:
                    data = os.read(fd, 1 << 20)
                except (BlockingIOError, OSError):
                    break
                if not data:
                    break
                sink(data)

    @contextlib.contextmanager
    def wide_pipes(self) -> Iterator[None]:
        """Large transfers (snapshots, restores) through 1 MB pipes instead of 64 KB ones: 16
        times fewer hand-overs between the kernel and the host, which is what a 100 MB
        snapshot costs on a busy machine. Set back after, so idle sessions do not hold the
        worker user's pipe-page budget."""
        for fd in (self.cmd_fd, self.out_fd):
            with contextlib.suppress(OSError):
                fcntl.fcntl(fd, F_SETPIPE_SZ, WIDE_PIPE)
        try:
            yield
        finally:
            for fd in (self.cmd_fd, self.out_fd):
                with contextlib.suppress(OSError):  # fails (harmlessly) while data is queued
                    fcntl.fcntl(fd, F_SETPIPE_SZ, NARROW_PIPE)

    def fork_kernel(self, memory_mb: int, deadline: float) -> int:
        self.send({"op": "fork", "memory_mb": memory_mb})
        frame = self.receive(deadline)
        while frame is not None and frame[0].get("op") in ("exited", "nokernel"):
            frame = self.receive(deadline)  # late news of an earlier kernel
        if frame is None or frame[0].get("op") != "kernel":
            raise SandboxGone(f"the zygote did not fork a kernel: {frame and frame[0]}")
        self.kernel_pid = int(frame[0]["pid"])
        return self.kernel_pid

    def kill(self) -> None:
        """SIGKILL bwrap's whole session; its pid 1 takes the sandbox down with it."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError):
            self.proc.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(5)
        for fd in (self.cmd_fd, self.out_fd):
            with contextlib.suppress(OSError):
                os.close(fd)
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()
        if self.cgroup is not None:
            self.cgroup.close()  # also anything that escaped the process group
            self.cgroup = None
        shutil.rmtree(self.home, ignore_errors=True)


class ZygoteFactory:
    """Starts zygote sandboxes with the worker's sandbox settings and the pool's limits."""

    def __init__(self, sandbox: BwrapSandbox, settings: SessionSettings, spawner: Spawner,
                 work_dir: Path) -> None:  # fmt: skip
        self.sandbox = sandbox
        self.settings = settings
        self.spawner = spawner
        self.work_dir = work_dir
        conf = sandbox.settings
        # Started at the ceiling of memory plus room for the imported stack; each kernel lowers
        # RLIMIT_AS to the stack plus its session's limit (guest/kernel.py ``_limit_memory``).
        self.limits: SandboxLimits = conf.limits.model_copy(
            update={"memory_mb": conf.max_limits.memory_mb + STACK_HEADROOM_MB,
                    "tmpfs_mb": max(conf.limits.tmpfs_mb, conf.limits.output_max_mb)}
        )  # fmt: skip
        self.max_payload = (self.settings.max_snapshot_mb + conf.max_limits.output_max_mb) << 20

    def _rlimits(self) -> list[tuple[int, tuple[int, int]]]:
        """The one-shot run's rlimits with the session's CPU budget; RLIMIT_NPROC is set in
        the sandbox (guest ``main``), where the user namespace makes it count only its own
        processes (set on bwrap it would count every process of the worker's user)."""
        cpu = self.settings.session_cpu_s
        return [
            (which, (cpu, cpu)) if which == resource.RLIMIT_CPU else (which, value)
            for which, value in _rlimits(self.limits)
            if which != resource.RLIMIT_NPROC
        ]

    def sweep_stale_cgroups(self) -> int:
        """Remove empty ``run-<pid>-*`` cgroups whose creator is dead (a host or worker that was
        SIGKILLed could not remove its sandboxes' groups); returns how many were removed."""
        found = self.sandbox.cgroup_host()
        removed = 0
        for parent in found.parents.values():
            try:
                entries = list(parent.iterdir())
            except OSError:
                continue
            for path in entries:
                pid = path.name.split("-")[1] if path.name.startswith("run-") else ""
                if not pid.isdigit() or _alive(int(pid)) or not path.is_dir():
                    continue
                try:
                    if (path / "cgroup.procs").read_text().strip():
                        continue
                    path.rmdir()
                    removed += 1
                except OSError:
                    continue
        return removed

    def _new_cgroup(self) -> cgroups.RunCgroup | None:
        """Memory and pids limits for the whole sandbox, without the cpu controller: with
        cgroup v1 a group competes with each process of its parent as one task, so a warming
        zygote would crawl on a busy host; a session's CPU is bounded by RLIMIT_CPU per call
        and ``session_cpu_s`` in all, and its BLAS threads by the sandbox's environment."""
        found = self.sandbox.cgroup_host()
        if found.mode == "none":
            return None
        if found.mode == "v1":
            found = dataclasses.replace(
                found,
                parents={c: p for c, p in found.parents.items() if c != "cpu"},
                controllers=tuple(c for c in found.controllers if c != "cpu"),
            )
        else:
            found = dataclasses.replace(
                found, controllers=tuple(c for c in found.controllers if c != "cpu")
            )
        try:
            return cgroups.RunCgroup(found, self.limits, 1.0)
        except OSError as exc:
            raise SandboxFailure(f"could not create the session's cgroup: {exc}") from exc

    def _spawn(self, home: Path) -> ZygoteSandbox:
        binary = self.sandbox.check_host()
        cmd_r, cmd_w = os.pipe()
        out_r, out_w = os.pipe()
        try:
            filter_fd = seccomp_filter.filter_fd() if self.sandbox.seccomp else None
        except seccomp_filter.SeccompUnavailable as exc:
            for fd in (cmd_r, cmd_w, out_r, out_w):
                os.close(fd)
            raise SandboxFailure(str(exc)) from exc
        passed = (cmd_r, out_w) if filter_fd is None else (cmd_r, out_w, filter_fd)
        argv = self.sandbox.sandbox_argv(
            binary, home / "input", self.limits, ((SESSION_GUEST_DIR, "/session"),),
            seccomp_fd=filter_fd,
        )  # fmt: skip
        conf = {"cmd_fd": cmd_r, "out_fd": out_w, "mpl_cache": f"/venv/{MPL_CACHE}",
                "max_processes": self.limits.max_processes}  # fmt: skip
        argv += ["/venv/bin/python", "-I", "/session/kernel.py", json.dumps(conf)]
        rlimits = self._rlimits()
        try:
            # Its own cgroup (when the host delegates one): memory, pids and CPU of this
            # session's whole sandbox, so a fork bomb or memory hog stays inside it.
            cgroup = self._new_cgroup()
        except SandboxFailure:
            for fd in (cmd_r, cmd_w, out_r, out_w) + (() if filter_fd is None else (filter_fd,)):
                os.close(fd)
            raise

        def _preexec() -> None:
            if cgroup is not None:
                cgroup.join_from_child()
            for which, value in rlimits:
                resource.setrlimit(which, value)

        try:
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                pass_fds=passed,
                env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"},
                preexec_fn=_preexec,
                start_new_session=True,
            )
        except (OSError, subprocess.SubprocessError) as exc:
            for fd in (cmd_w, out_r):
                os.close(fd)
            if cgroup is not None:
                cgroup.close()
            raise SandboxFailure(f"could not start bwrap: {exc}") from exc
        finally:
            for fd in (cmd_r, out_w) + (() if filter_fd is None else (filter_fd,)):
                os.close(fd)
        zygote = ZygoteSandbox(proc, cmd_w, out_r, home, self.max_payload)
        zygote.cgroup = cgroup
        return zygote

    def start(self) -> ZygoteSandbox:
        """Start a sandbox and wait until its zygote has imported the stack."""
        self.work_dir.mkdir(parents=True, exist_ok=True)
        home = Path(tempfile.mkdtemp(prefix="sbx-", dir=self.work_dir))
        (home / "input").mkdir()
        home.chmod(0o711)
        (home / "input").chmod(0o755)
        zygote = self.spawner.call(lambda: self._spawn(home))
        errors = bytearray()
        try:
            frame = zygote.receive(
                time.monotonic() + self.settings.start_timeout_s, on_stderr=errors.extend
            )
        except SandboxGone:
            frame = None
        if frame is None or frame[0].get("op") != "ready":
            zygote.kill()
            said = bytes(errors[-2000:]).decode(errors="replace")
            raise SandboxFailure(f"the session zygote did not start: {said}")
        zygote.warm_s = float(frame[0].get("warm_s") or 0.0)
        return zygote


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class WarmPool:
    """Keeps ``size`` zygotes ready; ``take`` hands one out and starts a replacement."""

    def __init__(self, factory: ZygoteFactory, size: int) -> None:
        self.factory = factory
        self.size = size
        self._ready: list[ZygoteSandbox] = []
        self._lock = threading.Lock()
        self._wanted = threading.Event()
        self._stopped = False
        self._thread = threading.Thread(target=self._fill, name="warm-pool", daemon=True)
        self._thread.start()
        self._wanted.set()

    def _fill(self) -> None:
        while not self._stopped:
            self._wanted.wait()
            self._wanted.clear()
            while not self._stopped:
                with self._lock:
                    self._ready = [z for z in self._ready if z.alive]
                    missing = self.size - len(self._ready)
                if missing <= 0:
                    break
                try:
                    zygote = self.factory.start()
                except SandboxFailure as exc:
                    log.error("could not warm a session sandbox", reason=str(exc))
                    time.sleep(5)
                    continue
                with self._lock:
                    self._ready.append(zygote)

    def take(self) -> tuple[ZygoteSandbox, bool]:
        """A started zygote and whether it was already warm (else started now, cold)."""
        with self._lock:
            while self._ready:
                zygote = self._ready.pop(0)
                if zygote.alive:
                    self._wanted.set()
                    return zygote, True
        self._wanted.set()
        return self.factory.start(), False

    def ready_count(self) -> int:
        with self._lock:
            return len(self._ready)

    def close(self) -> None:
        self._stopped = True
        self._wanted.set()
        with self._lock:
            ready, self._ready = self._ready, []
        for zygote in ready:
            zygote.kill()
