"""``session.run``: run code in a research session held by this worker's session host.

The app sends it to the holder's own queue, or to python_q when the holder is gone; either way
the host restores the session from ``snapshot_key`` if it is not in memory. The user's
exceptions and limits are normal output, as in ``python.run``.
"""

from __future__ import annotations

import shutil
import tempfile
import uuid
from pathlib import Path

from corral.task_schemas import (
    SESSION_RUN,
    PythonError,
    SessionRunInput,
    SessionRunOutput,
    VariableInfo,
)
from corral.tasks import run_clock
from corral.tasks._base import TaskContext, TaskUserError, corral_task
from corral.tasks.celery_app import settings
from corral.tasks.python_tool_task import SandboxError, _upload_figures
from corral.tasks.sandbox import SandboxLimits, SandboxResult
from corral.tasks.sessions.client import HostUnavailable, call_host

# A session's answer may name these; anything else from the host is an infrastructure error.
USER_ERRORS = {"InputFileNotFound", "StaleSessionCall", "SessionNotFound", "SessionRestoreFailed"}


def session_limits(params: SessionRunInput) -> SandboxLimits:
    conf = settings.sandbox
    overrides = params.limits.model_dump(exclude_none=True)
    return SandboxLimits.model_validate(conf.limits.model_dump() | overrides).capped_by(
        conf.max_limits
    )


@corral_task(SESSION_RUN)
def session_run(ctx: TaskContext, params: SessionRunInput) -> SessionRunOutput:
    """Hand the call to the session host, upload the figures it left, return references."""
    limits = session_limits(params)
    # Made by the host only when the call leaves files (most calls leave none).
    output_dir = (settings.sandbox.work_dir or Path(tempfile.gettempdir())) / (
        f"corral-run-{uuid.uuid4().hex}"
    )
    try:
        request = {
            "op": "run",
            "session_id": params.session_id,
            "owner_id": ctx.owner_id,
            "seq": params.seq,
            "code": params.code,
            "limits": limits.model_dump(),
            "formats": [f.value for f in params.figure_formats],
            "input_files": [{"key": f.key, "name": f.file_name} for f in params.input_files],
            "snapshot_key": params.snapshot_key,
            "restart": params.restart,
            "output_dir": str(output_dir),
        }
        try:
            answer = call_host(request)
        except HostUnavailable as exc:
            raise SandboxError(str(exc)) from exc
        cpu_s = answer.get("cpu_s")
        if isinstance(cpu_s, (int, float)):  # the kernel is not this process's child
            run_clock.charge(float(cpu_s))
        if not answer.get("ok"):
            error_type = str(answer.get("error_type") or "SandboxError")
            if error_type in USER_ERRORS:
                raise TaskUserError(str(answer.get("message")), error_type=error_type)
            raise SandboxError(str(answer.get("message")))
        files = [Path(p) for p in answer.get("files") or []]
        result = SandboxResult(stdout="", stderr="", output_files=files)
        figures, notes = _upload_figures(ctx, result)
    finally:
        shutil.rmtree(output_dir, ignore_errors=True)
    error = answer.get("error")
    return SessionRunOutput(
        session_id=params.session_id,
        seq=params.seq,
        worker=str(answer["worker"]),
        stdout=answer["stdout"],
        stderr=answer["stderr"],
        stdout_truncated=bool(answer.get("stdout_truncated")),
        stderr_truncated=bool(answer.get("stderr_truncated")),
        last_expr=answer.get("last_expr"),
        error=PythonError.model_validate(error) if error else None,
        figures=figures,
        notes=[*answer.get("notes", []), *notes],
        restored=bool(answer.get("restored")),
        lost=bool(answer.get("lost")),
        snapshot_key=answer.get("snapshot_key"),
        unpicklable=answer.get("unpicklable") or [],
        variables=[VariableInfo.model_validate(v) for v in answer.get("variables") or []],
        duration_s=round(float(answer.get("duration_s") or 0.0), 4),
    )
