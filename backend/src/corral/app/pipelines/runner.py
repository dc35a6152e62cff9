"""The scheduler of one pipeline run: an asyncio task in the app, steps as ``llm.generate`` tasks.

Ready steps (all dependencies done) are sent at once, so independent steps run in parallel on
llm_q. Each step waits with ``long_poll_celery_result``; each transition writes that step's row
(SQL, the record) and is appended to the run's event stream (Redis, the live feed). A failed
(or cancelled) non-optional step makes its dependants ``skipped`` and the run ``failed``;
independent branches still finish. Cancel raises the run's ``cancel_requested`` flag (SQL) and
cancels the steps' tasks; this scheduler sees both and stops launching.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import Coroutine
from graphlib import TopologicalSorter
from typing import Any

import structlog
from pydantic import ValidationError

from corral.app.celery_client import BrokerUnavailable
from corral.app.clock import now
from corral.app.pipelines.dag import (
    StepValue,
    TemplateError,
    VariantsValue,
    join_responses,
    render,
)
from corral.app.pipelines.repository import PipelineRunRepository
from corral.app.pipelines.schemas import (
    TERMINAL_STEP,
    VARIANTS,
    PipelineRun,
    RunStatus,
    StepDef,
    StepError,
    StepStatus,
)
from corral.app.problems import ProblemError
from corral.app.services import Services
from corral.app.streams import (
    TaskCancelled,
    TaskDone,
    TaskFailed,
    TaskTimedOut,
    long_poll_celery_result,
)
from corral.app.task_runs import service as task_runs
from corral.app.task_runs.waited import WaitedRun
from corral.task_schemas import (
    LLM_GENERATE,
    CancelledEvent,
    DoneEvent,
    ErrorEvent,
    GenerationOptions,
    LLMGenerateInput,
    LLMGenerateOutput,
    ProgressEvent,
    StartedEvent,
    TaskEvent,
    TokenUsage,
    message_priority,
)

log = structlog.get_logger(__name__)


class StepFailed(Exception):
    def __init__(self, error_type: str, message: str) -> None:
        super().__init__(message)
        self.error = StepError(type=error_type, message=message)


class StepCancelled(Exception):
    pass


class StepNotStarted(Exception):
    """The run was cancelled before the step's task was sent: the step is skipped."""


