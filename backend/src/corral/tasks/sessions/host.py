"""The session host: one process per python_q worker that holds its sessions.

Started by the worker's main process (``lifecycle.py``) before the pool forks, and killed with
it (``PR_SET_PDEATHSIG``); every sandbox it starts dies with it (``--die-with-parent``). Pool
children running ``session.run`` talk to it over a Unix socket (0700 directory), one JSON line
each way. It keeps the warm pool, the live sessions (one call at a time each, LRU cap, idle
eviction), snapshots after every call, restores from the snapshot a call names when the session
is not in memory, and refreshes the worker's lease in Redis so the app can tell it is alive.

    python -m corral.tasks.sessions.host --socket PATH --worker NAME
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Any

import redis
import structlog

from corral.task_schemas.sessions import live_sessions_key, snapshot_seq, worker_lease_key
from corral.tasks.logging_setup import configure_logging
from corral.tasks.object_store import ObjectNotFound, ObjectStoreError, get_object_store
from corral.tasks.sandbox import SandboxFailure
from corral.tasks.sandbox.bwrap import BwrapSandbox
from corral.tasks.sandbox.settings import SandboxLimits
from corral.tasks.sessions import snapshot as snapshots
from corral.tasks.sessions.kernel import LiveSession
from corral.tasks.sessions.zygote import SandboxGone, Spawner, WarmPool, ZygoteFactory
from corral.tasks.settings import TasksSettings

log = structlog.get_logger(__name__)
MAX_REQUEST = 16 << 20
ORDER_WAIT_S = 10.0  # a call waits this long for the calls numbered before it


class CallError(Exception):
    def __init__(self, error_type: str, message: str) -> None:
        super().__init__(message)
        self.error_type = error_type


class SessionHost:
    def __init__(self, settings: TasksSettings, worker: str) -> None:
        self.settings = settings
        self.conf = settings.sessions
        self.worker = worker
        self.sandbox = BwrapSandbox(settings.sandbox)
        self.work_dir = Path(settings.sandbox.work_dir or "/tmp") / f"corral-sessions-{os.getpid()}"  # noqa: S108
        self.factory = ZygoteFactory(self.sandbox, self.conf, Spawner(), self.work_dir)
        with contextlib.suppress(SandboxFailure, OSError):
            if swept := self.factory.sweep_stale_cgroups():
                log.info("removed stale session cgroups", count=swept)
        self.pool = WarmPool(self.factory, self.conf.warm_pool)
        self.store = get_object_store(settings.storage)
        self.redis = redis.Redis.from_url(settings.redis.streams_url, socket_timeout=5)
        self.sessions: dict[str, LiveSession] = {}
        self.locks: dict[str, threading.Condition] = {}
        self.guard = threading.Lock()
        self.stopped = threading.Event()

    # -- bookkeeping ------------------------------------------------------------------------

    def session_lock(self, session_id: str) -> threading.Condition:
        """One call at a time per session; waiting calls are woken when one finishes."""
        with self.guard:
            return self.locks.setdefault(session_id, threading.Condition(threading.Lock()))

    def _wait_turn(self, cond: threading.Condition, session_id: str, seq: int) -> None:
        """Calls sent together may arrive out of order: let the earlier numbers run first."""
        deadline = time.monotonic() + ORDER_WAIT_S
        while True:
            with self.guard:
                session = self.sessions.get(session_id)
            left = deadline - time.monotonic()
            if session is None or session.seq >= seq - 1 or left <= 0:
                return
            cond.wait(left)

    def heartbeat(self) -> None:
        ttl_ms = int(self.conf.lease_ttl_s * 1000)
        with self.guard:
            live = list(self.sessions)
        pipe = self.redis.pipeline(transaction=True)
        pipe.set(worker_lease_key(self.worker), json.dumps({"pid": os.getpid()}), px=ttl_ms)
        pipe.delete(live_sessions_key(self.worker))
        if live:
            pipe.sadd(live_sessions_key(self.worker), *live)
            pipe.pexpire(live_sessions_key(self.worker), ttl_ms)
        pipe.execute()

    def _announce(self) -> None:
        """List a session as live now, not at the next heartbeat (a ``GET`` right after its
        first call would say ``suspended``)."""
        try:
            self.heartbeat()
        except redis.RedisError as exc:
            log.warning("session lease refresh failed", error=str(exc))

    def keep_lease(self) -> None:
        """Its own thread: nothing else (an eviction killing a sandbox) may delay the lease."""
        while not self.stopped.wait(self.conf.heartbeat_s):
            try:
                self.heartbeat()
            except redis.RedisError as exc:
                log.warning("session lease refresh failed", error=str(exc))

    def housekeeping(self) -> None:
        while not self.stopped.wait(self.conf.heartbeat_s):
            now = time.monotonic()
            with self.guard:
                idle = [
                    s for s in self.sessions.values() if now - s.last_used > self.conf.idle_evict_s
                ]
            for session in idle:
                self.evict(session.session_id, "idle")

    def evict(self, session_id: str, why: str) -> bool:
        """Drop a session from memory; its last snapshot (taken after every call) remains."""
        lock = self.session_lock(session_id)
        if not lock.acquire(timeout=0 if why == "lru" else 30):
            return False
        try:
            with self.guard:
                session = self.sessions.pop(session_id, None)
            if session is None:
                return False
            session.close()
            log.info("session evicted", session_id=session_id, reason=why)
            return True
        finally:
            lock.release()

    def make_room(self) -> None:
        with self.guard:
            over = len(self.sessions) - self.conf.max_sessions + 1
            lru = sorted(self.sessions.values(), key=lambda s: s.last_used)
        for session in lru:
            if over <= 0:
                break
            if self.evict(session.session_id, "lru"):
                over -= 1

    # -- calls ------------------------------------------------------------------------------

    def _new_session(self, req: dict[str, Any], memory_mb: int) -> tuple[LiveSession, bool]:
        self.make_room()
        try:
            zygote, warm = self.pool.take()
        except SandboxFailure as exc:
            raise CallError("SandboxError", f"could not start a session sandbox: {exc}") from exc
        session = LiveSession(req["session_id"], req["owner_id"], zygote, memory_mb)
        with self.guard:
            self.sessions[session.session_id] = session
        return session, warm

    def _restore(self, session: LiveSession, key: str, notes: list[str]) -> None:
        max_bytes = self.conf.max_snapshot_mb << 20
        try:
            snap = snapshots.load(self.store, key, max_bytes)
        except ObjectNotFound:
            notes.append("the session's snapshot is gone; it starts empty")
            return
        except ObjectStoreError as exc:
            raise CallError("SessionRestoreFailed", f"could not read the snapshot: {exc}") from exc
        answer = session.restore(snap, self.conf.snapshot_timeout_s)
        session.snapshot_key = key
        notes.append(f"session restored on {self.worker}")
        if not answer.get("ok"):
            notes.append(
                f"the snapshot could not be loaded ({answer.get('reason')}); replayed "
                f"{answer.get('replayed', 0)} recorded cells instead"
            )
        if snap.unpicklable:
            notes.append("not restored (could not be pickled): " + ", ".join(snap.unpicklable))

    def _fetch_inputs(self, session: LiveSession, req: dict[str, Any]) -> None:
        owner = session.owner_id
        max_bytes = self.settings.sandbox.input_max_mb << 20
        for ref in req.get("input_files") or []:
            key, name = str(ref["key"]), str(ref["name"])
            if name in session.inputs:
                continue
            if not key.startswith(f"{owner}/"):
                raise CallError("InputFileNotFound", f"input file {key}: not found")
            path = session.input_path(name)
            try:
                self.store.download_to(key, path, max_bytes)
            except ObjectNotFound as exc:
                raise CallError("InputFileNotFound", f"input file {key}: not found") from exc
            except ObjectStoreError as exc:
                raise CallError("InputFileNotFound", f"input file {key}: {exc}") from exc
            path.chmod(0o444)
            session.inputs.add(name)

    def run(self, req: dict[str, Any]) -> dict[str, Any]:
        session_id = req["session_id"]
        limits = SandboxLimits.model_validate(req["limits"])
        cond = self.session_lock(session_id)
        with cond:
            self._wait_turn(cond, session_id, int(req["seq"]))
            try:
                return self._run_locked(req, session_id, limits)
            finally:
                cond.notify_all()

    def _run_locked(
        self, req: dict[str, Any], session_id: str, limits: SandboxLimits
    ) -> dict[str, Any]:
        started = time.monotonic()
        notes: list[str] = []
        restored = warm = False
        with self.guard:
            session = self.sessions.get(session_id)
        if session is not None and session.owner_id != req["owner_id"]:
            raise CallError("SessionNotFound", "no such session")
        if session is not None and not session.zygote.alive:
            self._drop(session_id)
            session = None
        if session is not None and req.get("restart"):
            if session.kill_kernel():
                session.cells, session.cells_bytes, session.snapshot_key = [], 0, None
            else:  # the sandbox had to go: a new one (restart never restores)
                self._drop(session_id)
                session = None
        key = req.get("snapshot_key")
        if key and not snapshots.key_belongs(key, req["owner_id"], session_id):
            key = None
        if session is not None and key and snapshot_seq(key) > snapshot_seq(session.snapshot_key):
            # The app recorded a newer snapshot (another worker ran a call): memory is stale.
            # An older one means the app has not recorded this memory's last call yet (its
            # caller stopped waiting): memory is the newer state, and is kept.
            self._drop(session_id)
            session = None
        if session is not None and req["seq"] <= session.seq:
            raise CallError(
                "StaleSessionCall", f"call {req['seq']} was already run in this session"
            )
        forked = False
        if session is not None:
            try:
                forked = session.ensure_kernel(self.conf.start_timeout_s)
            except SandboxGone:
                # The sandbox died under the fork (e.g. a fork bomb's leftovers still held the
                # process limit): a fresh sandbox, restored like any lost session.
                log.warning("session sandbox gone at fork; starting a new one", session=session_id)
                self._drop(session_id)
                session = None
        if session is None:
            session, warm = self._new_session(req, limits.memory_mb)
            self._announce()
            session.ensure_kernel(self.conf.start_timeout_s)
            if key and not req.get("restart"):
                self._restore(session, key, notes)
                restored = True
        elif forked and session.snapshot_key and not req.get("restart"):
            # The kernel died in an earlier call: same sandbox, fresh fork, last snapshot.
            self._restore(session, session.snapshot_key, notes)
            restored = True
        if restored and req["seq"] <= session.seq:
            raise CallError("StaleSessionCall", f"call {req['seq']} is older than the snapshot")
        session.seq = max(session.seq, req["seq"])
        self._fetch_inputs(session, req)
        setup_s = time.monotonic() - started
        outcome = session.run(req["code"], limits, tuple(req["formats"]), Path(req["output_dir"]))
        result = outcome.result
        snapshot_key, unpicklable = session.snapshot_key, session.unpicklable
        if outcome.kernel_lost:
            notes.append(
                "the session's process died during this call; the next call restores the "
                "state of the last snapshot"
            )
            if outcome.sandbox_lost:
                self._drop(session_id)
        else:
            if result.error is None:
                session.record_cell(req["code"], self.conf.max_cells_kb << 10)
            snapshot_key, unpicklable = self._snapshot(session, notes)
        return {
            "ok": True,
            "worker": self.worker,
            "stdout": result.stdout,
            "stderr": result.stderr,
            "stdout_truncated": result.stdout_truncated,
            "stderr_truncated": result.stderr_truncated,
            "last_expr": result.last_expr_repr,
            "error": None if result.error is None else {
                "type": result.error.type, "message": result.error.message,
                "line": result.error.line,
            },
            "files": [str(p) for p in result.output_files],
            "notes": [*notes, *result.notes],
            "restored": restored,
            "lost": outcome.kernel_lost,
            "warm": warm,
            "setup_s": setup_s,
            "snapshot_key": snapshot_key,
            "unpicklable": unpicklable,
            "variables": outcome.variables,
            "cpu_s": outcome.cpu_s,
            "duration_s": time.monotonic() - started,
        }  # fmt: skip

    def _drop(self, session_id: str) -> None:
        with self.guard:
            session = self.sessions.pop(session_id, None)
        if session is not None:
            session.close()

    def _snapshot(self, session: LiveSession, notes: list[str]) -> tuple[str | None, list[str]]:
        try:
            header, blob = session.take_snapshot(self.conf.snapshot_timeout_s)
        except (SandboxFailure, SandboxGone) as exc:
            notes.append(f"no snapshot after this call: {exc}")
            return session.snapshot_key, session.unpicklable
        unpicklable = [str(n) for n in header.get("unpicklable") or []]
        if not header.get("ok"):
            notes.append(f"no snapshot after this call: {header.get('reason')}")
            return session.snapshot_key, unpicklable
        snap = snapshots.Snapshot(
            seq=session.seq,
            cells=session.cells if session.replayable else [],
            blob=blob,
            unpicklable=unpicklable,
            names=[str(n) for n in header.get("names") or []],
        )
        try:
            key = snapshots.save(self.store, session.owner_id, session.session_id, snap)
        except ObjectStoreError as exc:
            notes.append(f"no snapshot after this call: {exc}")
            return session.snapshot_key, unpicklable
        previous, session.snapshot_key, session.unpicklable = session.snapshot_key, key, unpicklable
        if previous and previous != key:
            with contextlib.suppress(ObjectStoreError):
                self.store.delete(previous)
        if unpicklable:
            notes.append(
                "not saved in the snapshot (could not be pickled): " + ", ".join(unpicklable)
            )
        return key, unpicklable

    def close_session(self, req: dict[str, Any]) -> dict[str, Any]:
        session_id = req["session_id"]
        with self.guard:
            session = self.sessions.get(session_id)
        if session is None or session.owner_id != req["owner_id"]:
            return {"ok": True, "was_live": False, "worker": self.worker}
        return {"ok": True, "was_live": self.evict(session_id, "closed"), "worker": self.worker}

    def status(self) -> dict[str, Any]:
        with self.guard:
            live = {sid: s.zygote.kernel_pid for sid, s in self.sessions.items()}
            pids = {sid: s.zygote.proc.pid for sid, s in self.sessions.items()}
        return {"ok": True, "worker": self.worker, "live": live, "sandbox_pids": pids,
                "warm": self.pool.ready_count()}  # fmt: skip

    # -- serving ----------------------------------------------------------------------------

    def handle(self, conn: socket.socket) -> None:
        with conn, conn.makefile("rb") as stream:  # answered with sendall: nothing buffered
            line = stream.readline(MAX_REQUEST)
            output_dir: str | None = None
            try:
                req = json.loads(line)
                op = req.get("op")
                if op == "run":
                    output_dir = req["output_dir"]
                    answer = self.run(req)
                elif op == "close":
                    answer = self.close_session(req)
                elif op == "status":
                    answer = self.status()
                else:
                    answer = {"ok": False, "error_type": "BadRequest", "message": f"op {op!r}"}
            except CallError as exc:
                answer = {"ok": False, "error_type": exc.error_type, "message": str(exc)}
            except (SandboxFailure, ValueError, KeyError) as exc:
                log.exception("session call failed")
                answer = {"ok": False, "error_type": "SandboxError", "message": str(exc)}
            try:
                conn.sendall(json.dumps(answer).encode() + b"\n")
            except OSError:
                # The caller is gone (its task was cancelled or its process killed): nobody is
                # left to upload the files this call wrote, or to remove them.
                if output_dir:
                    shutil.rmtree(output_dir, ignore_errors=True)

    def serve(self, path: Path) -> None:
        server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        server.bind(str(path))
        server.listen(64)
        self.heartbeat()
        threading.Thread(target=self.keep_lease, name="lease", daemon=True).start()
        threading.Thread(target=self.housekeeping, name="housekeeping", daemon=True).start()
        log.info("session host ready", worker=self.worker, socket=str(path))
        while True:
            conn, _ = server.accept()
            threading.Thread(target=self.handle, args=(conn,), daemon=True).start()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m corral.tasks.sessions.host")
    parser.add_argument("--socket", type=Path, required=True)
    parser.add_argument("--worker", required=True)
    args = parser.parse_args(argv)
    settings = TasksSettings()
    configure_logging(settings.log_level, json_logs=settings.log_json)
    host = SessionHost(settings, args.worker)
    for signum in (signal.SIGTERM, signal.SIGINT):  # run the cleanup below, exit 0
        signal.signal(signum, lambda *_: sys.exit(0))
    try:
        host.serve(args.socket)
    finally:
        host.pool.close()
        with host.guard:
            sessions = list(host.sessions.values())
        for session in sessions:
            session.close()
        with contextlib.suppress(redis.RedisError):
            host.redis.delete(worker_lease_key(args.worker), live_sessions_key(args.worker))
    return 0


if __name__ == "__main__":
    sys.exit(main())
