"""``Idempotency-Key`` on ``POST /api/tools/{name}/invoke``: a retried send returns the same task.

The key lives on the SQL ``task_runs`` row (unique per user and key), not only in Redis.
"""

from __future__ import annotations

import asyncio
import uuid
from datetime import timedelta

import httpx
from sqlalchemy import update

from corral.app.db.base import utcnow
from corral.app.db.models import TaskRun
from corral.app.task_runs import service as task_runs
from corral.task_schemas import SYSTEM_ECHO, EchoInput
from tests.support.bus import running_services


def _key() -> str:
    return f"test-{uuid.uuid4()}"


async def _invoke(api: httpx.AsyncClient, key: str | None, payload: object, tool: str = "echo"):
    headers = {"Idempotency-Key": key} if key else {}
    args = {"payload": payload, "sleep_s": 0.5} if tool == "echo" else {"message": "x"}
    return await api.post(f"/api/tools/{tool}/invoke", json={"arguments": args}, headers=headers)


async def test_same_key_same_task_sent_once(api: httpx.AsyncClient) -> None:
    key = _key()
    first, second = await asyncio.gather(_invoke(api, key, "a"), _invoke(api, key, "a"))
    assert first.status_code == second.status_code == 200, (first.text, second.text)
    assert first.json()["task_id"] == second.json()["task_id"]
    assert first.json()["status"] == second.json()["status"] == "done"
    # Retried later (after it finished): still the same task, its outcome re-presented.
    third = await _invoke(api, key, "a")
    assert third.json()["task_id"] == first.json()["task_id"]
    assert third.json()["output"]["payload"] == "a"
    detail = (await api.get(f"/api/tasks/{first.json()['task_id']}")).json()
    assert [e["type"] for e in detail["events"]].count("queued") == 1  # sent once
    # Without a key, or with another key: a new task each time.
    other = await _invoke(api, _key(), "a")
    plain = await _invoke(api, None, "a")
    assert len({first.json()["task_id"], other.json()["task_id"], plain.json()["task_id"]}) == 3


async def test_many_concurrent_retries_share_one_task(api: httpx.AsyncClient) -> None:
    key = _key()
    answers = await asyncio.gather(*(_invoke(api, key, i) for i in range(8)))
    assert {a.status_code for a in answers} == {200}
    assert len({a.json()["task_id"] for a in answers}) == 1


async def test_key_reused_for_another_tool_or_malformed(api: httpx.AsyncClient) -> None:
    key = _key()
    assert (await _invoke(api, key, "a")).status_code == 200
    clash = await _invoke(api, key, None, tool="fail")
    assert clash.status_code == 409
    assert clash.json()["type"].endswith("/idempotency-key-reused")
    too_long = await _invoke(api, "k" * 201, "a")
    assert too_long.status_code == 422


async def test_key_is_per_user_and_expires_after_a_day(stack_env: dict[str, str], api) -> None:  # type: ignore[no-untyped-def]
    key = _key()
    async with running_services(stack_env) as services:
        a = await task_runs.submit(
            services, SYSTEM_ECHO, EchoInput(payload=1), owner_id="u-idem-a", idempotency_key=key
        )
        again = await task_runs.submit(
            services, SYSTEM_ECHO, EchoInput(payload=1), owner_id="u-idem-a", idempotency_key=key
        )
        b = await task_runs.submit(
            services, SYSTEM_ECHO, EchoInput(payload=1), owner_id="u-idem-b", idempotency_key=key
        )
        assert again == a and b != a
        async with services.db.session() as session:
            await session.execute(
                update(TaskRun)
                .where(TaskRun.id == a)
                .values(created_at=utcnow() - timedelta(hours=25))
            )
        later = await task_runs.submit(
            services, SYSTEM_ECHO, EchoInput(payload=1), owner_id="u-idem-a", idempotency_key=key
        )
        assert later != a
        async with services.db.session() as session:
            old = await session.get(TaskRun, a)
            new = await session.get(TaskRun, later)
        assert old is not None and old.idempotency_key is None  # released
        assert new is not None and new.idempotency_key == key