class PipelineRunner:
    def __init__(self, services: Services, repo: PipelineRunRepository, run: PipelineRun) -> None:
        self.services = services
        self.repo = repo
        self.run = run
        self.defs = {s.name: s for s in run.definition.steps}
        self.outputs: dict[str, StepValue] = {}
        self._ancestors = self._ancestor_sets()
        self._lock = asyncio.Lock()
        self._running: dict[asyncio.Task[StepStatus], str] = {}
        # A finished step's save + progress event, off the critical path (see _run_step).
        self._persisting: set[asyncio.Task[None]] = set()
        # Each step's finished tasks, recorded with the step's end (no tracker follows them).
        self._task_ends: dict[str, list[WaitedRun]] = {}
        # Steps scheduled whose first task is not sent yet: a finished step's save waits for
        # them, so their rows' commits do not queue behind it on SQLite's write lock.
        self._sending: set[str] = set()
        self._sent = asyncio.Condition()
        self._to_persist: dict[str, dict[str, Any]] = {}  # finished steps' saves, not started

    def _ancestor_sets(self) -> dict[str, set[str]]:
        found: dict[str, set[str]] = {}
        for name in TopologicalSorter(
            {s.name: s.depends_on for s in self.defs.values()}
        ).static_order():
            parents = self.defs[name].depends_on
            found[name] = set(parents).union(*(found[p] for p in parents))
        return found

    # -- the run -------------------------------------------------------------------------------

    async def execute(self) -> None:
        try:
            await self.repo.publish(
                self.run.run_id,
                ProgressEvent(
                    current=0,
                    total=len(self.defs),
                    message="run started",
                    data=json.dumps({"run": "running"}),
                ),
            )
            await self._schedule()
            await self._drain_persisting()
            await self._finish()
        except asyncio.CancelledError:
            await asyncio.shield(self._abort("cancelled", "the app shut down during the run"))
            raise
        except Exception as exc:
            log.exception("pipeline scheduler crashed", run_id=self.run.run_id)
            await self._abort("failed", f"internal error in the scheduler: {exc}")

    async def _schedule(self) -> None:
        sorter = TopologicalSorter({s.name: s.depends_on for s in self.defs.values()})
        sorter.prepare()
        blocking: dict[str, str] = {}  # step -> why its dependants cannot run
        while sorter.is_active():
            # The cancel flag is read where each step's task is recorded (`_call`, one
            # transaction), not here: a read per step on the critical path saved.
            for name in sorter.get_ready():
                blockers = [d for d in self.defs[name].depends_on if d in blocking]
                if blockers:
                    why = f"dependency {blockers[0]} {blocking[blockers[0]]}"
                    await self._set(
                        name,
                        status="skipped",
                        finished_at=now(),
                        error=StepError(type="Skipped", message=f"not run: {why}"),
                    )
                    blocking[name] = "was skipped"
                    sorter.done(name)
                    continue
                self._sending.add(name)
                task = asyncio.create_task(self._run_step(self.defs[name]), name=f"step:{name}")
                self._running[task] = name
            self._start_persists()  # after the successors are scheduled: they send first
            if not self._running:
                continue
            finished, _ = await asyncio.wait(self._running, return_when=asyncio.FIRST_COMPLETED)
            self._raise_persist_errors()
            for task in finished:
                name = self._running.pop(task)
                status = task.result()
                if status != "done" and not (status == "failed" and self.defs[name].optional):
                    blocking[name] = {"failed": "failed", "skipped": "was skipped"}.get(
                        status, "was cancelled"
                    )
                sorter.done(name)
        self._start_persists()

    def _start_persists(self) -> None:
        """Save the finished steps; each waits for the steps scheduled so far to send first."""
        while self._to_persist:
            name, changes = self._to_persist.popitem()
            persist = asyncio.create_task(
                self._set(name, after_sends=True, **changes), name=f"persist:{name}"
            )
            self._persisting.add(persist)

    def _raise_persist_errors(self) -> None:
        """A failed save of a finished step fails the run, as if it had been awaited inline."""
        for task in [t for t in self._persisting if t.done()]:
            self._persisting.discard(task)
            task.result()

    async def _drain_persisting(self) -> None:
        while self._persisting:
            task = self._persisting.pop()
            await task

    async def _finish(self) -> None:
        run = self.run
        status: RunStatus
        error: str | None
        if await self.repo.cancel_requested(run.run_id):
            status, error = "cancelled", "cancelled by user"
        else:
            bad = [
                s
                for s in run.steps
                if s.status in {"failed", "cancelled"} and not self.defs[s.name].optional
            ]
            status = "failed" if bad else "succeeded"
            error = (
                "; ".join(
                    f"step {s.name} {s.status}: {s.error.message if s.error else ''}" for s in bad
                )
                if bad
                else None
            )
        await self._close(status, error)

    async def _abort(self, status: RunStatus, reason: str) -> None:
        """Stop every running step (their tasks too) and record why, within a deadline."""
        try:
            async with asyncio.timeout(10):
                self._start_persists()
                for task in self._running:
                    task.cancel()
                if self._running:
                    await asyncio.wait(self._running)
                if self._persisting:  # finished steps are recorded as done, not aborted
                    await asyncio.wait(self._persisting)
                    self._persisting.clear()
                for step in self.run.steps:
                    if not step.terminal:
                        await self._set(
                            step.name,
                            status="cancelled" if step.task_ids else "skipped",
                            finished_at=now(),
                            error=StepError(type="Aborted", message=reason),
                        )
                await self._close(status, reason)
        except Exception as exc:
            log.error("could not record aborted pipeline", run_id=self.run.run_id, error=repr(exc))

    async def _close(self, status: RunStatus, error: str | None) -> None:
        async with self._lock:
            run = self.run
            run.status = status
            run.error = error
            run.finished_at = now()
            await self.repo.save(run)
        summary = {"status": status, "usage": run.usage.model_dump()}
        if status == "succeeded":
            await self.repo.publish(run.run_id, DoneEvent(result=json.dumps(summary)))
        elif status == "cancelled":
            await self.repo.publish(run.run_id, CancelledEvent(reason=error or "cancelled"))
        else:
            await self.repo.publish(
                run.run_id, ErrorEvent(error_type="PipelineFailed", message=error or "failed")
            )

    # -- state ---------------------------------------------------------------------------------

    async def _set(
        self,
        name: str,
        *,
        sent_task: str | None = None,
        after_sends: bool = False,
        **changes: Any,
    ) -> None:
        """Apply changes to a step, save it, and publish the transition if any.

        ``sent_task``: a task was sent for the step (added under the lock: a group's variants
        are sent concurrently). ``after_sends``: save once the steps scheduled so far have sent
        their tasks (a finished step's save, off its successors' critical path)."""
        async with self._lock:
            if after_sends:
                await self._sends_done()
            step = self.run.step(name)
            before = step.status
            if sent_task is not None:
                step.task_ids = [*step.task_ids, sent_task]
                step.status = "queued" if step.status == "pending" else step.status
                step.queued_at = step.queued_at or now()
            for key, value in changes.items():
                setattr(step, key, value)
            self.run.usage = sum((s.usage for s in self.run.steps), TokenUsage())
            ends = self._task_ends.pop(name, []) if step.status in TERMINAL_STEP else []
            try:
                await self.repo.save_step(self.run, name, also=self._record_ends(ends))
            except BaseException:
                self._follow(ends)  # not recorded here: the tracker records them
                raise
            if step.status == before:
                return
            data = {
                "step": name,
                "status": step.status,
                "at": now().isoformat(),
                "task_ids": step.task_ids,
                "model": step.model,
                "error": step.error.model_dump() if step.error else None,
            }
            finished = sum(1 for s in self.run.steps if s.status in TERMINAL_STEP)
            await self.repo.publish(
                self.run.run_id,
                ProgressEvent(
                    current=finished,
                    total=len(self.run.steps),
                    message=f"step {name} {step.status}",
                    data=json.dumps(data),
                ),
            )

    async def _sends_done(self, limit_s: float = 5.0) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(limit_s), self._sent:
                await self._sent.wait_for(lambda: not self._sending)

    async def _mark_sent(self, name: str) -> None:
        if name in self._sending:
            self._sending.discard(name)
            async with self._sent:
                self._sent.notify_all()

    def _record_ends(self, ends: list[WaitedRun]) -> Any:
        """The step's finished tasks' ends, recorded in the step's save (its transaction)."""
        if not ends:
            return None
        services = self.services

        async def record(session: Any) -> None:
            for end in ends:
                await end.record(services, session)

        return record

    def _follow(self, ends: list[WaitedRun]) -> None:
        timeout_s = task_runs.watch_timeout_s(self.services, LLM_GENERATE)
        for end in ends:
            end.follow(self.services, timeout_s)

    def _namespace(self, step: StepDef) -> dict[str, Any]:
        values: dict[str, Any] = dict(self.run.definition.input)
        values.update({n: self.outputs[n] for n in self._ancestors[step.name] if n in self.outputs})
        return values

    # -- one step ------------------------------------------------------------------------------

    async def _run_step(self, step: StepDef) -> StepStatus:
        try:
            try:
                output, model, usage = await self._produce(step)
            finally:  # e.g. a template error before anything was sent
                await self._mark_sent(step.name)
        except StepFailed as exc:
            await self._set(step.name, status="failed", error=exc.error, finished_at=now())
            if step.optional:
                self.outputs[step.name] = StepValue(
                    response="", parsed=None, responses=[], error=exc.error.model_dump()
                )
            return "failed"
        except StepNotStarted as exc:
            await self._set(
                step.name,
                status="skipped",
                finished_at=now(),
                error=StepError(type="Skipped", message=f"not run: {exc}"),
            )
            return "skipped"
        except StepCancelled as exc:
            await self._set(
                step.name,
                status="cancelled",
                error=StepError(type="Cancelled", message=str(exc)),
                finished_at=now(),
            )
            return "cancelled"
        self.outputs[step.name] = StepValue(output)
        # The scheduler sends the successors as soon as this returns and then starts the step's
        # save, which waits for their rows' commits (SQLite's one write lock) but takes the
        # FIFO lock first, so `done` is still published before any successor's `queued`.
        self._to_persist[step.name] = {
            "status": "done",
            "output": output,
            "model": model,
            "usage": usage,
            "finished_at": now(),
        }
        return "done"

    async def _produce(self, step: StepDef) -> tuple[dict[str, Any], str, TokenUsage]:
        values = self._namespace(step)
        if step.kind == "generate":
            out = await self._call(
                step, step.model, self._render(step, step.prompt_template, values)
            )
            return out.model_dump(mode="json"), out.model, out.usage

        calls = [
            self._call(
                step,
                variant.model or step.model,
                self._render(step, variant.prompt_template or step.prompt_template, values),
                variant.options or step.options,
            )
            for variant in step.variants
        ]
        outs = await _all_or_nothing(calls)
        responses = [o.response for o in outs]
        usage = sum((o.usage for o in outs), TokenUsage())
        output: dict[str, Any] = {
            "response": join_responses(responses),
            "responses": responses,
            "outputs": [o.model_dump(mode="json") for o in outs],
            "model": outs[-1].model,
            "usage": usage.model_dump(),
        }
        if step.kind == "chord" and step.combine is not None:
            combine = step.combine
            prompt = self._render(
                step, combine.prompt_template, {**values, VARIANTS: VariantsValue(responses)}
            )
            final = await self._call(
                step,
                combine.model or step.model,
                prompt,
                combine.options,
                system_prompt=combine.system_prompt,
                json_mode=combine.json_mode,
            )
            usage = usage + final.usage
            output |= {
                "response": final.response,
                "parsed": final.parsed,
                "combine": final.model_dump(mode="json"),
                "model": final.model,
                "usage": usage.model_dump(),
            }
        return output, str(output["model"]), usage

    @staticmethod
    def _render(step: StepDef, template: str, values: dict[str, Any]) -> str:
        try:
            return render(template, values)
        except TemplateError as exc:
            raise StepFailed("TemplateError", f"step {step.name}: {exc}") from None

    async def _call(
        self,
        step: StepDef,
        model: str | None,
        prompt: str,
        options: GenerationOptions | None = None,
        *,
        system_prompt: str | None = None,
        json_mode: bool | None = None,
    ) -> LLMGenerateOutput:
        """Send one ``llm.generate`` for ``step`` and wait for it within the step timeout."""
        run = self.run
        try:
            task_input = LLMGenerateInput(
                model=model,
                prompt=prompt,
                system_prompt=system_prompt if system_prompt is not None else step.system_prompt,
                options=options or step.options,
                fallback_models=step.fallback_models,
                json_mode=step.json_mode if json_mode is None else json_mode,
                max_patching_attempts=step.max_patching_attempts,
                cache=step.cache,
            )
        except ValidationError as exc:
            first = exc.errors(include_url=False)[0]
            raise StepFailed("InvalidPrompt", f"{first['loc']}: {first['msg']}") from None
        try:
            try:
                task_id = await self._submit(task_input)
            finally:  # before `_set` below: a finished step's save waits for this under the lock
                await self._mark_sent(step.name)
        except BrokerUnavailable as exc:
            raise StepFailed("BrokerUnavailable", str(exc)) from exc
        except ProblemError as exc:  # e.g. the owner's daily token budget is used up
            raise StepFailed(exc.error_name, exc.detail) from exc
        await self._set(step.name, sent_task=task_id)
        # Saved before this check, so a DELETE that raised the flag earlier sees the task id.
        if await self.repo.cancel_requested(run.run_id):
            await self._cancel_task(task_id)

        end = WaitedRun(task_id)

        async def on_event(entry_id: str, event: TaskEvent) -> None:
            await end.note(entry_id, event)
            if isinstance(event, StartedEvent) and run.step(step.name).status == "queued":
                await self._set(step.name, status="running", started_at=now())

        timeout_s = run.definition.step_timeout_s
        outcome: Any = None
        try:
            outcome = await long_poll_celery_result(
                task_id,
                timeout_s=timeout_s,
                hub=self.services.hub,
                backend=self.services.results,
                on_event=on_event,
            )
        except asyncio.CancelledError:
            await asyncio.shield(self._cancel_task(task_id))
            raise
        finally:
            if isinstance(outcome, TaskDone) and end.ended is not None:
                self._task_ends.setdefault(step.name, []).append(end)
            else:  # an outcome this runner does not record, or it stopped waiting
                self._follow([end])
        match outcome:
            case TaskDone(output=output):
                return LLMGenerateOutput.model_validate(output)
            case TaskFailed(error_type=error_type, message=message):
                raise StepFailed(error_type, message)
            case TaskCancelled(reason=reason):
                raise StepCancelled(reason)
            case TaskTimedOut():
                await self._cancel_task(task_id)
                raise StepFailed("Timeout", f"no answer within step_timeout_s={timeout_s:g}")
        raise AssertionError(f"unhandled outcome {outcome!r}")

    async def _submit(self, task_input: LLMGenerateInput) -> str:
        """The step's run row, in the transaction that reads the run's cancel flag; then send."""
        run, services = self.run, self.services
        priority = message_priority(run.definition.urgent)
        queue = LLM_GENERATE.default_queue
        task_id = str(uuid.uuid4())
        await services.users.ensure(run.owner_id)
        async with services.db.session() as session:
            if await self.repo.cancel_requested_in(session, run.run_id):
                raise StepNotStarted("the run was cancelled")
            waiting = await task_runs.insert_run(
                services,
                session,
                LLM_GENERATE,
                task_input,
                owner_id=run.owner_id,
                queue=queue,
                task_id=task_id,
                tool="pipeline",
                priority=priority,
            )
        await task_runs.dispatch(
            services,
            LLM_GENERATE,
            task_input,
            owner_id=run.owner_id,
            queue=queue,
            task_id=task_id,
            priority=priority,
            waiting=waiting,
            watch=False,  # `_call` waits for it and records its end with the step's
        )
        return task_id

    async def _cancel_task(self, task_id: str) -> None:
        try:
            await task_runs.cancel(self.services, task_id, self.run.owner_id)
        except (task_runs.TaskAlreadyFinished, task_runs.TaskNotFound):
            pass
        except Exception as exc:
            log.warning("could not cancel step task", task_id=task_id, error=repr(exc))


async def _all_or_nothing(
    calls: list[Coroutine[Any, Any, LLMGenerateOutput]],
) -> list[LLMGenerateOutput]:
    """Run calls in parallel; on the first failure cancel the rest (revoking their tasks)."""
    tasks = [asyncio.create_task(c) for c in calls]
    try:
        _, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        failed = next(
            (t for t in tasks if t.done() and not t.cancelled() and t.exception() is not None),
            None,
        )
        if failed is not None:
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
            raise failed.exception()  # type: ignore[misc]
        return [t.result() for t in tasks]
    except asyncio.CancelledError:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise
