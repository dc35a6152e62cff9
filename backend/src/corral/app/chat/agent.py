"""One assistant turn: the model, the tools it calls (concurrently, on the workers), repeat.

The loop is driven by what SQL holds, so it can be resumed by another app process: every
assistant message, tool call (with its task id, fixed before sending) and tool answer is saved
as it happens, each in a short transaction of its own, and ``_loop`` starts from that state —
a round whose calls were sent is re-awaited by task id (never re-sent), a model call that had
not finished is issued again. Events go to the turn's Redis stream (``TurnEvents``).

How the loop ends decides what is written: an explicit cancel (``stop_reason="cancel"``)
revokes the tasks still running and saves the partial answer; a hand-off (the lease was lost,
the app is shutting down) writes nothing, so the next holder continues where SQL stands.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import anyio
import structlog
from fastapi import HTTPException
from sqlalchemy import update

from corral.app.auth.service import User
from corral.app.celery_client import BrokerUnavailable, QueueNotAllowed
from corral.app.chat import turn_state
from corral.app.chat.history import to_openai
from corral.app.chat.llm import Completion, ModelError, TextDelta
from corral.app.chat.settings import ChatSettings
from corral.app.chat.turn_state import call_task_id
from corral.app.db.base import utcnow
from corral.app.db.models import Message, Thread, ToolCallRecord
from corral.app.problems import ProblemError
from corral.app.services import Services
from corral.app.streams import Subscription
from corral.app.task_runs import service as task_runs
from corral.app.threads import repository as threads
from corral.app.tools import service as tools_service
from corral.app.tools.registry import TOOLS, Tool
from corral.app.tools.schemas import InvokeResponse
from corral.app.turns import repository as turns_repository
from corral.app.turns.events import TurnEvents
from corral.app.usage import repository as usage
from corral.config import ModelConfig
from corral.task_schemas import (
    ProgressEvent,
    TaskEvent,
    TokenUsage,
    WaitingEvent,
    task_events_key,
)

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
    turn_id: str
    thread_id: str
    user_seq: int
    model: ModelConfig
    events: TurnEvents
    timeout_s: float
    stop_reason: str | None = None
    """Set before cancelling the loop: ``cancel`` stops the turn; anything else hands it off."""
    usage_total: TokenUsage = field(default_factory=TokenUsage)
    final_message_id: str | None = None
    progress_seen: dict[str, str] = field(default_factory=dict)
    """Per task id, the newest task-stream entry already relayed (a resumed turn skips them)."""
    still_holder: Callable[[], Awaitable[bool]] | None = None
    """Asked before the end is written: a process that lost the lease leaves it to the new one."""
    _partial: str = ""
    _calls: list[PendingCall] = field(default_factory=list)
    _waiters: set[asyncio.Task[Any]] = field(default_factory=set)

    @property
    def settings(self) -> ChatSettings:
        return self.services.settings.chat

    async def emit(self, event: str, data: dict[str, Any]) -> None:
        await self.events.emit(event, data)

    # -- the loop ------------------------------------------------------------------------------

    async def run(self) -> str:
        """Run to the end; returns the turn's final status. A hand-off re-raises the
        cancellation with nothing written; every other end is saved and streamed here."""
        try:
            with anyio.fail_after(max(self.timeout_s, 0.001)):
                finish = await self._loop()
        except asyncio.CancelledError:
            if self.stop_reason != "cancel":  # handed off: the tasks run on, unwatched here
                self._abandon()
                raise
            with anyio.CancelScope(shield=True):
                await self.cancel_now()
            raise
        except TimeoutError:
            message = f"the turn took longer than {self.settings.turn_timeout_s:g}s"
            await self.fail("TurnTimeout", message)
            return "error"
        except ModelError as exc:
            await self.fail("ModelError", str(exc))
            return "error"
        except Exception as exc:
            log.exception("chat turn failed", thread_id=self.thread_id, turn_id=self.turn_id)
            await self.fail("InternalError", type(exc).__name__)
            return "error"
        await self._end(
            "done",
            "done",
            {
                "message_id": self.final_message_id,
                "finish_reason": finish,
                "usage": self.usage_total.model_dump(),
            },
        )
        return "done"

    def _abandon(self) -> None:
        for waiter in list(self._waiters):
            waiter.cancel()
        for call in self._calls:
            if call.subscription is not None:
                call.subscription.close()
        self.events.discard_text()

    async def cancel_now(self) -> None:
        await self._stop("cancelled", "stopped by the user")
        await self._end("cancelled", "cancelled", {"reason": "stopped by the user"})

    async def fail(self, error_type: str, message: str) -> None:
        await self._stop("error", message)
        await self._end("error", "error", {"type": error_type, "message": message})

    async def _end(self, status: str, kind: str, data: dict[str, Any]) -> None:
        """The record first (so a client that sees the event finds the turn over), then the
        terminal event; bounded and shielded."""
        with anyio.move_on_after(_CLEANUP_S, shield=True):
            if self.still_holder is not None and not await self.still_holder():
                log.warning("lease lost before the turn's end was written", turn_id=self.turn_id)
                return
            async with self.services.db.session() as session:
                ended = await turns_repository.finish(
                    session,
                    self.turn_id,
                    status,
                    final_message_id=self.final_message_id,
                    error_type=data.get("type") if status == "error" else None,
                    error_message=data.get("message") if status == "error" else None,
                )
            if ended:  # else another holder already ended it (and streamed its end)
                await self.events.emit(kind, data)

    async def _loop(self) -> str:
        tools = offered_tools(self.settings)
        specs = tool_specs(tools)
        rounds = self.settings.max_tool_rounds
        async with self.services.db.session() as session:
            state = await turn_state.load(session, self.thread_id, self.user_seq)
        self.usage_total = state.usage
        if state.final_message_id is not None:  # saved just before the last holder stopped
            self.final_message_id = state.final_message_id
            return "stop"
        if state.open_message_id is not None:
            self.final_message_id = state.open_message_id
            await self._run_tools(state.open_message_id, state.open_calls)
        finish = "stop"
        for round_no in range(state.rounds, rounds + 1):
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
            await self._run_tools(
                message_id,
                [
                    turn_state.OpenCall(
                        call_id=c.id, name=c.name, arguments=c.arguments, position=i
                    )
                    for i, c in enumerate(calls)
                ],
            )
        return finish

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
        completion: Completion | None = None
        async for item in self.services.agent_models.stream(
            self.model, messages, specs, tool_choice=choice
        ):
            if isinstance(item, TextDelta):
                self._partial += item.text
                await self.events.text(item.text)
            else:
                completion = item
        await self.events.flush()
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
        await self.emit("message_saved", {"message_id": message.id, "role": "assistant"})
        if completion.usage is not None:
            self.usage_total = self.usage_total + completion.usage
            await self.emit(
                "usage",
                {
                    "model": self.model.name,
                    "message_id": message.id,
                    **completion.usage.model_dump(),
                },
            )
        return message.id

    # -- tools ---------------------------------------------------------------------------------

    async def _run_tools(self, message_id: str, calls: list[turn_state.OpenCall]) -> None:
        """Start every call (or re-attach to its task), then stream each answer as it comes."""
        self._calls = []
        for call in calls:
            self._calls.append(await self._start(message_id, call))
        started = [c for c in self._calls if c.tool is not None and not c.done]
        for pending in started:
            waiter = asyncio.create_task(self._wait(pending), name=f"tool:{pending.task_id}")
            self._waiters.add(waiter)
            waiter.add_done_callback(self._waiters.discard)
        for next_done in asyncio.as_completed(list(self._waiters)):
            pending, response = await next_done
            await self._finish(pending, response)

    async def _start(self, message_id: str, call: turn_state.OpenCall) -> PendingCall:
        pending = PendingCall(
            call_id=call.call_id, name=call.name, position=call.position, arguments=None
        )
        record = call.record
        task_id = call_task_id(message_id, call.position)
        sent = record.task_run_id is not None if record is not None else call.task_sent
        if sent:  # sent by an earlier holder: re-await it, never send it again
            pending.arguments = record.arguments if record is not None else call.arguments
            pending.task_id = task_id if record is None else record.task_run_id
            pending.tool = TOOLS.get(call.name)
            if record is None:
                pending.record_id = await self._record(message_id, call, pending, None)
            else:
                pending.record_id = record.id
            if pending.tool is None:  # a tool removed since: it cannot be presented
                await self._finish(pending, _error_response("UnknownTool", call.name))
            return pending
        if record is not None:  # it failed before anything was sent
            pending.arguments = record.arguments
            pending.record_id = record.id
            await self._finish(
                pending,
                _error_response(record.error_type or "Refused", record.error_message or ""),
            )
            return pending
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
            pending.subscription = self.services.hub.subscribe(task_events_key(task_id))
            try:
                pending.tool, _, _ = await tools_service.start(
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
            except ProblemError as exc:  # a typed refusal: budget used up, dataset not ready …
                error = (exc.error_name, exc.detail)
            if error is not None:
                pending.subscription.close()
                pending.subscription = None
        pending.record_id = await self._record(message_id, call, pending, error)
        await self.emit(
            "tool_call_started",
            {
                "call_id": call.call_id,
                "name": call.name,
                "arguments": arguments,
                "task_id": pending.task_id,
            },
        )
        if error is not None:
            await self._finish(pending, _error_response(*error))
        return pending

    async def _record(
        self,
        message_id: str,
        call: turn_state.OpenCall,
        pending: PendingCall,
        error: tuple[str, str] | None,
    ) -> str:
        async with self.services.db.session() as session:
            record = ToolCallRecord(
                thread_id=self.thread_id,
                message_id=message_id,
                call_id=call.call_id,
                position=call.position,
                name=call.name[:64],
                arguments=pending.arguments,
                task_run_id=pending.task_id,
                status="started" if error is None else "error",
                error_type=error[0] if error else None,
                error_message=error[1] if error else None,
            )
            session.add(record)
            await session.flush()
            return record.id

    async def _wait(self, pending: PendingCall) -> tuple[PendingCall, InvokeResponse]:
        assert pending.tool is not None and pending.task_id is not None
        seen = _entry(self.progress_seen.get(pending.task_id, "0-0"))

        async def on_event(entry_id: str, event: TaskEvent) -> None:
            if isinstance(event, ProgressEvent) and _entry(entry_id) > seen:
                await self.emit(
                    "tool_progress",
                    {
                        "call_id": pending.call_id,
                        "task_id": pending.task_id,
                        "task_entry": entry_id,
                        "current": event.current,
                        "total": event.total,
                        "message": event.message,
                        "data": event.data,
                    },
                )
            elif isinstance(event, WaitingEvent) and _entry(entry_id) > seen:
                await self.emit(
                    "tool_waiting",
                    {
                        "call_id": pending.call_id,
                        "task_id": pending.task_id,
                        "task_entry": entry_id,
                        "queue": event.queue,
                        "ahead": event.ahead,
                        "cap": event.cap,
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
        await self.emit(
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
        """Revoke running tools and save what was said so far; bounded and shielded.

        Open calls come from SQL, so a turn stopped right after a resume (before its loop
        re-attached to them) still revokes the tasks an earlier holder sent."""
        with anyio.move_on_after(_CLEANUP_S, shield=True):
            for waiter in list(self._waiters):
                waiter.cancel()
            for call in self._calls:
                if call.subscription is not None:
                    call.subscription.close()
            async with self.services.db.session() as session:
                state = await turn_state.load(session, self.thread_id, self.user_seq)
            for open_call in state.open_calls:
                assert state.open_message_id is not None
                pending = PendingCall(
                    call_id=open_call.call_id,
                    name=open_call.name,
                    position=open_call.position,
                    arguments=open_call.record.arguments if open_call.record else None,
                )
                if open_call.record is not None:
                    pending.record_id = open_call.record.id
                    pending.task_id = open_call.record.task_run_id
                else:
                    pending.record_id = await self._record(
                        state.open_message_id, open_call, pending, None
                    )
                if pending.task_id is not None:
                    await self._cancel_task(pending.task_id, reason)
                await self._finish(
                    pending,
                    InvokeResponse(
                        task_id=pending.task_id or "",
                        status="cancelled",
                        error={"type": "Cancelled", "message": reason},
                    ),
                )
            await self.events.flush()
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


def _error_response(error_type: str, message: str) -> InvokeResponse:
    return InvokeResponse(
        task_id="", status="error", error={"type": error_type, "message": message}
    )


def _entry(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms or 0), int(seq or 0)


async def _touch(session: Any, thread_id: str) -> None:
    await session.execute(update(Thread).where(Thread.id == thread_id).values(updated_at=utcnow()))
