"""The ``run_python`` tool: sandboxed Python on python_q, figures returned as URLs for ``<img>``.

Arguments are checked here before anything is queued: every input file must be a key the
caller owns and that exists. ``present`` swaps each figure's object key for a short-lived URL
from the app's store (presigned S3, or the app's own signed blob route).
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from corral.app.storage.store import InvalidKey, key_owner
from corral.app.tools.registry import Dispatch, Tool, ToolCall, register_tool
from corral.app.tools.service import BadArguments
from corral.task_schemas import (
    PYTHON_RUN,
    SESSION_RUN,
    FigureFormat,
    PythonInputFile,
    PythonLimitOverrides,
    PythonRunInput,
    Queue,
)

FIGURE_URL_TTL_S = 3600


class RunPythonArguments(BaseModel):
    model_config = ConfigDict(extra="forbid")

    code: str = Field(min_length=1, max_length=200_000, description="Python source to run.")
    files: list[str | PythonInputFile] = Field(
        default_factory=list,
        max_length=20,
        description="Your object keys (from POST /api/storage), or {key, name}; readable at "
        "/input/<name> (name defaults to the key's last part).",
    )
    want_svg: bool = Field(default=False, description="Also save figures as SVG.")
    timeout_s: float | None = Field(default=None, gt=0, le=600, description="Wall-clock limit.")
    memory_mb: int | None = Field(default=None, ge=64, le=16_384)


def _bad(loc: list[str | int], msg: str, kind: str) -> BadArguments:
    return BadArguments("run_python", [{"loc": loc, "msg": msg, "type": kind}])


async def _build_input(
    args: RunPythonArguments, call: ToolCall
) -> tuple[BaseModel | Dispatch, Queue | None]:
    files: list[PythonInputFile] = []
    for i, item in enumerate(args.files):
        try:
            ref = PythonInputFile(key=item) if isinstance(item, str) else item
            owner = key_owner(ref.key)
        except (InvalidKey, ValidationError) as exc:
            raise _bad(["files", i], str(exc), "invalid_key") from exc
        # Another user's key reads as missing: existence is not revealed.
        if owner != call.user.id or not await call.services.storage.exists(ref.key):
            raise _bad(["files", i], f"file {ref.key} not found", "not_found")
        files.append(ref)
    try:
        task_input = PythonRunInput(
            code=args.code,
            input_files=files,
            limits=PythonLimitOverrides(wall_s=args.timeout_s, memory_mb=args.memory_mb),
            figure_formats=[FigureFormat.PNG, FigureFormat.SVG]
            if args.want_svg
            else [FigureFormat.PNG],
        )
    except ValueError as exc:
        raise _bad(["files"], str(exc), "value_error") from exc
    if call.thread_id is not None:
        # In a conversation: the thread's session (made on first use), so state persists.
        from corral.app.sessions import service as sessions

        row = await sessions.for_thread(call.services, call.user, call.thread_id)
        session_input, route = await sessions.prepare_call(
            call.services,
            call.user,
            row,
            args.code,
            formats=task_input.figure_formats,
            extra_files=files,
        )
        return Dispatch(SESSION_RUN, session_input, route), None
    return task_input, None


async def _present(output: Any, call: ToolCall) -> Any:
    if not isinstance(output, dict):
        return output
    if "session_id" in output:  # ran in the thread's session: record where it lives now
        from corral.app.sessions import service as sessions

        return await sessions.finish_call(call.services, call.user, output)
    figures = []
    for figure in output.get("figures") or []:
        url = await call.services.storage.presign_get(figure["key"], expires_s=FIGURE_URL_TTL_S)
        figures.append({**figure, "url": url})
    return {**output, "figures": figures}


register_tool(
    Tool(
        name="run_python",
        description="Run Python (numpy, pandas, scipy, matplotlib, pyarrow) in a sandbox; returns "
        "stdout, the last expression's repr, errors with line numbers, and figure URLs. In a "
        "conversation, state persists between calls: variables, imports and loaded data from "
        "earlier calls are still there, so build on them instead of recomputing. Input files "
        "are read-only at /input/<name>.",
        arguments=RunPythonArguments,
        task=PYTHON_RUN,
        build_input=_build_input,
        present=_present,
    )
)
