"""``python.run``: run user code in the sandbox, upload the figures, return references.

The user's exceptions and the limits that stopped their code are normal output (``error``);
only infrastructure problems (sandbox broken, store down) fail the task. A worker that consumes
python_q self-tests its sandbox at start and refuses python_q if that fails; there is no
unsandboxed mode.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import structlog
from celery.signals import celeryd_after_setup, worker_process_init, worker_shutdown

from corral.task_schemas import (
    PYTHON_RUN,
    FigureRef,
    PythonError,
    PythonRunInput,
    PythonRunOutput,
    Queue,
)
from corral.tasks._base import TaskContext, TaskUserError, corral_task
from corral.tasks.celery_app import settings
from corral.tasks.object_store import ObjectNotFound, ObjectTooLarge, get_object_store, new_key
from corral.tasks.sandbox import (
    Sandbox,
    SandboxFailure,
    SandboxLimits,
    SandboxResult,
    SandboxUnavailable,
)
from corral.tasks.sandbox import publish as sandbox_publish
from corral.tasks.sandbox._common import content_type_of, new_run_dir
from corral.tasks.sandbox.selection import build_backend, select_backend
from corral.telemetry import tracer

log = structlog.get_logger(__name__)

EXIT_SANDBOX_UNAVAILABLE = 78  # EX_CONFIG: the worker cannot serve its only queue
_state: dict[str, Any] = {"backend": None, "sandbox": None}  # per process; set at start


class SandboxError(Exception):
    """The sandbox broke (not the user's code): the task fails with this type."""


def _consumed_queues(instance: Any) -> list[str]:
    queues = instance.app.amqp.queues
    selected = getattr(queues, "consume_from", None)  # None: every declared queue
    return list(selected if selected else queues)


def self_test_in_subprocess() -> str:
    """Self-test the configured backend in a fresh process and return the backend that works.

    A subprocess, because the worker's parent must not initialise wasmtime (it does not survive
    the prefork fork), and a broken sandbox must not take the worker down with it.
    """
    timeout = settings.sandbox.self_test_timeout_s
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "corral.tasks.sandbox.cli", "selftest"],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise SandboxUnavailable(f"sandbox self-test took longer than {timeout:g}s") from exc
    lines = proc.stdout.strip().splitlines()
    try:
        answer = json.loads(lines[-1]) if lines else {}
    except json.JSONDecodeError:
        answer = {}
    if proc.returncode != 0 or not answer.get("ok"):
        reason = answer.get("unavailable") or answer.get("failure") or proc.stderr[-2000:]
        raise SandboxUnavailable(str(reason).strip() or f"exit status {proc.returncode}")
    _state["capabilities"] = answer.get("capabilities") or {}
    return str(answer["backend"])


@celeryd_after_setup.connect
def _check_sandbox_at_start(sender: str, instance: Any, **_: Any) -> None:
    """Refuse python_q when the sandbox does not work: deselect it, or exit if it is all we do."""
    consumed = _consumed_queues(instance)
    if Queue.PYTHON.value not in consumed:
        return
    try:
        backend = self_test_in_subprocess()
    except SandboxUnavailable as exc:
        others = [q for q in consumed if q != Queue.PYTHON.value]
        log.error(
            "sandbox self-test failed: refusing python_q tasks",
            backend=settings.sandbox.backend,
            reason=str(exc),
            other_queues=others,
        )
        if not others:
            sys.stderr.write(f"python_q worker refused to start: sandbox unavailable: {exc}\n")
            sys.stderr.flush()
            os._exit(EXIT_SANDBOX_UNAVAILABLE)
        instance.app.amqp.queues.deselect(Queue.PYTHON.value)
        return
    _state["backend"] = backend
    caps = sandbox_publish.capabilities_of(backend, _state.get("capabilities"))
    log.info(
        "sandbox self-test passed",
        backend=backend,
        seccomp=caps.seccomp,
        cgroups=caps.cgroups,
        cgroup_reason=caps.cgroup_reason or None,
    )
    _state["worker_name"] = sender
    sandbox_publish.publish(settings.redis.streams_url, sender, caps)


@worker_shutdown.connect
def _withdraw_capabilities(**_: Any) -> None:
    worker = _state.get("worker_name")
    if worker:
        sandbox_publish.withdraw(settings.redis.streams_url, worker)


