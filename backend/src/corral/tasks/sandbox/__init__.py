"""The sandbox interface: run untrusted Python with hard limits and return what it left behind.

Two backends implement ``Sandbox``: ``bwrap`` (bubblewrap around a dedicated venv) and ``wasm``
(a WASI CPython run by wasmtime). ``get_sandbox(settings)`` picks one (``auto``: bwrap when its
self-test passes, else wasm). There is no unsandboxed mode: if no backend works, the worker
refuses python_q tasks.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol, runtime_checkable

from corral.tasks.sandbox.settings import SandboxLimits, SandboxSettings

KillReason = Literal["wall_time", "cpu_time", "memory", "output", "signal"]


class SandboxUnavailable(RuntimeError):
    """The backend cannot run code here (missing binary, no user namespaces, running as root)."""


class SandboxFailure(RuntimeError):
    """The sandbox itself broke during a run (not the user's code): an infrastructure error."""


@dataclass(frozen=True)
class UserCodeError:
    """An exception raised by the user's code: a normal result, not a task failure."""

    type: str
    message: str
    line: int | None = None


@dataclass
class SandboxResult:
    stdout: str
    stderr: str
    stdout_truncated: bool = False
    stderr_truncated: bool = False
    last_expr_repr: str | None = None
    error: UserCodeError | None = None
    killed: KillReason | None = None
    duration_s: float = 0.0
    output_files: list[Path] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


OnStart = Callable[[int], None]
"""Called with the pid of the sandboxed process tree's root once it started."""


@runtime_checkable
class Sandbox(Protocol):
    name: str

    def self_test(self) -> None:
        """Run a tiny program end to end; raise ``SandboxUnavailable`` with the reason."""

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
        """Run ``code``: ``input_dir`` read-only at /input; files it leaves go to ``output_dir``."""
        ...


def get_sandbox(settings: SandboxSettings) -> Sandbox:
    """Build the configured backend; ``auto`` self-tests bwrap and falls back to wasm."""
    from corral.tasks.sandbox.selection import select_backend

    return select_backend(settings)


__all__ = [
    "KillReason",
    "OnStart",
    "Sandbox",
    "SandboxFailure",
    "SandboxLimits",
    "SandboxResult",
    "SandboxSettings",
    "SandboxUnavailable",
    "UserCodeError",
    "get_sandbox",
]
