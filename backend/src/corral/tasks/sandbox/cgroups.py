"""Per-run cgroups for the bwrap sandbox: memory, process and CPU limits for the whole tree.

rlimits bound each process; a cgroup bounds the sandbox as a whole (a fork bomb of memory hogs,
threads, a double-forked daemon). Whichever the host delegates to the worker's user is used:

- **v2**: a cgroup2 directory the worker may write (systemd ``Delegate=yes``, a container's own
  cgroup namespace) with ``memory`` and ``pids`` available. Empty ``parent`` means the worker's
  own cgroup, whose processes are first moved into a ``worker`` leaf (cgroup v2 lets only a
  cgroup without processes hand controllers down).
- **v1**: the ``memory`` and ``pids`` (and ``cpu``, when there) hierarchies each hold a
  directory ``parent`` (default ``corral`` under the worker's own cgroup; ``/corral`` is from
  the root) owned by the worker's user, made by root (``backend/scripts/sandbox_host_setup.sh``).

``parent`` is absolute from the hierarchy's root when it starts with ``/``, else relative to
the worker's own cgroup in that hierarchy.

Each run gets ``run-<random>`` under it with ``memory`` = the run's ``memory_mb`` (tmpfs files
count), ``pids`` = ``max_processes`` plus bwrap's own, CPU = ``cpus`` cores; the sandbox's first
process joins it before exec, so everything it starts is inside; after the run anything left is
killed and the directory removed. With neither, rlimits alone stay (they are always set).
"""

from __future__ import annotations

import contextlib
import functools
import os
import secrets
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from corral.tasks.sandbox.settings import CgroupSettings, SandboxLimits

MB = 1 << 20
Mode = Literal["v2", "v1", "none"]
V1_CONTROLLERS = ("memory", "pids", "cpu", "cpuacct")  # cpuacct: the run's CPU, for budgets
REQUIRED = ("memory", "pids")
BWRAP_OWN_PROCESSES = 3  # bwrap, its pid-1 init in the sandbox, and slack for its helper


Mount = tuple[str, str, str, str]  # mount point, root in the hierarchy, fs type, options


class CgroupUnavailable(RuntimeError):
    """The configured cgroup mode cannot be used here; says what to fix."""


@dataclass(frozen=True)
class CgroupHost:
    """What the host delegates: the mode, the parent directories, the controllers limited."""

    mode: Mode
    parents: dict[str, Path] = field(default_factory=dict)  # v2: {"": dir}; v1: per controller
    controllers: tuple[str, ...] = ()
    reason: str = ""

    def describe(self) -> dict[str, object]:
        return {"mode": self.mode, "controllers": list(self.controllers), "reason": self.reason}


def _mounts(mountinfo: Path) -> list[Mount]:
    """(mount point, root inside the hierarchy, fs type, super options) of each cgroup mount."""
    found = []
    with contextlib.suppress(OSError):
        for line in mountinfo.read_text().splitlines():
            left, _, right = line.partition(" - ")
            fields, tail = left.split(), right.split()
            if len(fields) >= 5 and len(tail) >= 3 and tail[0] in ("cgroup", "cgroup2"):
                found.append((fields[4], fields[3], tail[0], tail[2]))
    return found


def _own_paths(proc_cgroup: Path) -> dict[str, str]:
    """Controller (``""`` for v2) → this process's cgroup path."""
    paths: dict[str, str] = {}
    with contextlib.suppress(OSError):
        for line in proc_cgroup.read_text().splitlines():
            _, controllers, path = line.split(":", 2)
            for name in controllers.split(",") if controllers else [""]:
                paths[name] = path
    return paths


def _resolve(mount: str, root: str, own: str, parent: str) -> Path:
    """``parent`` absolute (from the hierarchy's root) or relative to this process's cgroup
    ``own``, as a directory under ``mount`` (whose root in the hierarchy is ``root``)."""
    path = os.path.normpath(os.path.join(own, parent)) if parent else own
    if root != "/" and (path == root or path.startswith(root + "/")):
        path = path[len(root) :] or "/"
    return Path(mount) / path.lstrip("/")


def _writable(path: Path, *files: str) -> bool:
    return os.access(path, os.W_OK | os.X_OK) and all(
        os.access(path / name, os.W_OK) for name in files
    )


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


