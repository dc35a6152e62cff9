"""Starting and stopping the worker's session host, and consuming the worker's own queue.

At ``celeryd_after_setup`` (main process, before the pool forks), a python_q worker whose
sandbox self-test passed with bwrap starts ``corral.tasks.sessions.host`` with
``PR_SET_PDEATHSIG`` (it dies with the worker, even on SIGKILL) and adds
``session_queue(<worker name>)`` to the queues it consumes: the app routes a session's calls
there. The pool children inherit the socket path.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import structlog
from celery.signals import celeryd_after_setup, worker_shutdown

from corral.task_schemas import Queue
from corral.task_schemas.sessions import session_queue

log = structlog.get_logger(__name__)
PR_SET_PDEATHSIG = 1
_host: dict[str, Any] = {"proc": None, "socket": None, "worker": None}


def socket_path() -> Path | None:
    path = _host.get("socket")
    return path if isinstance(path, Path) else None


def worker_name() -> str | None:
    name = _host.get("worker")
    return name if isinstance(name, str) else None


def _die_with_parent() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def start_host(worker: str, socket_dir: Path | None, timeout_s: float = 30.0) -> Path:
    """Start the host and wait for its socket; raises ``RuntimeError`` if it does not come up."""
    if socket_dir is not None:
        socket_dir.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix="corral-session-host-", dir=socket_dir))  # 0700
    path = folder / "host.sock"
    proc = subprocess.Popen(
        [sys.executable, "-m", "corral.tasks.sessions.host", "--socket", str(path),
         "--worker", worker],
        preexec_fn=_die_with_parent,
    )  # fmt: skip
    deadline = time.monotonic() + timeout_s
    while not path.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            raise RuntimeError(f"the session host did not start (exit {proc.poll()})")
        time.sleep(0.05)
    _host.update(proc=proc, socket=path, worker=worker)
    return path


@celeryd_after_setup.connect
def _start_sessions(sender: str, instance: Any, **_: Any) -> None:
    from corral.tasks.celery_app import settings
    from corral.tasks.python_tool_task import _state

    queues = instance.app.amqp.queues
    consumed = list(getattr(queues, "consume_from", None) or queues)
    if Queue.PYTHON.value not in consumed or not settings.sessions.enabled:
        return
    if _state.get("backend") != "bwrap":
        log.warning("no research sessions on this worker: they need the bwrap sandbox",
                    backend=_state.get("backend"))  # fmt: skip
        return
    try:
        path = start_host(sender, settings.sessions.socket_dir)
    except RuntimeError as exc:
        log.error("no research sessions on this worker", reason=str(exc))
        return
    queues.select_add(session_queue(sender))
    log.info("session host started", socket=str(path), queue=session_queue(sender))


@worker_shutdown.connect
def _stop_sessions(**_: Any) -> None:
    proc = _host.get("proc")
    if isinstance(proc, subprocess.Popen) and proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
    path = socket_path()
    if path is not None:
        with contextlib.suppress(OSError):
            path.unlink()
            os.rmdir(path.parent)
