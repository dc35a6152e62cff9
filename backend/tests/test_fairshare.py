"""Fair share with real workers: one user's backlog never starves another (issue 13).

A private Redis, one 2-process llm_q worker and the app as a real process on its own SQLite
database, so the app can be SIGKILLed mid-backlog and restarted on the same records.
"""

from __future__ import annotations

import sqlite3
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx

from tests.support.app_process import app_process
from tests.support.db import new_sqlite_database
from tests.support.procs import start_redis, start_worker, wait_until, wait_workers_ready

SLEEP_S = 0.3  # one task's duration (the 1 s, shortened; the property is the same)
A_TASKS = 60
CAP = 2  # a 2-process worker: each user may hold both processes, nothing more


async def _submit(client: httpx.AsyncClient, i: int) -> str:
    args: dict[str, Any] = {"payload": i, "sleep_s": SLEEP_S, "queue": "llm_q"}
    resp = await client.post("/api/tools/echo/invoke", json={"arguments": args, "timeout_s": 0.01})
    assert resp.status_code == 200, resp.text
    return str(resp.json()["task_id"])


def _runs(db_path: str, ids: list[str]) -> dict[str, tuple[str, str | None, str]]:
    marks = ",".join("?" * len(ids))
    with sqlite3.connect(db_path) as conn:
        rows = conn.execute(
            f"SELECT id, state, started_at, created_at FROM task_runs WHERE id IN ({marks})",
            ids,
        ).fetchall()
    return {r[0]: (r[1], r[2], r[3]) for r in rows}


def _ts(value: str) -> float:
    return datetime.fromisoformat(value).timestamp()


async def test_backlog_of_one_user_does_not_starve_another(
    stack_env: dict[str, str], tmp_path: Path
) -> None:
    redis = start_redis()
    env = {**stack_env, "TASKS_REDIS__URL": redis.url, "CORRAL_REDIS__URL": redis.url}
    worker = start_worker(("llm_q",), env, concurrency=2, log_dir=tmp_path)
    database = new_sqlite_database(tmp_path)
    db_path = database.split("///", 1)[1]
    fair = {"CORRAL_FAIR__LLM_Q": str(CAP), "CORRAL_FAIR__SWEEP_INTERVAL_S": "0.2"}
    try:
        wait_workers_ready(redis.url + "/0", [worker])
        with app_process(env, database, tmp_path, **fair) as app:
            async with app.client("user-a") as a, app.client("user-b") as b:
                a_ids = [await _submit(a, i) for i in range(A_TASKS)]
                t0 = time.time()
                b_id = await _submit(b, 0)

                def b_started() -> bool:
                    return _runs(db_path, [b_id])[b_id][1] is not None

                wait_until(b_started, 30, "B's task to start", interval=0.05)
                _state, started, created = _runs(db_path, [b_id])[b_id]
                b_wait = _ts(started or "") - _ts(created)
                assert b_wait <= 2 * SLEEP_S + 0.3, (b_wait, time.time() - t0)

                # A's backlog is in SQL: the waiting runs are listed as such.
                listed = (await a.get("/api/tasks", params={"state": "waiting"})).json()
                assert len(listed) > A_TASKS // 2
                # A waiting run cancelled is never sent.
                resp = await a.post(f"/api/tasks/{a_ids[-1]}/cancel")
                assert resp.status_code == 200, resp.text
                app.kill()  # mid-backlog, no shutdown hook
        cancelled = a_ids.pop()
        waiting = sum(1 for s, *_ in _runs(db_path, a_ids).values() if s == "waiting")
        assert waiting > A_TASKS // 3, waiting
        # A release cut off between its commit and its send (the SIGKILL above may land there;
        # make sure one does): the row says queued, nothing went to the broker.
        with sqlite3.connect(db_path) as conn:
            cut = conn.execute(
                "SELECT id FROM task_runs WHERE owner_id = 'user-a' AND state = 'waiting'"
                " ORDER BY created_at LIMIT 1"
            ).fetchone()[0]
            conn.execute(
                "UPDATE task_runs SET state = 'queued', last_event_at = created_at WHERE id = ?",
                (cut,),
            )
            # A run fair share never held (no input kept) and whose stream is gone is not
            # fair share's to send: only the reconciler may end it.
            conn.execute(
                "INSERT INTO task_runs (id, owner_id, task_name, queue, state, pending,"
                " created_at, last_event_at, attempts, usage_recorded)"
                " SELECT 'not-held', owner_id, task_name, queue, 'queued', 'null', created_at,"
                " created_at, 0, 0 FROM task_runs WHERE id = ?",
                (cut,),
            )
        with app_process(env, database, tmp_path, **fair) as again:  # it resumes releasing

            def all_done() -> bool:
                return all(s == "done" for s, *_ in _runs(db_path, a_ids).values())

            wait_until(all_done, 60, "all of A's tasks", interval=0.2)
            # A held run's stream said so from the start, with its place, which only moved up.
            async with again.client("user-a") as a:
                late = a_ids[10]
                events = (await a.get(f"/api/tasks/{late}")).json()["events"]
        kinds = [e["type"] for e in events]
        assert kinds[0] == "waiting" and kinds[-1] == "done", kinds
        assert kinds.index("queued") > max(i for i, k in enumerate(kinds) if k == "waiting")
        places = [int(e["data"]["ahead"]) for e in events if e["type"] == "waiting"]
        assert places[0] <= 10 - CAP and len(places) > 1, places
        assert places == sorted(places, reverse=True), places
        assert {int(e["data"]["cap"]) for e in events if e["type"] == "waiting"} == {CAP}
        runs = _runs(db_path, a_ids)
        starts = [_ts(runs[i][1] or "") for i in a_ids]
        # Starts follow submission order: a task may only pass one released with it (CAP).
        by_start = sorted(range(len(a_ids)), key=lambda k: starts[k])
        assert max(abs(pos - k) for pos, k in enumerate(by_start)) < CAP, by_start
        with sqlite3.connect(db_path) as conn:  # each sent exactly once: one start apiece
            attempts = conn.execute(
                "SELECT max(attempts) FROM task_runs WHERE owner_id = 'user-a'"
            ).fetchone()[0]
        assert attempts == 1
        assert _runs(db_path, [cancelled])[cancelled][:2] == ("cancelled", None)
        assert _runs(db_path, ["not-held"])["not-held"][:2] == ("queued", None)
    finally:
        worker.stop()
        redis.stop()
