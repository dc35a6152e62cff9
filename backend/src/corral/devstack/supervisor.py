"""Keeping the embedded stack's children running.

Each child runs in a process group of its own (Ctrl-C at the terminal reaches only the
supervisor, which then stops the children in order) with ``PR_SET_PDEATHSIG`` set before exec:
if the supervisor dies, even by SIGKILL, the kernel kills every child. A child that exits while
the stack runs is restarted after a backoff (1 s, doubling up to ``max_backoff_s``; reset once
it has stayed up ``stable_s``) and the console says so.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from corral.devstack import console

PR_SET_PDEATHSIG = 1


def die_with_parent(sig: int = signal.SIGKILL) -> Callable[[], None]:
    """A ``preexec_fn``: the child gets ``sig`` when the supervisor dies."""

    parent = os.getpid()

    def preexec() -> None:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        if libc.prctl(PR_SET_PDEATHSIG, sig) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
        if os.getppid() != parent:  # the supervisor died before prctl took effect
            os.kill(os.getpid(), sig)

    return preexec


def describe_exit(code: int) -> str:
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"was killed by {signal.Signals(-code).name}"
        return f"was killed by signal {-code}"
    return f"exited with code {code}"


@dataclass
class Child:
    name: str
    cmd: list[str]
    env: dict[str, str]
    log_path: Path
    cwd: Path
    # Signal the kernel sends this child if the supervisor dies: SIGKILL, except Redis, which
    # gets SIGTERM so it flushes its append-only file.
    death_signal: int = signal.SIGKILL
    # Stopped after every other child has exited: what the others need to shut down cleanly
    # (Redis: workers finish their tasks and their session hosts drop their leases through it).
    stops_last: bool = False
    proc: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    restarts: int = 0
    failures: int = 0  # consecutive quick exits, for the backoff
    restart_at: float | None = None

    def start(self) -> None:
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                self.cmd,
                env=self.env,
                cwd=self.cwd,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=die_with_parent(self.death_signal),
            )
        self.started_at = time.monotonic()

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None


@dataclass
class Supervisor:
    log_dir: Path
    cwd: Path
    max_backoff_s: float = 30.0
    stable_s: float = 30.0
    stop_timeout_s: float = 15.0
    children: list[Child] = field(default_factory=list)
    stopping: bool = False

    def spawn(
        self,
        name: str,
        cmd: list[str],
        env: dict[str, str],
        log_name: str,
        *,
        death_signal: int = signal.SIGKILL,
        stops_last: bool = False,
    ) -> Child:
        child = Child(
            name,
            cmd,
            env,
            self.log_dir / f"{log_name}.log",
            self.cwd,
            death_signal=death_signal,
            stops_last=stops_last,
        )
        child.start()
        self.children.append(child)
        return child

    def backoff_s(self, child: Child) -> float:
        return float(min(self.max_backoff_s, 2 ** max(0, child.failures - 1)))

    def tick(self) -> None:
        """Notice exited children and restart those whose backoff is over."""
        now = time.monotonic()
        for child in self.children:
            proc = child.proc
            if self.stopping or proc is None:
                continue
            if child.restart_at is None:
                code = proc.poll()
                if code is None:
                    continue
                ran = now - child.started_at
                child.failures = 1 if ran >= self.stable_s else child.failures + 1
                delay = self.backoff_s(child)
                child.restart_at = now + delay
                console.event(
                    f"{child.name} {describe_exit(code)} after {ran:.0f}s; "
                    f"restarting in {delay:g}s (logs: {child.log_path})"
                )
            elif now >= child.restart_at:
                child.restart_at = None
                child.restarts += 1
                try:
                    child.start()
                except OSError as exc:
                    child.failures += 1
                    child.restart_at = now + self.backoff_s(child)
                    console.event(f"{child.name} could not be restarted: {exc}")
                    continue
                console.event(f"{child.name} restarted (pid {child.pid}, restart {child.restarts})")

    def stop(self) -> None:
        """SIGTERM every child's process group, then SIGKILL what remains after
        ``stop_timeout_s``; the children marked ``stops_last`` only once the others are gone."""
        self.stopping = True
        first = [c for c in reversed(self.children) if not c.stops_last]
        self._stop_all(first)
        self._stop_all([c for c in reversed(self.children) if c.stops_last])
        for child in self.children:  # stragglers left in a group whose leader already exited
            if child.proc is not None:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(child.proc.pid, signal.SIGKILL)

    def _stop_all(self, children: list[Child]) -> None:
        running = [c for c in children if c.proc and c.proc.poll() is None]
        for child in running:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(child.proc.pid, signal.SIGTERM)  # type: ignore[union-attr]
        deadline = time.monotonic() + self.stop_timeout_s
        for child in running:
            assert child.proc is not None
            try:
                child.proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                console.event(f"{child.name} did not stop within {self.stop_timeout_s:g} s; killed")
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(child.proc.pid, signal.SIGKILL)
                child.proc.wait(5)