def _detect_v2(
    settings: CgroupSettings, mounts: list[Mount], own: dict[str, str]
) -> CgroupHost | str:
    v2 = [m for m in mounts if m[2] == "cgroup2"]
    if not v2:
        return "no cgroup2 mount"
    mount, root, _, _ = v2[0]
    if "" not in own and not settings.parent.startswith("/"):
        return "this process is in no cgroup2 group"
    parent = _resolve(mount, root, own.get("", "/"), settings.parent)
    available = _read(parent / "cgroup.controllers").split()
    missing = [c for c in REQUIRED if c not in available]
    if missing:
        return f"cgroup2 at {parent} offers no {'/'.join(missing)} controller"
    if not _writable(parent, "cgroup.procs", "cgroup.subtree_control"):
        return f"cgroup2 at {parent} is not delegated to uid {os.geteuid()}"
    controllers = tuple(c for c in ("memory", "pids", "cpu") if c in available)
    return CgroupHost("v2", {"": parent}, controllers)


def _detect_v1(
    settings: CgroupSettings, mounts: list[Mount], own: dict[str, str]
) -> CgroupHost | str:
    parents: dict[str, Path] = {}
    for mount, root, fstype, options in mounts:
        if fstype != "cgroup":
            continue
        for controller in V1_CONTROLLERS:
            if controller in options.split(",") and controller not in parents:
                where = settings.parent or "/corral"
                parents[controller] = _resolve(mount, root, own.get(controller, "/"), where)
    usable: dict[str, Path] = {}
    for c, p in parents.items():  # co-mounted controllers (cpu,cpuacct) share one directory
        if p not in usable.values() and _writable(p, "cgroup.procs"):
            usable[c] = p
    missing = [c for c in REQUIRED if c not in usable]
    if missing:
        where = ", ".join(str(parents.get(c, f"<no {c} hierarchy>")) for c in missing)
        return f"cgroup v1 {'/'.join(missing)} not delegated to uid {os.geteuid()} ({where})"
    return CgroupHost("v1", usable, tuple(c for c in V1_CONTROLLERS if c in usable))


def detect(
    settings: CgroupSettings,
    *,
    mountinfo: Path = Path("/proc/self/mountinfo"),
    proc_cgroup: Path = Path("/proc/self/cgroup"),
) -> CgroupHost:
    """The mode this worker can use; ``CgroupUnavailable`` when an explicit mode cannot work."""
    if settings.mode == "off":
        return CgroupHost("none", reason="switched off (TASKS_SANDBOX__CGROUP__MODE=off)")
    mounts = _mounts(mountinfo)
    own = _own_paths(proc_cgroup)
    reasons = []
    for mode in ("v2", "v1"):
        if settings.mode not in ("auto", mode):
            continue
        detector = _detect_v2 if mode == "v2" else _detect_v1
        found = detector(settings, mounts, own)
        if isinstance(found, CgroupHost):
            return found
        reasons.append(found)
    reason = "; ".join(reasons)
    if settings.mode != "auto":
        raise CgroupUnavailable(f"cgroup mode {settings.mode} unavailable: {reason}")
    return CgroupHost("none", reason=f"rlimits only: {reason}")


@functools.cache
def host(settings: CgroupSettings) -> CgroupHost:
    """``detect`` once per process (settings are frozen, so they key the cache)."""
    found = detect(settings)
    if found.mode == "v2":
        prepare_v2(found)
    return found


def prepare_v2(found: CgroupHost) -> None:
    """Enable the controllers for children of the v2 parent, first moving any processes out of
    it into a ``worker`` leaf (the worker's own, when the parent is its delegated cgroup)."""
    parent = found.parents[""]
    wanted = " ".join(f"+{c}" for c in found.controllers)
    enabled = _read(parent / "cgroup.subtree_control").split()
    if all(c in enabled for c in found.controllers):
        return
    procs = _read(parent / "cgroup.procs").split()
    if procs:
        leaf = parent / "worker"
        leaf.mkdir(exist_ok=True)
        for pid in procs:
            with contextlib.suppress(OSError):  # gone meanwhile, or not ours
                (leaf / "cgroup.procs").write_text(pid)
    try:
        (parent / "cgroup.subtree_control").write_text(wanted)
    except OSError as exc:
        raise CgroupUnavailable(f"could not enable {wanted} in {parent}: {exc}") from exc


