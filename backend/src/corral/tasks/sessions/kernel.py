"""A live session on the host side: its sandbox, its kernel, one call at a time.

``LiveSession.run`` sends the code to the kernel and collects stdout/stderr (capped), the
result frame and the output files, killing the sandbox at the wall clock. If the kernel dies
in a call (CPU limit, memory, a signal, ``os._exit``) the zygote reports it, the call says what
happened and the next call forks a new kernel in the same sandbox and restores the last
snapshot. ``snapshot``/``restore`` move the picklable globals in and out of the kernel.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from corral.tasks.sandbox import SandboxFailure, SandboxResult, UserCodeError
from corral.tasks.sandbox._common import apply_report, kill_message, note_truncation, safe_name
from corral.tasks.sandbox.bwrap import _Sink
from corral.tasks.sandbox.settings import SandboxLimits
from corral.tasks.sessions.snapshot import Snapshot
from corral.tasks.sessions.zygote import SandboxGone, ZygoteSandbox

MB = 1 << 20


@dataclass
class RunOutcome:
    result: SandboxResult
    variables: list[dict[str, Any]] = field(default_factory=list)
    kernel_lost: bool = False  # the kernel (and its state) died in this call
    sandbox_lost: bool = False  # the whole sandbox had to be killed
    cpu_s: float = 0.0  # CPU the call used (the session's cgroup, else the kernel's own count)


@dataclass
class LiveSession:
    session_id: str
    owner_id: str
    zygote: ZygoteSandbox
    memory_mb: int
    seq: int = 0
    cells: list[str] = field(default_factory=list)
    cells_bytes: int = 0
    replayable: bool = True
    snapshot_key: str | None = None
    unpicklable: list[str] = field(default_factory=list)
    last_used: float = field(default_factory=time.monotonic)
    lock: threading.Lock = field(default_factory=threading.Lock)
    inputs: set[str] = field(default_factory=set)

    @property
    def kernel_alive(self) -> bool:
        return self.zygote.alive and self.zygote.kernel_pid is not None

    def ensure_kernel(self, timeout_s: float) -> bool:
        """Fork a kernel if there is none; ``True`` if one was forked now (a fresh namespace)."""
        if self.zygote.kernel_pid is not None:
            return False
        self.zygote.fork_kernel(self.memory_mb, time.monotonic() + timeout_s)
        return True

    def record_cell(self, code: str, max_bytes: int) -> None:
        size = len(code.encode())
        if self.cells_bytes + size > max_bytes:
            self.replayable = False
            return
        self.cells.append(code)
        self.cells_bytes += size

    def input_path(self, name: str) -> Path:
        if not safe_name(name):
            raise ValueError(f"unusable input file name {name!r}")
        return self.zygote.input_dir / name

    # -- calls ----------------------------------------------------------------------------

    def run(self, code: str, limits: SandboxLimits, formats: tuple[str, ...],
            output_dir: Path) -> RunOutcome:  # fmt: skip
        started = time.monotonic()
        out = _Sink(limits.stdout_max_bytes)
        err = _Sink(limits.stdout_max_bytes)
        self.zygote.drain(lambda _b: None, lambda _b: None)  # leftovers of background threads
        result = SandboxResult(stdout="", stderr="")
        outcome = RunOutcome(result)
        cgroup = self.zygote.cgroup
        cpu_before = cgroup.cpu_seconds() if cgroup is not None else None
        self.zygote.send({
            "op": "run", "code": code, "cpu_s": limits.cpu_s, "formats": list(formats),
            "max_files": limits.max_output_files, "max_file_bytes": limits.max_file_mb * MB,
        })  # fmt: skip
        frame: tuple[dict[str, Any], bytearray] | None
        try:
            frame = self.zygote.receive(started + limits.wall_s, out.feed, err.feed)
        except SandboxGone:
            frame = None
            outcome.sandbox_lost = True
            result.killed = "signal"
        if frame is None and not outcome.sandbox_lost:
            result.killed = "wall_time"
            outcome.sandbox_lost = True
        cpu_after = cgroup.cpu_seconds() if cgroup is not None else None  # before any kill
        if outcome.sandbox_lost:
            self.zygote.drain(out.feed, err.feed)
            self.zygote.kill()
            self.zygote.kernel_pid = None
            outcome.kernel_lost = True
        else:
            assert frame is not None
            header, payload = frame
            self.zygote.drain(out.feed, err.feed)
            if header.get("op") == "exited":
                self.zygote.kernel_pid = None
                outcome.kernel_lost = True
                result.killed = _exit_reason(int(header.get("status") or 0))
                if result.killed is None:
                    result.error = UserCodeError(
                        type="SandboxExit",
                        message="the session's process ended (e.g. os._exit) during the call",
                    )
            elif header.get("op") == "ran":
                apply_report(result, header, limits, 0)
                _write_files(header, payload, output_dir, limits, result)
                variables = header.get("variables")
                outcome.variables = variables if isinstance(variables, list) else []
            else:
                raise SandboxFailure(f"unexpected answer from the session: {header.get('op')!r}")
        outcome.cpu_s = _call_cpu(cpu_before, cpu_after, frame, result, limits)
        result.stdout, result.stderr = out.text(), err.text()
        result.stdout_truncated, result.stderr_truncated = out.overflow, err.overflow
        if result.killed is not None:
            err_type, message = kill_message(result.killed, limits)
            result.error = UserCodeError(type=err_type, message=message)
        note_truncation(result, limits)
        result.duration_s = time.monotonic() - started
        self.last_used = time.monotonic()
        return outcome

    def _answer(self, frame: tuple[dict[str, Any], bytearray] | None, want: str,
                what: str) -> tuple[dict[str, Any], bytearray]:  # fmt: skip
        """The kernel's answer, or an explicit error saying how the kernel ended."""
        if frame is None:
            raise SandboxFailure(f"the session did not answer the {what} request in time")
        header = frame[0]
        if header.get("op") == want:
            return frame
        if header.get("op") in ("exited", "nokernel"):
            self.zygote.kernel_pid = None
            status = int(header.get("status") or 0)
            raise KernelLost(f"the session's process ended during the {what} ({_ended(status)})")
        raise SandboxFailure(f"unexpected answer to the {what} request: {header.get('op')!r}")

    def take_snapshot(self, timeout_s: float) -> tuple[dict[str, Any], bytearray]:
        with self.zygote.wide_pipes():
            self.zygote.send({"op": "snapshot"})
            frame = self.zygote.receive(time.monotonic() + timeout_s)
        return self._answer(frame, "snapshot", "snapshot")

    def restore(self, snapshot: Snapshot, timeout_s: float) -> dict[str, Any]:
        with self.zygote.wide_pipes():
            self.zygote.send({"op": "restore", "cells": snapshot.cells}, snapshot.blob)
            frame = self.zygote.receive(time.monotonic() + timeout_s, lambda _b: None)
        header, _ = self._answer(frame, "restored", "restore")
        self.seq = snapshot.seq
        self.cells = list(snapshot.cells)
        self.cells_bytes = sum(len(c.encode()) for c in self.cells)
        self.unpicklable = list(snapshot.unpicklable)
        return header

    def kill_kernel(self, timeout_s: float = 30.0) -> bool:
        """Stop the kernel (the zygote stays): the next call forks a fresh namespace.

        Waits for the zygote's report that it ended, so no stale frame is left for the next
        fork. ``False`` if that did not come: the whole sandbox is killed instead."""
        pid = self.zygote.kernel_pid
        if pid is None or not self.zygote.alive:
            return self.zygote.alive
        deadline = time.monotonic() + timeout_s
        try:
            self.zygote.send({"op": "exit"})
            while True:
                frame = self.zygote.receive(deadline)
                if frame is None:
                    break
                if frame[0].get("op") == "exited":
                    self.zygote.kernel_pid = None
                    return True
        except SandboxGone:
            pass
        self.zygote.kill()
        self.zygote.kernel_pid = None
        return False

    def close(self) -> None:
        self.zygote.kill()


