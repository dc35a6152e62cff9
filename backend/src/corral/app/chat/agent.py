"""One assistant turn: the model, the tools it calls (concurrently, on the workers), repeat.

The turn runs as its own asyncio task and hands events to the SSE response through a queue,
so the response only reads. Everything is saved as it happens (assistant messages, tool
calls, tool answers, token usage), each in a short transaction of its own. If the turn is
cancelled (the client closed the stream, the thread was deleted, the app stops) it revokes
the tasks still running and saves the partial answer, shielded from the cancellation.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from dataclasses import dataclass, field
from typing import Any

import anyio
import structlog
from fastapi import HTTPException
from redis.asyncio.lock import Lock
from sqlalchemy import update
from sse_starlette import ServerSentEvent

from corral.app.auth.service import User
from corral.app.celery_client import BrokerUnavailable, QueueNotAllowed
from corral.app.chat.history import to_openai
from corral.app.chat.llm import Completion, ModelError, TextDelta
from corral.app.chat.settings import ChatSettings
from corral.app.db.base import utcnow
from corral.app.db.models import Message, Thread, ToolCallRecord
from corral.app.services import Services
from corral.app.streams import Subscription
from corral.app.task_runs import service as task_runs
from corral.app.threads import repository as threads
from corral.app.tools import service as tools_service
from corral.app.tools.registry import TOOLS, Tool
from corral.app.tools.schemas import InvokeResponse
from corral.app.usage import repository as usage
from corral.config import ModelConfig
from corral.task_schemas import ProgressEvent, TaskEvent, TokenUsage, task_events_key

log = structlog.get_logger(__name__)

_CLEANUP_S = 20.0


def offered_tools(settings: ChatSettings) -> list[Tool]:
    return [TOOLS[name] for name in settings.tools if name in TOOLS]


def tool_specs(tools: list[Tool]) -> list[dict[str, Any]]:
    return [
        {
            "type": "function",
            "function": {
                "name": t.name,
                "description": t.description,
                "parameters": t.parameters_schema(),
            },
        }
        for t in tools
    ]


@dataclass
class PendingCall:
    """A tool call of the current round, from request to answer."""

    call_id: str
    name: str
    position: int
    arguments: Any
    record_id: str = ""
    task_id: str | None = None
    tool: Tool | None = None
    subscription: Subscription | None = None
    done: bool = False


@dataclass
class ChatTurn:
    services: Services
    user: User
    thread_id: str
    model: ModelConfig
    lock: Lock
    events: asyncio.Queue[ServerSentEvent | None] = field(default_factory=asyncio.Queue)
    status: str = "running"
    usage_total: TokenUsage = field(default_factory=TokenUsage)
    final_message_id: str | None = None
    _event_id: int = 0
    _partial: str = ""
    _calls: list[PendingCall] = field(default_factory=list)
    _waiters: set[asyncio.Task[Any]] = field(default_factory=set)

    @property
    def settings(self) -> ChatSettings:
        return self.services.settings.chat

    def emit(self, event: str, data: dict[str, Any]) -> None:
        self._event_id += 1
        payload = json.dumps(data, default=str)
        self.events.put_nowait(ServerSentEvent(id=str(self._event_id), event=event, data=payload))

    # -- the loop ------------------------------------------------------------------------------

    async def run(self) -> None:
        try:
            with anyio.fail_after(self.settings.turn_timeout_s):
                await self._loop()
        except asyncio.CancelledError:
            self.status = "cancelled"
            await self._stop("cancelled", "stopped: the stream was closed")
            raise
        except TimeoutError:
            message = f"the turn took longer than {self.settings.turn_timeout_s:g}s"
            await self._stop("error", message)
            self.emit("error", {"type": "TurnTimeout", "message": message})
        except ModelError as exc:
            await self._stop("error", str(exc))
            self.emit("error", {"type": "ModelError", "message": str(exc)})
        except Exception as exc:
            log.exception("chat turn failed", thread_id=self.thread_id)
            await self._stop("error", "internal error")
            self.emit("error", {"type": "InternalError", "message": type(exc).__name__})
        finally:
            with contextlib.suppress(Exception):
                with anyio.CancelScope(shield=True):
                    await self.lock.release()
            self.events.put_nowait(None)

    async def _loop(self) -> None:
        tools = offered_tools(self.settings)
        specs = tool_specs(tools)
        rounds = self.settings.max_tool_rounds
        finish = "stop"
        for round_no in range(rounds + 1):
            last = round_no == rounds
            messages = await self._history()
            completion = await self._call_model(
                messages, specs or None, "none" if last and specs else None
            )
            calls = completion.tool_calls if specs and not last else []
            if completion.tool_calls and not calls:
                finish = "max_tool_rounds"
            message_id = await self._save_assistant(completion, calls)
            self.final_message_id = message_id
            if not calls:
                break
            await self._run_tools(message_id, calls)
        self.status = "done"
        self.emit(
            "done",
            {
                "message_id": self.final_message_id,
                "finish_reason": finish,
                "usage": self.usage_total.model_dump(),
            },
        )

    async def _history(self) -> list[dict[str, Any]]:
        async with self.services.db.session() as session:
            rows = await threads.history(
                session, self.thread_id, self.settings.max_history_messages
            )
        return to_openai(self.settings.system_prompt, rows)

    async def _call_model(
        self, messages: list[dict[str, Any]], specs: list[dict[str, Any]] | None, choice: str | None
    ) -> Completion:
        self._partial = ""
        pending = ""
        completion: Completion | None = None
        flush_at = self.settings.text_flush_chars
        async for item in self.services.agent_models.stream(
            self.model, messages, specs, tool_choice=choice
        ):
            if isinstance(item, TextDelta):
                self._partial += item.text
                pending += item.text
                if len(pending) >= flush_at:
                    self.emit("text", {"delta": pending})
                    pending = ""
            else:
                completion = item
        if pending:
            self.emit("text", {"delta": pending})
        assert completion is not None
        return completion

    async def _save_assistant(self, completion: Completion, calls: list[Any]) -> str:
        async with self.services.db.session() as session:
            message = Message(
                thread_id=self.thread_id,
                seq=await threads.next_seq(session, self.thread_id),
                role="assistant",
                content=completion.text or None,
                tool_calls=[c.as_openai() for c in calls] or None,
                model=self.model.name,
                status="complete",
            )
            session.add(message)
            await session.flush()
            if completion.usage is not None:
                usage.add(
                    session,
                    owner_id=self.user.id,
                    model=self.model.name,
                    provider_model=completion.provider_model,
                    usage=completion.usage,
                    source="agent",
                    thread_id=self.thread_id,
                    message_id=message.id,
                )
            await _touch(session, self.thread_id)
        self._partial = ""
        if completion.usage is not None:
            self.usage_total = self.usage_total + completion.usage
            self.emit(
                "usage",
                {
                    "model": self.model.name,
                    "message_id": message.id,
                    **completion.usage.model_dump(),
                },
            )
        return message.id

    # -- tools ---------------------------------------------------------------------------------

    async def _run_tools(self, message_id: str, calls: list[Any]) -> None:
        """Start every call, then stream each answer the moment it arrives."""
        self._calls = []
        for position, call in enumerate(calls):
            self._calls.append(await self._start(message_id, position, call))
        started = [c for c in self._calls if c.tool is not None and not c.done]
        for pending in started:
            waiter = asyncio.create_task(self._wait(pending), name=f"tool:{pending.task_id}")
            self._waiters.add(waiter)
            waiter.add_done_callback(self._waiters.discard)
        for next_done in asyncio.as_completed(list(self._waiters)):
            pending, response = await next_done
            await self._finish(pending, response)

    async def _start(self, message_id: str, position: int, call: Any) -> PendingCall:
        pending = PendingCall(call_id=call.id, name=call.name, position=position, arguments=None)
        error: tuple[str, str] | None = None
        try:
            arguments = json.loads(call.arguments or "{}")
        except ValueError as exc:
            arguments = call.arguments
            error = ("InvalidArguments", f"arguments are not valid JSON: {exc}")
        else:
            if not isinstance(arguments, dict):
                error = ("InvalidArguments", "arguments must be a JSON object")
        pending.arguments = arguments
        offered = {t.name for t in offered_tools(self.settings)}
        if error is None and call.name not in offered:
            error = ("UnknownTool", f"no tool {call.name!r}; available: {sorted(offered)}")
        if error is None:
            task_id = str(uuid.uuid4())
            pending.subscription = self.services.hub.subscribe(task_events_key(task_id))
            try:
                pending.tool, _ = await tools_service.start(
                    self.services,
                    self.user,
                    call.name,
                    arguments,
                    task_id=task_id,
                    thread_id=self.thread_id,
                )
                pending.task_id = task_id
            except tools_service.BadArguments as exc:
                error = ("InvalidArguments", json.dumps(exc.errors, default=str)[:2000])
            except (tools_service.UnknownTool, QueueNotAllowed) as exc:
                error = ("InvalidArguments", str(exc))
            except HTTPException as exc:  # a tool's own check (e.g. dataset not found)
                error = ("NotFound" if exc.status_code == 404 else "Refused", str(exc.detail))
            except BrokerUnavailable as exc:
                error = ("Unavailable", str(exc))
            if error is not None:
                pending.subscription.close()
                pending.subscription = None
        async with self.services.db.session() as session:
            record = ToolCallRecord(
                thread_id=self.thread_id,
                message_id=message_id,
                call_id=call.id,
                position=position,
                name=call.name[:64],
                arguments=arguments,
                task_run_id=pending.task_id,
                status="started" if error is None else "error",
            )
            session.add(record)
            await session.flush()
            pending.record_id = record.id
        self.emit(
            "tool_call_started",
            {
                "call_id": call.id,
                "name": call.name,
                "arguments": arguments,
                "task_id": pending.task_id,
            },
        )
        if error is not None:
            await self._finish(
                pending,
                InvokeResponse(
                    task_id="", status="error", error={"type": error[0], "message": error[1]}
                ),
            )
        return pending

    async def _wait(self, pending: PendingCall) -> tuple[PendingCall, InvokeResponse]:
        assert pending.tool is not None and pending.task_id is not None

        async def on_event(entry_id: str, event: TaskEvent) -> None:
            if isinstance(event, ProgressEvent):
                self.emit(
                    "tool_progress",
                    {
                        "call_id": pending.call_id,
                        "task_id": pending.task_id,
                        "current": event.current,
                        "total": event.total,
                        "message": event.message,
                        "data": event.data,
                    },
                )

        try:
            response = await tools_service.wait(
                self.services,
                self.user,
                pending.tool,
                pending.task_id,
                self.settings.tool_timeout_s,
                on_event=on_event,
                subscription=pending.subscription,
            )
        finally:
            if pending.subscription is not None:
                pending.subscription.close()
        if response.status == "timeout":
            await self._cancel_task(pending.task_id, "timed out")
        return pending, response

    async def _finish(self, pending: PendingCall, response: InvokeResponse) -> None:
        """Save the answer (row + tool message) and stream it."""
        pending.done = True
        error = response.error.model_dump() if response.error is not None else None
        if response.status == "done":
            content = json.dumps(response.output, default=str)
        else:
            content = json.dumps({"error": error})
        limit = self.settings.tool_result_max_chars
        if len(content) > limit:
            content = content[:limit] + f"... [truncated {len(content) - limit} characters]"
        async with self.services.db.session() as session:
            await session.execute(
                update(ToolCallRecord)
                .where(ToolCallRecord.id == pending.record_id)
                .values(
                    status=response.status,
                    result=response.output if response.status == "done" else None,
                    error_type=error["type"] if error else None,
                    error_message=error["message"] if error else None,
                    finished_at=utcnow(),
                )
            )
            session.add(
                Message(
                    thread_id=self.thread_id,
                    seq=await threads.next_seq(session, self.thread_id),
                    role="tool",
                    content=content,
                    tool_call_id=pending.call_id,
                    status="complete" if response.status == "done" else "error",
                )
            )
        self.emit(
            "tool_result",
            {
                "call_id": pending.call_id,
                "name": pending.name,
                "task_id": pending.task_id,
                "status": response.status,
                "output": response.output,
                "error": error,
            },
        )

    async def _cancel_task(self, task_id: str, reason: str) -> None:
        try:
            await task_runs.cancel(self.services, task_id, self.user.id, reason=reason)
        except (task_runs.TaskAlreadyFinished, task_runs.TaskNotFound):
            pass
        except Exception as exc:
            log.warning("could not cancel tool task", task_id=task_id, error=repr(exc))

    # -- stopping early ------------------------------------------------------------------------

    async def _stop(self, status: str, reason: str) -> None:
        """Revoke running tools and save what was said so far; bounded and shielded."""
        with anyio.move_on_after(_CLEANUP_S, shield=True):
            for waiter in list(self._waiters):
                waiter.cancel()
            open_calls = [c for c in self._calls if not c.done]
            for call in open_calls:
                if call.subscription is not None:
                    call.subscription.close()
                if call.task_id is not None:
                    await self._cancel_task(call.task_id, reason)
                await self._finish(
                    call,
                    InvokeResponse(
                        task_id=call.task_id or "",
                        status="cancelled",
                        error={"type": "Cancelled", "message": reason},
                    ),
                )
            if self._partial:
                async with self.services.db.session() as session:
                    message = Message(
                        thread_id=self.thread_id,
                        seq=await threads.next_seq(session, self.thread_id),
                        role="assistant",
                        content=self._partial,
                        model=self.model.name,
                        status=status,
                    )
                    session.add(message)
                    await session.flush()
                    self.final_message_id = message.id
                    await _touch(session, self.thread_id)
                self._partial = ""


async def _touch(session: Any, thread_id: str) -> None:
    await session.execute(update(Thread).where(Thread.id == thread_id).values(updated_at=utcnow()))