class RunCgroup:
    """One run's cgroup(s): created with limits, joined by the sandbox, emptied and removed."""

    def __init__(self, found: CgroupHost, limits: SandboxLimits, cpus: float) -> None:
        self.found = found
        name = f"run-{os.getpid()}-{secrets.token_hex(4)}"
        self.dirs = {c: p / name for c, p in found.parents.items()}
        memory = limits.memory_mb * MB
        pids = limits.max_processes + BWRAP_OWN_PROCESSES
        period = 100_000
        quota = max(1000, int(cpus * period))
        try:
            for path in self.dirs.values():
                path.mkdir(mode=0o755)
            if found.mode == "v2":
                d = self.dirs[""]
                self._write(d / "memory.max", memory)
                self._write(d / "memory.swap.max", 0, optional=True)
                self._write(d / "memory.oom.group", 1, optional=True)
                self._write(d / "pids.max", pids)
                if "cpu" in found.controllers:
                    self._write(d / "cpu.max", f"{quota} {period}")
            else:
                mem = self.dirs["memory"]
                self._write(mem / "memory.limit_in_bytes", memory)
                self._write(mem / "memory.memsw.limit_in_bytes", memory, optional=True)
                self._write(self.dirs["pids"] / "pids.max", pids)
                if "cpu" in self.dirs:
                    self._write(self.dirs["cpu"] / "cpu.cfs_period_us", period)
                    self._write(self.dirs["cpu"] / "cpu.cfs_quota_us", quota)
        except OSError:
            self.close()
            raise
        self.procs_files = [str(p / "cgroup.procs") for p in self.dirs.values()]

    @staticmethod
    def _write(path: Path, value: object, *, optional: bool = False) -> None:
        try:
            path.write_text(str(value))
        except OSError:
            if not optional:
                raise

    def join_from_child(self) -> None:
        """In the forked child before exec (``preexec_fn``): move this process in."""
        pid = str(os.getpid()).encode()
        for name in self.procs_files:
            fd = os.open(name, os.O_WRONLY | os.O_CLOEXEC)
            try:
                os.write(fd, pid)
            finally:
                os.close(fd)

    def _memory_dir(self) -> Path | None:
        return self.dirs.get("" if self.found.mode == "v2" else "memory")

    def oom_kills(self) -> int:
        """Processes the kernel killed for the memory limit during this run."""
        d = self._memory_dir()
        if d is None:
            return 0
        text = _read(d / ("memory.events" if self.found.mode == "v2" else "memory.oom_control"))
        for line in text.splitlines():
            key, _, value = line.partition(" ")
            if key == "oom_kill" and value.strip().isdigit():
                return int(value)
        return 0

    def cpu_seconds(self) -> float | None:
        """CPU time of everything that ran in the group (None: no CPU accounting here).
        Unlike rusage it includes the sandbox's pid namespace, which bwrap does not reap."""
        if self.found.mode == "v2":
            for line in _read(self.dirs[""] / "cpu.stat").splitlines():
                key, _, value = line.partition(" ")
                if key == "usage_usec" and value.strip().isdigit():
                    return int(value) / 1e6
            return None
        for path in self.dirs.values():
            usage = _read(path / "cpuacct.usage").strip()
            if usage.isdigit():
                return int(usage) / 1e9
        return None

    def pids(self) -> list[int]:
        found: set[int] = set()
        for path in self.dirs.values():
            found.update(int(p) for p in _read(path / "cgroup.procs").split() if p.isdigit())
        return sorted(found)

    def close(self, timeout_s: float = 5.0) -> list[int]:
        """Kill whatever is still inside (a daemon that outlived the run), remove the group.
        Returns the pids that had to be killed."""
        killed: list[int] = []
        deadline = time.monotonic() + timeout_s
        kill_file = self.dirs.get("", Path("/nonexistent")) / "cgroup.kill"
        while True:
            left = self.pids()
            if not left:
                break
            killed.extend(p for p in left if p not in killed)
            if self.found.mode == "v2" and kill_file.exists():
                with contextlib.suppress(OSError):
                    kill_file.write_text("1")
            for pid in left:
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)
            if time.monotonic() > deadline:
                break
            time.sleep(0.01)
        for path in self.dirs.values():
            for _ in range(200):
                try:
                    path.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        break
                    time.sleep(0.01)
        return killed
