"""Starting and stopping the worker's session host, and consuming the worker's own queue.

At ``celeryd_after_setup`` (main process, before the pool forks), a python_q worker whose
sandbox self-test passed with bwrap starts ``corral.tasks.sessions.host`` with
``PR_SET_PDEATHSIG`` (it dies with the worker, even on SIGKILL) and adds
``session_queue(<worker name>)`` to the queues it consumes: the app routes a session's calls
there. The pool children inherit the socket path.

A supervisor thread in the worker's main process restarts the host if it dies (a crash, the
OOM killer, a stray SIGKILL), on the same socket path, with a short backoff. Its sessions'
sandboxes die with it (``--die-with-parent``); the next call of each restores it from its
snapshot, with the usual ``session restored on <worker>`` note. A host that exits 0 (SIGTERM or
SIGINT, usually sent to the whole process group) is restarted only if the worker is not
shutting down two seconds later. The supervisor starts every
host after the first itself and never exits, so ``PR_SET_PDEATHSIG`` (bound to the thread that
started the process) keeps its meaning.
"""

from __future__ import annotations

import contextlib
import ctypes
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import structlog
from celery.signals import celeryd_after_setup, worker_shutdown, worker_shutting_down

from corral.task_schemas import Queue
from corral.task_schemas.sessions import session_queue

log = structlog.get_logger(__name__)
PR_SET_PDEATHSIG = 1
RESTART_BACKOFF_S = (0.0, 0.5, 1.0, 2.0, 5.0)  # then every 5 s
STABLE_S = 30.0  # a host that ran this long resets the backoff
# A host that exits 0 was stopped by SIGTERM or SIGINT, most often sent to the worker's whole
# process group (make up, Ctrl-C in a terminal): the worker's own shutdown is a moment behind.
STOPPED_GRACE_S = 2.0
_host: dict[str, Any] = {"proc": None, "socket": None, "worker": None, "restarts": 0}
_stopping = threading.Event()


def socket_path() -> Path | None:
    path = _host.get("socket")
    return path if isinstance(path, Path) else None


def worker_name() -> str | None:
    name = _host.get("worker")
    return name if isinstance(name, str) else None


def _die_with_parent() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def _spawn_host(worker: str, path: Path, timeout_s: float) -> subprocess.Popen[bytes]:
    """Start the host process and wait for its socket; ``RuntimeError`` if it does not come up."""
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
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
            proc.wait()
            raise RuntimeError(f"the session host did not start (exit {proc.poll()})")
        time.sleep(0.05)
    return proc


def start_host(worker: str, socket_dir: Path | None, timeout_s: float = 30.0) -> Path:
    """Start the host, then supervise it; raises ``RuntimeError`` if it does not come up."""
    if socket_dir is not None:
        socket_dir.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix="corral-session-host-", dir=socket_dir))  # 0700
    path = folder / "host.sock"
    proc = _spawn_host(worker, path, timeout_s)
    _host.update(proc=proc, socket=path, worker=worker)
    threading.Thread(
        target=_supervise, args=(worker, path, timeout_s), name="session-host-supervisor",
        daemon=True,
    ).start()  # fmt: skip
    return path


def _supervise(worker: str, path: Path, timeout_s: float) -> None:
    """Restart the host whenever it exits, until the worker shuts down."""
    failures = 0
    while not _stopping.is_set():
        proc = _host["proc"]
        started = time.monotonic()
        code = proc.wait()
        if _stopping.is_set() or (code == 0 and _stopping.wait(STOPPED_GRACE_S)):
            return
        if time.monotonic() - started > STABLE_S:
            failures = 0
        delay = RESTART_BACKOFF_S[min(failures, len(RESTART_BACKOFF_S) - 1)]
        log.error("the session host exited; restarting it", exit_code=code, worker=worker,
                  in_s=delay)  # fmt: skip
        while not _stopping.wait(delay):
            try:
                _host["proc"] = _spawn_host(worker, path, timeout_s)
            except (RuntimeError, OSError) as exc:
                failures += 1
                delay = RESTART_BACKOFF_S[min(failures, len(RESTART_BACKOFF_S) - 1)] or 0.5
                log.error("could not restart the session host", reason=str(exc), in_s=delay)
                continue
            failures += 1
            _host["restarts"] = int(_host["restarts"]) + 1
            log.info("session host restarted", worker=worker, restarts=_host["restarts"])
            break


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


@worker_shutting_down.connect
def _shutting_down(**_: Any) -> None:
    """Sent from the worker's signal handler, before the pool drains: no host restarts now."""
    _stopping.set()


@worker_shutdown.connect
def _stop_sessions(**_: Any) -> None:
    _stopping.set()
    proc = _host.get("proc")
    if isinstance(proc, subprocess.Popen) and proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
    path = socket_path()
    if path is not None:  # the folder start_host made for this host alone
        shutil.rmtree(path.parent, ignore_errors=True)
