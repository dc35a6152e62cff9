"""The ``bwrap`` backend: bubblewrap around a dedicated venv, with rlimits and a wall clock.

The sandbox gets new user/pid/net/ipc/uts/cgroup namespaces (``--unshare-all``: the network has
only a loopback of its own), no capabilities, an empty environment, a read-only ``/usr`` and
venv, size-limited tmpfs for ``/tmp`` and ``/output``, and a read-only root. It dies with the
worker's child process (``--die-with-parent``). Output files leave through a pipe as a tar
stream that the host unpacks with caps, so the sandbox never writes to the host's disk.
A seccomp filter (``seccomp.py``, loaded by bwrap's ``--seccomp``) denies the syscalls that
widen the kernel's attack surface; the self-test proves it is loaded.

Needs unprivileged user namespaces and refuses to run as root: a bug in the sandbox setup would
then hand out root's powers.
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import selectors
import shutil
import signal
import subprocess
import tarfile
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from corral.tasks import run_clock
from corral.tasks.sandbox import (
    KillReason,
    OnStart,
    SandboxFailure,
    SandboxResult,
    SandboxUnavailable,
    UserCodeError,
    cgroups,
    seccomp,
)
from corral.tasks.sandbox._common import (
    GUEST_MPL_DIR,
    GUEST_TMP,
    MB,
    apply_report,
    collect_outputs,
    kill_message,
    new_run_dir,
    note_truncation,
    run_self_test,
    safe_name,
)
from corral.tasks.sandbox.settings import SandboxLimits, SandboxSettings

GUEST_DIR = Path(__file__).resolve().parent / "guest"
MPL_CACHE = "mpl-cache"  # inside the venv, built by ``prepare``


@dataclass
class _Sink:
    """Keeps the first ``cap`` bytes of a stream and counts the rest."""

    cap: int
    spool: IO[bytes] | None = None
    chunks: list[bytes] = field(default_factory=list)
    kept: int = 0
    seen: int = 0

    def feed(self, data: bytes) -> None:
        self.seen += len(data)
        room = self.cap - self.kept
        if room > 0:
            part = data[:room]
            if self.spool is not None:
                self.spool.write(part)
            else:
                self.chunks.append(part)
            self.kept += len(part)

    @property
    def overflow(self) -> bool:
        return self.seen > self.cap

    def text(self) -> str:
        return b"".join(self.chunks).decode("utf-8", errors="replace")


def _venv_python(venv: Path) -> Path:
    return venv / "bin" / "python"


def _base_prefix(venv: Path) -> Path | None:
    """The interpreter's prefix named by ``pyvenv.cfg`` (bound read-only if outside /usr)."""
    cfg = venv / "pyvenv.cfg"
    try:
        for line in cfg.read_text().splitlines():
            key, _, value = line.partition("=")
            if key.strip() == "home":
                return Path(value.strip()).parent
    except OSError:
        return None
    return None


def _rlimits(limits: SandboxLimits) -> list[tuple[int, tuple[int, int]]]:
    mem = limits.memory_mb * MB
    fsize = limits.max_file_mb * MB
    return [
        (resource.RLIMIT_CPU, (limits.cpu_s, limits.cpu_s + 1)),
        (resource.RLIMIT_AS, (mem, mem)),
        (resource.RLIMIT_NPROC, (limits.max_processes, limits.max_processes)),
        (resource.RLIMIT_NOFILE, (limits.max_open_files, limits.max_open_files)),
        (resource.RLIMIT_FSIZE, (fsize, fsize)),
        (resource.RLIMIT_CORE, (0, 0)),
    ]


