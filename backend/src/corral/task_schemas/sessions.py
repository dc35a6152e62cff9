"""Research sessions on python_q: ``session.run`` and ``session.close``.

A session is a sandboxed interpreter that keeps its globals. It lives on one python_q worker
(its *holder*); calls for it go to the holder's own queue (``session_queue(worker)``), which
only that worker consumes. After each call the worker snapshots the picklable globals to the
object store, so any python_q worker can restore the session from ``snapshot_key`` when the
holder is gone (its heartbeat lease in Redis expired) or evicted it.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator

from corral.task_schemas.python import (
    FigureFormat,
    FigureRef,
    PythonError,
    PythonInputFile,
    PythonLimitOverrides,
)
from corral.task_schemas.registry import Queue, TaskSpec, register

SESSION_ID_PATTERN = r"^[A-Za-z0-9-]{8,64}$"
SESSION_SNAPSHOT_KIND = "session-snapshots"
"""Object kind of snapshots: ``{owner}/session-snapshots/{session_id}-{seq}``."""


def session_queue(worker: str) -> str:
    """The queue only ``worker`` consumes: calls of the sessions it holds."""
    return f"{Queue.PYTHON.value}.{worker}"


def worker_lease_key(worker: str) -> str:
    """Set (with a TTL) by a python_q worker's session host while it is alive."""
    return f"corral:sessions:worker:{worker}"


def live_sessions_key(worker: str) -> str:
    """A Redis set of the session ids a worker holds in memory; expires with its lease."""
    return f"corral:sessions:worker:{worker}:live"


def snapshot_key(owner_id: str, session_id: str, seq: int) -> str:
    return f"{owner_id}/{SESSION_SNAPSHOT_KIND}/{session_id}-{seq}"


def snapshot_seq(key: str | None) -> int:
    """The call a snapshot was taken after (``snapshot_key``'s ``seq``); 0 for no snapshot."""
    tail = (key or "").rpartition("-")[2]
    return int(tail) if tail.isdigit() else 0


class SessionRunInput(BaseModel):
    model_config = ConfigDict(extra="forbid")

    session_id: str = Field(pattern=SESSION_ID_PATTERN)
    seq: int = Field(ge=1, description="Call number; strictly increasing per session.")
    code: str = Field(min_length=1, max_length=200_000)
    input_files: list[PythonInputFile] = Field(default_factory=list, max_length=50)
    limits: PythonLimitOverrides = Field(default_factory=PythonLimitOverrides)
    figure_formats: list[FigureFormat] = Field(
        default_factory=lambda: [FigureFormat.PNG], min_length=1, max_length=2
    )
    snapshot_key: str | None = Field(
        default=None,
        max_length=400,
        description="The last snapshot the app recorded: restore from it if the session is not "
        "in this worker's memory.",
    )
    restart: bool = Field(default=False, description="Drop the state first (a fresh namespace).")

    @model_validator(mode="after")
    def _unique_names(self) -> SessionRunInput:
        names = [f.file_name for f in self.input_files]
        if len(names) != len(set(names)):
            raise ValueError("input_files: two files would get the same name under /input")
        return self


class VariableInfo(BaseModel):
    name: str
    type: str
    size: int | None = Field(default=None, description="Bytes, when known.")
    shape: str | None = None


class SessionRunOutput(BaseModel):
    session_id: str
    seq: int
    worker: str = Field(description="The python_q worker that holds the session now.")
    stdout: str
    stderr: str
    stdout_truncated: bool = False
    stderr_truncated: bool = False
    last_expr: str | None = None
    error: PythonError | None = None
    figures: list[FigureRef] = Field(default_factory=list)
    notes: list[str] = Field(default_factory=list)
    restored: bool = Field(default=False, description="State was restored on this call.")
    lost: bool = Field(
        default=False,
        description="The session process died in this call (state of the last snapshot is kept).",
    )
    snapshot_key: str | None = Field(default=None, description="Snapshot after this call.")
    unpicklable: list[str] = Field(default_factory=list)
    variables: list[VariableInfo] = Field(default_factory=list)
    duration_s: float
    backend: str = "bwrap"


class SessionCloseInput(BaseModel):
    model_config = ConfigDict(extra="forbid")

    session_id: str = Field(pattern=SESSION_ID_PATTERN)


class SessionCloseOutput(BaseModel):
    session_id: str
    worker: str
    was_live: bool


SESSION_RUN: TaskSpec[SessionRunInput, SessionRunOutput] = TaskSpec(
    name="session.run",
    queues=(Queue.PYTHON,),
    input_model=SessionRunInput,
    output_model=SessionRunOutput,
    description="Run code in a stateful sandboxed session (restored from its snapshot if the "
    "worker does not hold it).",
    soft_time_limit_s=680.0,
    time_limit_s=720.0,
    expires_s=3600.0,
)

SESSION_CLOSE: TaskSpec[SessionCloseInput, SessionCloseOutput] = TaskSpec(
    name="session.close",
    queues=(Queue.PYTHON,),
    input_model=SessionCloseInput,
    output_model=SessionCloseOutput,
    description="Stop a session's process on the worker that holds it.",
    soft_time_limit_s=30.0,
    time_limit_s=40.0,
    expires_s=600.0,
)

register(SESSION_RUN, SESSION_CLOSE)