class KernelLost(SandboxFailure):
    """The kernel died outside a call (snapshot, restore); the sandbox and zygote remain."""


def _call_cpu(before: float | None, after: float | None,
              frame: tuple[dict[str, Any], bytearray] | None, result: SandboxResult,
              limits: SandboxLimits) -> float:  # fmt: skip
    """CPU seconds of one call, for the budget ledger: the session cgroup's count when the host
    delegates one (the user's code cannot touch it), else the kernel's own rusage."""
    if before is not None and after is not None:
        return max(0.0, after - before)
    reported = frame[0].get("cpu_s") if frame is not None else None
    if isinstance(reported, (int, float)) and not isinstance(reported, bool):
        return max(0.0, float(reported))
    return float(limits.cpu_s) if result.killed == "cpu_time" else 0.0


def _ended(status: int) -> str:
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        if sig == signal.SIGXCPU:
            return "CPU time limit"
        return f"signal {signal.Signals(sig).name}" if sig in signal.valid_signals() else "signal"
    if os.WIFEXITED(status) and os.WEXITSTATUS(status):
        return f"exit status {os.WEXITSTATUS(status)}"
    return "likely out of memory"


def _exit_reason(status: int) -> Any:
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        return "cpu_time" if sig == signal.SIGXCPU else "signal"
    return None


def _write_files(header: dict[str, Any], payload: bytearray, output_dir: Path,
                 limits: SandboxLimits, result: SandboxResult) -> None:  # fmt: skip
    """The files the kernel sent, written with caps, O_EXCL and O_NOFOLLOW (names untrusted)."""
    files = header.get("files")
    if not isinstance(files, list) or not files:
        return
    # Private (0700) and new: the pool child named it, and it is made only for calls with files.
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    output_dir.mkdir(mode=0o700)
    offset, budget = 0, limits.output_max_mb * MB
    for item in files[: limits.max_output_files]:
        name, size = (
            (item.get("name"), item.get("size")) if isinstance(item, dict) else (None, None)
        )
        if not isinstance(name, str) or not isinstance(size, int) or size < 0:
            break
        data = payload[offset : offset + size]
        offset += size
        if not safe_name(name) or size > limits.max_file_mb * MB or size > budget:
            result.notes.append(f"skipped {name[:100]!r}: unusable name or over the size limits")
            continue
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        try:
            with os.fdopen(os.open(output_dir / name, flags, 0o600), "wb") as dst:
                dst.write(data)
        except OSError as exc:
            result.notes.append(f"skipped {name}: {exc.strerror}")
            continue
        budget -= size
        result.output_files.append(output_dir / name)
