"""The tools an agent or a user can invoke, each backed by one registry task.

A tool has its own argument model (what callers send, shown as JSON schema in
``GET /api/tools``), turns those arguments into the task's input and queue, and may turn the
task's output into what callers see (``present``: e.g. object keys into presigned URLs).
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field

from corral.task_schemas import (
    SYSTEM_ECHO,
    SYSTEM_FAIL,
    EchoInput,
    FailInput,
    Queue,
    TaskSpec,
)

if TYPE_CHECKING:
    from corral.app.auth.service import User
    from corral.app.services import Services


@dataclass(frozen=True)
class ToolCall:
    """What the app knows when turning arguments into input and output into a response."""

    user: User
    services: Services
    thread_id: str | None = None


@dataclass(frozen=True)
class Dispatch:
    """What ``build_input`` returns to send another task than the tool's own, maybe to one
    worker's queue (``run_python`` in a thread: ``session.run`` on the session's holder)."""

    spec: TaskSpec[Any, Any]
    input: BaseModel
    route: str | None = None


InputBuilder = Callable[[Any, ToolCall], Awaitable[tuple[BaseModel | Dispatch, Queue | None]]]
Presenter = Callable[[Any, ToolCall], Awaitable[Any]]


async def _keep_output(output: Any, call: ToolCall) -> Any:
    return output


@dataclass(frozen=True)
class Tool:
    name: str
    description: str
    arguments: type[BaseModel]
    task: TaskSpec[Any, Any]
    build_input: InputBuilder
    present: Presenter = _keep_output

    def parameters_schema(self) -> dict[str, Any]:
        """The arguments' JSON schema (a copy: callers may change theirs). Built once per
        model: pydantic's schema generation cost ~1 ms a tool, on every chat model call and
        every ``GET /api/tools``."""
        return copy.deepcopy(_json_schema(self.arguments))


@functools.cache
def _json_schema(model: type[BaseModel]) -> dict[str, Any]:
    return model.model_json_schema()


TOOLS: dict[str, Tool] = {}


def register_tool(tool: Tool) -> Tool:
    if tool.name in TOOLS:
        raise ValueError(f"tool {tool.name} registered twice")
    TOOLS[tool.name] = tool
    return tool


class EchoArguments(EchoInput):
    model_config = ConfigDict(extra="forbid")

    queue: Queue = Field(default=Queue.PYTHON, description="Which worker pool runs it.")


class FailArguments(FailInput):
    model_config = ConfigDict(extra="forbid")

    queue: Queue = Field(default=Queue.PYTHON, description="Which worker pool runs it.")


async def _echo_input(args: EchoArguments, call: ToolCall) -> tuple[BaseModel, Queue | None]:
    return EchoInput.model_validate(args.model_dump(exclude={"queue"})), args.queue


async def _fail_input(args: FailArguments, call: ToolCall) -> tuple[BaseModel, Queue | None]:
    return FailInput.model_validate(args.model_dump(exclude={"queue"})), args.queue


register_tool(
    Tool(
        name="echo",
        description="Return `payload` after sleeping `sleep_s` in `steps` steps (health/bench).",
        arguments=EchoArguments,
        task=SYSTEM_ECHO,
        build_input=_echo_input,
    )
)
register_tool(
    Tool(
        name="fail",
        description="Fail with a DeliberateFailure carrying `message` (exercises error paths).",
        arguments=FailArguments,
        task=SYSTEM_FAIL,
        build_input=_fail_input,
    )
)
