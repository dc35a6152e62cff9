"""Pipeline failure paths around the scheduler: timeouts, runtime template errors, app
shutdown while running, and cancelling a run whose scheduler is gone."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime

import httpx
import pytest

from corral.app.main import create_app
from corral.app.pipelines import service as pipelines
from corral.app.pipelines.schemas import PipelineRun, PipelineRunRequest, StepState
from corral.app.services import Services
from corral.app.settings import AppSettings
from tests.conftest import LiveApp
from tests.support.fake_openai import FakeOpenAI, Reply
from tests.support.llm_env import wait_worker_idle
from tests.support.procs import RedisServer, UvicornThread, Worker, env_vars
from tests.test_pipelines import answer, start, steps_by_name, wait_run


@pytest.fixture(autouse=True)
def _idle_llm_worker(workers: dict[str, Worker], redis_server: RedisServer) -> None:
    wait_worker_idle(redis_server.url + "/0", workers["llm_q"])


async def test_step_timeout_fails_step_and_cancels_its_task(
    api: httpx.AsyncClient, fake_llm: FakeOpenAI
) -> None:
    fake_llm.respond_with(lambda req: Reply(text="too late", delay_s=4))
    resp = await start(api, [{"name": "slow", "prompt_template": "x"}], step_timeout_s=0.5)
    run = await wait_run(api, resp.json()["run_id"])
    assert run["status"] == "failed"
    step = steps_by_name(run)["slow"]
    assert step["status"] == "failed" and step["error"]["type"] == "Timeout"
    assert "step_timeout_s=0.5" in step["error"]["message"]
    task = (await api.get(f"/api/tasks/{step['task_ids'][0]}")).json()
    assert task["state"] == "cancelled"


async def test_runtime_template_error_fails_the_step(
    api: httpx.AsyncClient, fake_llm: FakeOpenAI
) -> None:
    """`parsed` is a valid output field, but without json_mode it is null: no [city] in it."""
    fake_llm.respond_with(answer)
    steps = [
        {"name": "a", "prompt_template": "A"},
        {"name": "b", "prompt_template": "{a[parsed][city]}", "depends_on": ["a"]},
    ]
    run = await wait_run(api, (await start(api, steps)).json()["run_id"])
    s = steps_by_name(run)
    assert run["status"] == "failed"
    assert s["b"]["status"] == "failed" and s["b"]["error"]["type"] == "TemplateError"
    assert "{a[parsed][city]}" in s["b"]["error"]["message"]
    assert s["b"]["task_ids"] == []


async def test_json_step_output_feeds_templates(
    api: httpx.AsyncClient, fake_llm: FakeOpenAI
) -> None:
    fake_llm.script("fake-primary", Reply.json({"city": "Lyon", "tags": ["food", "silk"]}))
    fake_llm.respond_with(answer)
    steps = [
        {"name": "facts", "prompt_template": "facts", "json_mode": True},
        {"name": "use", "prompt_template": "About {facts[parsed][city]}: {facts[parsed][tags]}",
         "depends_on": ["facts"]},
    ]  # fmt: skip
    run = await wait_run(api, (await start(api, steps)).json()["run_id"])
    assert run["status"] == "succeeded", run
    assert steps_by_name(run)["use"]["output"]["response"] == '<About Lyon: ["food", "silk"]>'


async def test_app_shutdown_cancels_running_runs(
    api: httpx.AsyncClient, live_app: LiveApp, stack_env: dict[str, str], fake_llm: FakeOpenAI
) -> None:
    fake_llm.respond_with(lambda req: Reply(text="late", delay_s=6))
    with env_vars(stack_env):
        settings = AppSettings()
    server = UvicornThread(create_app(settings)).__enter__()
    try:
        async with httpx.AsyncClient(base_url=server.url, headers=live_app.headers) as other:
            steps = [
                {"name": "long", "prompt_template": "long"},
                {"name": "next", "prompt_template": "{long}", "depends_on": ["long"]},
            ]
            run_id = (await other.post("/api/pipelines/runs", json={"steps": steps})).json()[
                "run_id"
            ]
        await asyncio.to_thread(fake_llm.wait_for_requests, 1)
    finally:
        began = time.monotonic()
        await asyncio.to_thread(server.__exit__, None, None, None)
    assert time.monotonic() - began < 12
    assert not server.thread.is_alive()

    run = (await api.get(f"/api/pipelines/runs/{run_id}")).json()
    assert run["status"] == "cancelled" and "app shut down" in run["error"]
    s = steps_by_name(run)
    assert s["long"]["status"] == "cancelled" and s["next"]["status"] == "skipped"
    task = (await api.get(f"/api/tasks/{s['long']['task_ids'][0]}")).json()
    assert task["state"] == "cancelled"


async def test_cancel_run_whose_scheduler_is_gone(
    api: httpx.AsyncClient, live_app: LiveApp, fake_llm: FakeOpenAI
) -> None:
    """A run left `running` by a dead app: DELETE cancels its task and records the end itself."""
    echo = await api.post(
        "/api/tools/echo/invoke",
        json={"arguments": {"sleep_s": 30, "steps": 30, "queue": "llm_q"}, "timeout_s": 0.5},
    )
    assert echo.json()["status"] == "timeout", echo.text
    task_id = echo.json()["task_id"]
    definition = PipelineRunRequest.model_validate(
        {"steps": [{"name": "orphan", "prompt_template": "x"}]}
    )
    run = PipelineRun(
        run_id=f"orphan-{time.time_ns()}",
        owner_id="dev-user",
        created_at=datetime.now(UTC),
        steps=[StepState(name="orphan", kind="generate", status="running", task_ids=[task_id])],
        definition=definition,
    )
    services: Services = live_app.server.server.config.app.state.services  # type: ignore[attr-defined]
    await pipelines.repository(services).create(run)  # in SQL, with no scheduler anywhere

    resp = await api.post(f"/api/pipelines/runs/{run.run_id}/cancel")
    assert resp.status_code == 200, resp.text
    assert resp.json() == {"run_id": run.run_id, "status": "cancelled", "cancelled_tasks": 1}
    final = (await api.get(f"/api/pipelines/runs/{run.run_id}")).json()
    assert steps_by_name(final)["orphan"]["status"] == "cancelled"

    async def task_state() -> str:
        return str((await api.get(f"/api/tasks/{task_id}")).json()["state"])

    assert await task_state() == "cancelled"
