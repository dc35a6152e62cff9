"""``GET /api/tools/results/{task_id}``: re-attach to a tool task after an invoke timed out.

The web UI invokes with a short wait, follows the task's events, then reads the outcome here,
shaped exactly like invoke's (figures as fresh URLs)."""

from __future__ import annotations

import httpx

from tests.conftest import DEV_SECRET, LiveApp
from tests.support.assistant import dev_token


async def test_reattach_after_an_invoke_timed_out(api: httpx.AsyncClient) -> None:
    started = await api.post(
        "/api/tools/echo/invoke",
        json={"arguments": {"payload": {"n": 7}, "sleep_s": 1.5, "steps": 3}, "timeout_s": 0.2},
    )
    assert started.status_code == 200, started.text
    assert started.json()["status"] == "timeout"
    task_id = started.json()["task_id"]

    still = await api.get(f"/api/tools/results/{task_id}")
    assert still.status_code == 200
    assert still.json()["status"] == "timeout"
    assert still.json()["error"]["type"] == "Timeout"

    done = await api.get(f"/api/tools/results/{task_id}", params={"timeout_s": 20})
    assert done.status_code == 200, done.text
    body = done.json()
    assert body["status"] == "done"
    assert body["task_id"] == task_id
    assert body["output"]["payload"] == {"n": 7}
    assert body["output"]["steps"] == 3

    again = await api.get(f"/api/tools/results/{task_id}")
    assert again.json()["status"] == "done", "a finished task answers at once, any number of times"


async def test_reattach_reports_typed_errors(api: httpx.AsyncClient) -> None:
    started = await api.post(
        "/api/tools/fail/invoke",
        json={"arguments": {"message": "on purpose", "sleep_s": 0.5}, "timeout_s": 0.1},
    )
    task_id = started.json()["task_id"]
    failed = await api.get(f"/api/tools/results/{task_id}", params={"timeout_s": 20})
    assert failed.json()["status"] == "error"
    assert failed.json()["error"]["type"] == "DeliberateFailure"
    assert "on purpose" in failed.json()["error"]["message"]


async def test_reattach_is_owner_only_and_checks_input(
    live_app: LiveApp, api: httpx.AsyncClient
) -> None:
    started = await api.post("/api/tools/echo/invoke", json={"arguments": {"payload": 1}})
    task_id = started.json()["task_id"]
    other = {"Authorization": f"Bearer {dev_token('someone-else', DEV_SECRET)}"}
    async with httpx.AsyncClient(base_url=live_app.url, headers=other, timeout=30) as stranger:
        hidden = await stranger.get(f"/api/tools/results/{task_id}")
    assert hidden.status_code == 404, "another user's task reads as missing"
    missing = await api.get("/api/tools/results/no-such-task")
    assert missing.status_code == 404
    assert "no-such-task" in missing.json()["detail"]
    too_long = await api.get(f"/api/tools/results/{task_id}", params={"timeout_s": 600})
    assert too_long.status_code == 422
    async with httpx.AsyncClient(base_url=live_app.url, timeout=30) as nobody:
        anonymous = await nobody.get(f"/api/tools/results/{task_id}")
    assert anonymous.status_code == 401