@worker_process_init.connect
def _init_sandbox_in_child(**_: Any) -> None:
    """Build the sandbox in the prefork child (wasm: load the compiled module here, not in the
    parent)."""
    name = _state.get("backend")
    if name is None:
        return
    sandbox = build_backend(name, settings.sandbox)
    warm = getattr(sandbox, "warm", None)
    if callable(warm):
        try:
            took = warm()
            log.info("sandbox warmed in child", backend=name, seconds=round(took, 3))
        except (SandboxUnavailable, SandboxFailure) as exc:
            log.error("sandbox warm-up failed in child", backend=name, reason=str(exc))
            return
    _state["sandbox"] = sandbox


def _sandbox() -> Sandbox:
    sandbox = _state.get("sandbox")
    if sandbox is None:
        try:
            sandbox = select_backend(settings.sandbox)
        except SandboxUnavailable as exc:
            raise SandboxError(f"the Python sandbox is unavailable: {exc}") from exc
        _state["sandbox"] = sandbox
    return sandbox


def _limits(params: PythonRunInput) -> SandboxLimits:
    conf = settings.sandbox
    overrides = params.limits.model_dump(exclude_none=True)
    return SandboxLimits.model_validate(conf.limits.model_dump() | overrides).capped_by(
        conf.max_limits
    )


def _fetch_inputs(ctx: TaskContext, params: PythonRunInput, input_dir: Path) -> None:
    if not params.input_files:
        return
    store = get_object_store(settings.storage)
    max_bytes = settings.sandbox.input_max_mb << 20
    for ref in params.input_files:
        if not ref.key.startswith(f"{ctx.owner_id}/"):
            raise TaskUserError(f"input file {ref.key}: not found", error_type="InputFileNotFound")
        try:
            store.download_to(ref.key, input_dir / ref.file_name, max_bytes)
        except ObjectNotFound as exc:
            raise TaskUserError(
                f"input file {ref.key}: not found", error_type="InputFileNotFound"
            ) from exc
        except ObjectTooLarge as exc:
            raise TaskUserError(
                f"input file {ref.key}: larger than {settings.sandbox.input_max_mb} MB",
                error_type="InputFileTooLarge",
            ) from exc
    for path in input_dir.iterdir():
        path.chmod(0o444)


def _upload_figures(ctx: TaskContext, result: SandboxResult) -> tuple[list[FigureRef], list[str]]:
    images = [(p, content_type_of(p.name)) for p in result.output_files]
    notes = [f"{p.name}: not an image, not uploaded" for p, ctype in images if ctype is None]
    figures = [(p, ctype) for p, ctype in images if ctype is not None]
    if not figures:
        return [], notes
    noun = "figure" if len(figures) == 1 else "figures"
    ctx.progress(message=f"uploading {len(figures)} {noun}")
    store = get_object_store(settings.storage)
    refs: list[FigureRef] = []
    for path, ctype in figures:
        key = new_key(ctx.owner_id, "plots")
        stored = store.put_file(key, path, ctype)
        refs.append(FigureRef(key=key, name=path.name, content_type=ctype, size=stored.size))
    return refs, notes


@corral_task(PYTHON_RUN)
def python_run(ctx: TaskContext, params: PythonRunInput) -> PythonRunOutput:
    """Fetch inputs, run the code in the sandbox, upload images it left, return references."""
    sandbox = _sandbox()
    limits = _limits(params)
    run_dir = new_run_dir(settings.sandbox.work_dir)
    try:
        input_dir, output_dir = run_dir / "input", run_dir / "output"
        input_dir.mkdir()
        output_dir.mkdir()
        _fetch_inputs(ctx, params, input_dir)
        ctx.progress(message="running code")
        try:
            with tracer().start_as_current_span("sandbox run") as span:
                span.set_attribute("sandbox.backend", type(sandbox).__name__)
                result = sandbox.run(
                    params.code,
                    input_dir=input_dir,
                    output_dir=output_dir,
                    limits=limits,
                    figure_formats=tuple(params.figure_formats),
                )
        except (SandboxFailure, SandboxUnavailable) as exc:
            raise SandboxError(f"the Python sandbox failed: {exc}") from exc
        with tracer().start_as_current_span("upload figures"):
            figures, notes = _upload_figures(ctx, result)
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)
    error = result.error
    return PythonRunOutput(
        stdout=result.stdout,
        stderr=result.stderr,
        stdout_truncated=result.stdout_truncated,
        stderr_truncated=result.stderr_truncated,
        last_expr=result.last_expr_repr,
        error=PythonError(type=error.type, message=error.message, line=error.line)
        if error is not None
        else None,
        figures=figures,
        notes=[*result.notes, *notes],
        duration_s=round(result.duration_s, 4),
        backend=sandbox.name,
    )
