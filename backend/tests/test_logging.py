"""Worker logs are structlog JSON with task id and queue; Celery leaves the root logger alone."""

from __future__ import annotations

import json

import httpx

from tests.support.procs import Worker, wait_until


async def test_worker_logs_are_json_with_task_id_and_queue(
    api: httpx.AsyncClient, workers: dict[str, Worker]
) -> None:
    body = (
        await api.post("/api/tools/echo/invoke", json={"arguments": {"queue": "circuit_q"}})
    ).json()
    task_id = body["task_id"]
    worker = workers["circuit_q"]

    def our_lines() -> list[dict[str, object]]:
        found = []
        for line in worker.log().splitlines():
            if task_id in line and line.startswith("{"):
                found.append(json.loads(line))
        return found

    lines = wait_until(our_lines, 10, "log lines of the task")
    events = {str(line["event"]) for line in lines}
    assert "task body started" in events
    assert all(
        line["task_id"] == task_id and line["queue"] == "circuit_q"
        for line in lines
        if line["event"] in {"task body started", "task body finished"}
    )
    # Celery's own lines go through the same JSON formatter.
    non_json = [
        ln
        for ln in worker.log().splitlines()
        if ln.strip() and not ln.startswith("{") and not ln.startswith(" ")
    ]
    assert not [ln for ln in non_json if "Task " in ln and task_id in ln]