class BwrapSandbox:
    name = "bwrap"

    def __init__(self, settings: SandboxSettings, *, seccomp: bool = True) -> None:
        self.settings = settings
        self.venv = settings.venv_path.resolve()
        # ``seccomp=False`` exists only for bench/python_tool.py's on/off comparison: the
        # self-test fails without the filter, so a worker never serves python_q without it.
        self.seccomp = seccomp

    def _work_dir(self) -> str | None:
        work_dir = self.settings.work_dir
        return str(work_dir) if work_dir is not None else None

    # -- checks ----------------------------------------------------------------------------

    def check_host(self) -> str:
        """The bwrap binary's path, or ``SandboxUnavailable`` saying what is missing."""
        if os.geteuid() == 0:
            raise SandboxUnavailable(
                "refusing to run the bwrap sandbox as root; run the python_q worker as an "
                "unprivileged user (e.g. `setpriv --reuid=corral --regid=corral --init-groups`)"
            )
        binary = shutil.which(self.settings.bwrap_path)
        if binary is None:
            raise SandboxUnavailable(
                f"{self.settings.bwrap_path!r} not found; install the Debian package bubblewrap"
            )
        if not os.access(_venv_python(self.venv), os.X_OK):
            raise SandboxUnavailable(
                f"no sandbox venv at {self.venv}; create it with "
                "`python -m corral.tasks.sandbox.prepare venv`"
            )
        return binary

    def cgroup_host(self) -> cgroups.CgroupHost:
        """What this host delegates (detected once per process); ``SandboxUnavailable`` when an
        explicitly configured cgroup mode cannot be used."""
        try:
            return cgroups.host(self.settings.cgroup)
        except cgroups.CgroupUnavailable as exc:
            raise SandboxUnavailable(str(exc)) from exc

    def capabilities(self) -> dict[str, object]:
        """Reported by the self-test, readiness and ``/api/tools``: the layers in force."""
        return {"seccomp": self.seccomp, "cgroups": self.cgroup_host().describe()}

    def self_test(self) -> None:
        self.check_host()
        self.cgroup_host()
        if not self.seccomp:
            raise SandboxUnavailable("the bwrap sandbox was built without its seccomp filter")
        try:
            seccomp.bpf_program()
        except seccomp.SeccompUnavailable as exc:
            raise SandboxUnavailable(str(exc)) from exc
        limits = self.settings.limits.model_copy(update={"wall_s": 60.0})
        run_self_test(self, "bwrap", limits, self.settings.work_dir, probe=seccomp.PROBE_CODE)

    # -- running ---------------------------------------------------------------------------

    def sandbox_argv(
        self,
        binary: str,
        input_dir: Path,
        limits: SandboxLimits,
        binds: tuple[tuple[Path, str], ...] = (),
        seccomp_fd: int | None = None,
    ) -> list[str]:
        """bwrap's options up to the command: namespaces, read-only binds (``binds`` adds more,
        host path to guest path), tmpfs, environment. Shared by one-shot runs and sessions.
        ``seccomp_fd`` (from ``seccomp.filter_fd()``, passed to bwrap) loads the filter just
        before the command runs, after the namespaces are made."""
        argv = [
            binary,
            "--unshare-all",
            "--die-with-parent",
            "--new-session",
            "--cap-drop", "ALL",
            "--clearenv",
            "--hostname", "sandbox",
            "--ro-bind", "/usr", "/usr",
            "--symlink", "usr/lib", "/lib",
            "--symlink", "usr/lib64", "/lib64",
            "--symlink", "usr/bin", "/bin",
        ]  # fmt: skip
        prefix = _base_prefix(self.venv)
        if prefix is not None and not prefix.is_relative_to("/usr"):
            argv += ["--ro-bind", str(prefix), str(prefix)]
        argv += [
            "--ro-bind", str(self.venv), "/venv",
            "--ro-bind", str(GUEST_DIR), "/sandbox",
        ]  # fmt: skip
        for host, guest in binds:
            argv += ["--ro-bind", str(host), guest]
        argv += [
            "--ro-bind", str(input_dir), "/input",
            "--proc", "/proc",
            "--dev", "/dev",
            "--size", str(limits.tmpfs_mb * MB), "--tmpfs", GUEST_TMP,
            "--size", str(limits.output_max_mb * MB), "--tmpfs", "/output",
            "--remount-ro", "/",
            "--setenv", "PATH", "/venv/bin:/usr/bin:/bin",
            "--setenv", "HOME", GUEST_TMP,
            "--setenv", "TMPDIR", GUEST_TMP,
            "--setenv", "LANG", "C.UTF-8",
            "--setenv", "MPLBACKEND", "Agg",
            "--setenv", "MPLCONFIGDIR", GUEST_MPL_DIR,
            "--setenv", "OPENBLAS_NUM_THREADS", "1",
            "--setenv", "OMP_NUM_THREADS", "1",
            "--setenv", "MKL_NUM_THREADS", "1",
            "--setenv", "MALLOC_ARENA_MAX", "2",
            "--setenv", "PYTHONDONTWRITEBYTECODE", "1",
            "--chdir", "/output",
        ]  # fmt: skip
        if seccomp_fd is not None:
            argv += ["--seccomp", str(seccomp_fd)]
        return argv

    def _argv(
        self,
        binary: str,
        code_file: Path,
        input_dir: Path,
        limits: SandboxLimits,
        result_fd: int,
        formats: tuple[str, ...],
        seccomp_fd: int | None,
    ) -> list[str]:
        argv = self.sandbox_argv(
            binary, input_dir, limits, ((code_file, "/code.py"),), seccomp_fd=seccomp_fd
        )
        argv += [
            "/venv/bin/python", "-I", "/sandbox/runner.py",
            json.dumps({
                "mode": "bwrap", "code": "/code.py", "output": "/output",
                "result_fd": result_fd, "formats": list(formats),
                "mpl_cache": f"/venv/{MPL_CACHE}", "max_files": limits.max_output_files,
                "max_file_bytes": limits.max_file_mb * MB,
                "max_processes": limits.max_processes,
            }),
        ]  # fmt: skip
        return argv

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
        binary = self.check_host()
        started = time.monotonic()
        cgroup = self.new_run_cgroup(limits)
        run_dir = new_run_dir(self.settings.work_dir)
        try:
            code_file = run_dir / "main.py"
            code_file.write_text(code, encoding="utf-8")
            code_file.chmod(0o644)
            run_dir.chmod(0o711)
            return self._run(
                binary,
                code_file,
                input_dir,
                output_dir,
                limits,
                on_start,
                figure_formats,
                started,
                cgroup,
            )
        finally:
            shutil.rmtree(run_dir, ignore_errors=True)
            if cgroup is not None:
                cgroup.close()

    def new_run_cgroup(self, limits: SandboxLimits) -> cgroups.RunCgroup | None:
        """A cgroup with this run's limits, or ``None`` when the host delegates none."""
        found = self.cgroup_host()
        if found.mode == "none":
            return None
        try:
            return cgroups.RunCgroup(found, limits, self.settings.cgroup.cpus)
        except OSError as exc:
            raise SandboxFailure(f"could not create the run's cgroup: {exc}") from exc

    @staticmethod
    def child_setup(limits: SandboxLimits, cgroup: cgroups.RunCgroup | None) -> Callable[[], None]:
        """``preexec_fn`` for bwrap: join the run's cgroup, set the rlimits (the floor).

        RLIMIT_NPROC is left to the runner, which sets it inside the sandbox's user namespace:
        there it counts only the sandbox's processes, while set on bwrap it counts every
        process of the worker's user (other runs, the worker itself) and fails at random."""
        rlimits = [r for r in _rlimits(limits) if r[0] != resource.RLIMIT_NPROC]

        def _preexec() -> None:
            if cgroup is not None:
                cgroup.join_from_child()
            for which, value in rlimits:
                resource.setrlimit(which, value)

        return _preexec

    def _run(
        self,
        binary: str,
        code_file: Path,
        input_dir: Path,
        output_dir: Path,
        limits: SandboxLimits,
        on_start: OnStart | None,
        formats: tuple[str, ...],
        started: float,
        cgroup: cgroups.RunCgroup | None,
    ) -> SandboxResult:
        try:
            filter_fd = seccomp.filter_fd() if self.seccomp else None
        except seccomp.SeccompUnavailable as exc:
            raise SandboxFailure(str(exc)) from exc
        read_fd, write_fd = os.pipe()
        passed = (write_fd,) if filter_fd is None else (write_fd, filter_fd)
        children_cpu = run_clock.children_cpu()

        try:
            proc = subprocess.Popen(
                self._argv(binary, code_file, input_dir, limits, write_fd, formats, filter_fd),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                pass_fds=passed,
                env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"},
                preexec_fn=self.child_setup(limits, cgroup),  # in the child, before exec
                start_new_session=True,
            )
        except OSError as exc:
            os.close(read_fd)
            raise SandboxFailure(f"could not start bwrap: {exc}") from exc
        finally:
            for fd in passed:
                os.close(fd)
        if on_start is not None:
            on_start(proc.pid)
        with tempfile.SpooledTemporaryFile(max_size=4 * MB, dir=self._work_dir()) as spool:
            out = _Sink(limits.stdout_max_bytes)
            err = _Sink(limits.stdout_max_bytes)
            channel = _Sink(limits.output_max_mb * MB + MB, spool=spool)
            try:
                killed = self._pump(proc, read_fd, out, err, channel, limits, started)
            except BaseException:  # e.g. Celery's soft time limit: never leave it running
                self._kill(proc)
                proc.wait()
                raise
            returncode = proc.wait()
            children_cpu = run_clock.children_cpu() - children_cpu  # bwrap's own, reaped
            result = SandboxResult(
                stdout=out.text(),
                stderr=err.text(),
                stdout_truncated=out.overflow,
                stderr_truncated=err.overflow,
                killed=killed,
            )
            spool.seek(0)
            report = self._unpack(spool, output_dir, limits, result)
        result.duration_s = time.monotonic() - started
        if cgroup is not None:
            self._note_cgroup(result, report, cgroup, limits, children_cpu)
        self._finish(result, output_dir, report, returncode, limits)
        note_truncation(result, limits)
        return result

    def _pump(
        self,
        proc: subprocess.Popen[bytes],
        result_fd: int,
        out: _Sink,
        err: _Sink,
        channel: _Sink,
        limits: SandboxLimits,
        started: float,
    ) -> KillReason | None:
        """Read all three pipes until they close, killing the sandbox at the wall clock."""
        assert proc.stdout is not None and proc.stderr is not None
        sinks = {proc.stdout.fileno(): out, proc.stderr.fileno(): err, result_fd: channel}
        deadline = started + limits.wall_s
        killed: KillReason | None = None
        with selectors.DefaultSelector() as sel:
            for fd in sinks:
                os.set_blocking(fd, False)
                sel.register(fd, selectors.EVENT_READ)
            while sel.get_map():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    killed = "wall_time"
                    break
                for key, _ in sel.select(timeout=min(remaining, 1.0)):
                    fd = int(key.fd)
                    try:
                        data = os.read(fd, 1 << 16)
                    except BlockingIOError:
                        continue
                    if not data:
                        sel.unregister(fd)
                        continue
                    sinks[fd].feed(data)
                if channel.overflow:
                    killed = "output"
                    break
        if killed is not None:
            self._kill(proc)
        os.close(result_fd)
        return killed

    @staticmethod
    def _kill(proc: subprocess.Popen[bytes]) -> None:
        """SIGKILL bwrap's whole session; its pid-1 child takes the sandbox down with it."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError):
            proc.kill()

    def _unpack(
        self, spool: IO[bytes], output_dir: Path, limits: SandboxLimits, result: SandboxResult
    ) -> dict[str, object] | None:
        """Read the runner's channel: a JSON line (its report), then maybe a tar of its files,
        written here with caps, O_EXCL and O_NOFOLLOW. Untrusted: the user's code can write
        to the pipe too, which can only spoil its own result."""
        report: dict[str, object] | None = None
        header = spool.readline(4 * MB)
        if header.endswith(b"\n"):
            with contextlib.suppress(ValueError):
                loaded = json.loads(header)
                report = loaded if isinstance(loaded, dict) else None
        if report is None or not spool.read(1):
            return report
        spool.seek(len(header))
        budget = limits.output_max_mb * MB
        count = 0
        try:
            with tarfile.open(fileobj=spool, mode="r|") as tar:
                for member in tar:
                    name = member.name.removeprefix("output/")
                    if (
                        not member.isreg()
                        or not member.name.startswith("output/")
                        or not safe_name(name)
                        or member.size > min(budget, limits.max_file_mb * MB)
                        or count >= limits.max_output_files
                    ):
                        continue
                    handle = tar.extractfile(member)
                    if handle is None:
                        continue
                    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
                    with os.fdopen(os.open(output_dir / name, flags, 0o600), "wb") as dst:
                        shutil.copyfileobj(handle, dst, 1 << 20)
                    budget -= member.size
                    count += 1
        except (tarfile.TarError, ValueError, OSError) as exc:
            result.notes.append(f"output files unreadable: {exc}")
        return report

    @staticmethod
    def _note_cgroup(
        result: SandboxResult,
        report: dict[str, object] | None,
        cgroup: cgroups.RunCgroup,
        limits: SandboxLimits,
        counted_cpu: float = 0.0,
    ) -> None:
        """Empty the run's cgroup (a process that outlived the sandbox dies now), charge its CPU
        to the task's budget ledger and report the kernel's OOM kills inside it: the run's
        memory limit was hit. ``counted_cpu``: what rusage already counts (bwrap itself)."""
        oom_kills = cgroup.oom_kills()
        cpu = cgroup.cpu_seconds()  # the sandbox has exited; its group is about to go
        cgroup.close()  # also whatever is still dying with the sandbox's pid namespace
        if cpu is not None:
            run_clock.charge(max(0.0, cpu - counted_cpu))
        if not oom_kills:
            return
        if report is None and result.killed is None:
            result.killed = "memory"
        else:
            result.notes.append(
                f"a process was killed for using more than the sandbox's {limits.memory_mb} MB"
            )

    def _finish(
        self,
        result: SandboxResult,
        output_dir: Path,
        report: dict[str, object] | None,
        returncode: int,
        limits: SandboxLimits,
    ) -> None:
        collected = collect_outputs(output_dir, limits)
        result.output_files = collected.files
        result.notes.extend(collected.notes)
        if result.killed is None and report is None:
            sig = -returncode if returncode < 0 else returncode - 128
            if sig == signal.SIGXCPU:
                result.killed = "cpu_time"
            elif sig in (signal.SIGKILL, signal.SIGSEGV, signal.SIGABRT, signal.SIGBUS):
                result.killed = "signal"
            elif result.stderr.startswith("bwrap:"):
                raise SandboxFailure(result.stderr.strip()[:2000])
        if result.killed is not None:
            err_type, message = kill_message(result.killed, limits)
            result.error = UserCodeError(type=err_type, message=message)
        else:
            apply_report(result, report, limits, returncode)
