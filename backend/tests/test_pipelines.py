"""Pipelines end to end: DAG validation, parallel steps on the real llm_q worker, skip, cancel."""

from __future__ import annotations

import asyncio
import json
import time
from datetime import datetime
from typing import Any

import httpx
import pytest

from corral.app.auth.service import issue_dev_token
from corral.app.settings import AuthSettings
from tests.conftest import DEV_SECRET, LiveApp
from tests.support.fake_openai import FakeOpenAI, RecordedRequest, Reply
from tests.support.llm_env import wait_worker_idle
from tests.support.procs import RedisServer, Worker


@pytest.fixture(autouse=True)
def _idle_llm_worker(workers: dict[str, Worker], redis_server: RedisServer) -> None:
    wait_worker_idle(redis_server.url + "/0", workers["llm_q"])


def answer(req: RecordedRequest) -> Reply:
    """Default provider: echo the prompt; prompts starting with SLOW take 0.6 s."""
    slow = req.prompt.startswith("SLOW")
    return Reply(text=f"<{req.prompt}>", delay_s=0.6 if slow else 0.0)


async def start(api: httpx.AsyncClient, steps: list[Any], **extra: Any) -> httpx.Response:
    return await api.post("/api/pipelines/runs", json={"steps": steps, **extra})


async def wait_run(api: httpx.AsyncClient, run_id: str, timeout: float = 20) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        resp = await api.get(f"/api/pipelines/runs/{run_id}")
        assert resp.status_code == 200, resp.text
        run: dict[str, Any] = resp.json()
        if run["status"] != "running":
            return run
        await asyncio.sleep(0.05)
    raise TimeoutError(f"run {run_id} still running after {timeout}s")


def steps_by_name(run: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {s["name"]: s for s in run["steps"]}


def ts(value: str) -> float:
    return datetime.fromisoformat(value).timestamp()


DIAMOND = [
    {"name": "topic", "prompt_template": "Topic of {query}"},
    {"name": "pros", "prompt_template": "SLOW pros of {topic}", "depends_on": ["topic"]},
    {
        "name": "cons",
        "prompt_template": "SLOW cons of {topic[response]}",
        "depends_on": ["topic"],
        "model": "backup",
    },
    {
        "name": "verdict",
        "prompt_template": "Weigh {pros} against {cons[response]}",
        "depends_on": ["pros", "cons"],
        "options": {"temperature": 0.2},
    },
]


async def test_diamond_runs_middle_steps_concurrently_and_last_sees_both(
    api: httpx.AsyncClient, fake_llm: FakeOpenAI
) -> None:
    fake_llm.respond_with(answer)
    resp = await start(api, DIAMOND, input={"query": "tabs vs spaces"})
    assert resp.status_code == 202, resp.text
    created = resp.json()
    assert created["status"] == "running"
    assert {s["status"] for s in created["steps"]} == {"pending"}

    run = await wait_run(api, created["run_id"])
    assert run["status"] == "succeeded", run
    steps = steps_by_name(run)
    assert all(s["status"] == "done" for s in steps.values())

    def request(prefix: str) -> RecordedRequest:
        (found,) = [r for r in fake_llm.requests() if r.prompt.startswith(prefix)]
        return found

    pros, cons, verdict = request("SLOW pros"), request("SLOW cons"), request("Weigh")
    assert pros.finished_at and cons.finished_at
    # Overlap at the provider: each started before the other finished.
    assert pros.received_at < cons.finished_at and cons.received_at < pros.finished_at
    assert cons.model == "fake-backup"
    # And in the recorded step timings.
    p, c = steps["pros"], steps["cons"]
    assert ts(p["started_at"]) < ts(c["finished_at"]) and ts(c["started_at"]) < ts(p["finished_at"])

    topic_answer = "<Topic of tabs vs spaces>"
    verdict_prompt = verdict.prompt
    assert f"<SLOW pros of {topic_answer}>" in verdict_prompt
    assert f"<SLOW cons of {topic_answer}>" in verdict_prompt
    assert verdict.body["temperature"] == 0.2
    assert steps["verdict"]["output"]["response"] == f"<{verdict_prompt}>"
    assert steps["cons"]["model"] == "backup"
    assert run["usage"]["total_tokens"] == sum(s["usage"]["total_tokens"] for s in steps.values())
    assert run["usage"]["total_tokens"] > 0


async def test_step_tasks_are_recorded_with_their_steps(
    api: httpx.AsyncClient, fake_llm: FakeOpenAI, stack_env: dict[str, str]
) -> None:
    """No tracker follows a step's task: the runner records each task's end in its step's
    save. Read straight from SQL (an API read would sync rows from the streams first)."""
    from sqlalchemy import text
    from sqlalchemy.ext.asyncio import create_async_engine

    fake_llm.respond_with(answer)
    resp = await start(api, DIAMOND, input={"query": "q"})
    assert resp.status_code == 202, resp.text
    run = await wait_run(api, resp.json()["run_id"])
    assert run["status"] == "succeeded", run
    task_ids = [t for s in run["steps"] for t in s["task_ids"]]
    assert len(task_ids) == 4
    engine = create_async_engine(stack_env["CORRAL_DATABASE__URL"])
    try:
        async with engine.connect() as conn:
            rows = (
                await conn.execute(
                    text("SELECT id, state, started_at, attempts, worker FROM task_runs"),
                )
            ).all()
    finally:
        await engine.dispose()
    found = {r.id: r for r in rows if r.id in task_ids}
    assert set(found) == set(task_ids)
    for row in found.values():
        assert row.state == "done" and row.started_at is not None, row
        assert row.attempts == 1 and row.worker, row


async def test_events_stream_step_transitions_and_resumes(
    api: httpx.AsyncClient, fake_llm: FakeOpenAI
) -> None:
    fake_llm.respond_with(answer)
    steps = [
        {"name": "one", "prompt_template": "first {query}"},
        {"name": "two", "prompt_template": "then {one}", "depends_on": ["one"]},
    ]
    run_id = (await start(api, steps, input={"query": "q"})).json()["run_id"]

    async def collect(
        headers: dict[str, str] | None = None,
    ) -> list[tuple[str, str, dict[str, Any]]]:
        out: list[tuple[str, str, dict[str, Any]]] = []
        async with api.stream(
            "GET", f"/api/pipelines/runs/{run_id}/events", headers=headers, timeout=20
        ) as resp:
            assert resp.status_code == 200
            entry_id = event = ""
            async for line in resp.aiter_lines():
                if line.startswith("id:"):
                    entry_id = line.split(":", 1)[1].strip()
                elif line.startswith("event:"):
                    event = line.split(":", 1)[1].strip()
                elif line.startswith("data:"):
                    data = json.loads(line.split(":", 1)[1])
                    out.append((entry_id, event, data))
                    if event == "run" and data.get("status") in {
                        "succeeded",
                        "failed",
                        "cancelled",
                    }:
                        break
        return out

    events = await collect()
    transitions = [(d["step"], d["status"]) for _, e, d in events if e == "step"]
    assert transitions == [
        ("one", "queued"),
        ("one", "running"),
        ("one", "done"),
        ("two", "queued"),
        ("two", "running"),
        ("two", "done"),
    ]
    assert events[0][1:] == ("run", {"run": "running"})
    assert events[-1][1] == "run" and events[-1][2]["status"] == "succeeded"

    middle = events[3][0]
    resumed = await collect({"Last-Event-ID": middle})
    assert [e[0] for e in resumed] == [e[0] for e in events[4:]]

    bad = await api.get(f"/api/pipelines/runs/{run_id}/events", headers={"Last-Event-ID": "nope"})
    assert bad.status_code == 422


async def test_cycle_is_422_naming_it(api: httpx.AsyncClient, fake_llm: FakeOpenAI) -> None:
    steps = [
        {"name": "a", "prompt_template": "x {c}", "depends_on": ["c"]},
        {"name": "b", "prompt_template": "y {a}", "depends_on": ["a"]},
        {"name": "c", "prompt_template": "z {b}", "depends_on": ["b"]},
    ]
    resp = await start(api, steps)
    assert resp.status_code == 422
    detail = resp.json()["detail"]
    assert "dependency cycle" in detail
    assert all(name in detail for name in ("a", "b", "c"))
    assert fake_llm.requests() == []


@pytest.mark.parametrize(
    ("steps", "inputs", "expected"),
    [
        (
            [{"name": "a", "prompt_template": "x", "depends_on": ["ghost"]}],
            {},
            "step a depends on unknown step 'ghost'",
        ),
        (
            [{"name": "a", "prompt_template": "x"}, {"name": "b", "prompt_template": "{a}"}],
            {},
            "references step 'a' which is not an ancestor; add it to depends_on",
        ),
        (
            [{"name": "a", "prompt_template": "{nope}"}],
            {"query": "q"},
            "{nope} is neither an input field ['query'] nor a step",
        ),
        (
            [{"name": "a", "prompt_template": "{query.__class__}"}],
            {"query": "q"},
            "attribute access is not allowed",
        ),
        ([{"name": "a", "prompt_template": "{0}"}], {}, "positional field"),
        ([{"name": "a", "prompt_template": "x {"}], {}, "literal brace"),
        (
            [
                {"name": "a", "prompt_template": "x"},
                {"name": "b", "prompt_template": "{a[respnse]}", "depends_on": ["a"]},
            ],
            {},
            "step a has no output 'respnse'",
        ),
        (
            [{"name": "a", "prompt_template": "x", "model": "gpt-ghost"}],
            {},
            "unknown model 'gpt-ghost'",
        ),
        (
            [{"name": "a", "prompt_template": "x"}, {"name": "a", "prompt_template": "y"}],
            {},
            "duplicate step name",
        ),
        ([{"name": "query", "prompt_template": "x"}], {"query": "q"}, "same name as an input"),
        ([{"name": "a", "prompt_template": "x", "depends_on": ["a"]}], {}, "depends on itself"),
        (
            [{"name": "a", "kind": "chord", "prompt_template": "x", "variants": [{}]}],
            {},
            "kind chord needs `combine`",
        ),
        ([{"name": "bad-name", "prompt_template": "x"}], {}, "string_pattern_mismatch"),
    ],
)
async def test_validation_errors_are_422_naming_the_problem(
    api: httpx.AsyncClient,
    fake_llm: FakeOpenAI,
    steps: list[dict[str, Any]],
    inputs: dict[str, Any],
    expected: str,
) -> None:
    before = len((await api.get("/api/pipelines/runs")).json())
    resp = await start(api, steps, input=inputs)
    assert resp.status_code == 422, resp.text
    assert expected in resp.text
    assert fake_llm.requests() == []
    assert len((await api.get("/api/pipelines/runs")).json()) == before


async def test_failed_step_skips_dependants_and_fails_run(
    api: httpx.AsyncClient, fake_llm: FakeOpenAI
) -> None:
    def provider(req: RecordedRequest) -> Reply:
        if req.prompt.startswith("B"):
            return Reply.fail(400, "prompt rejected by policy")
        return answer(req)

    fake_llm.respond_with(provider)
    steps = [
        {"name": "a", "prompt_template": "A"},
        {"name": "b", "prompt_template": "B {a}", "depends_on": ["a"]},
        {"name": "c", "prompt_template": "C {b}", "depends_on": ["b"]},
        {"name": "d", "prompt_template": "D {c}", "depends_on": ["c"]},
        {"name": "side", "prompt_template": "S {a}", "depends_on": ["a"]},
    ]
    run_id = (await start(api, steps)).json()["run_id"]
    run = await wait_run(api, run_id)

    assert run["status"] == "failed"
    assert "step b failed" in run["error"] and "prompt rejected by policy" in run["error"]
    s = steps_by_name(run)
    assert s["a"]["status"] == "done" and s["side"]["status"] == "done"
    assert s["b"]["status"] == "failed" and s["b"]["error"]["type"] == "ProviderRejected"
    assert s["c"]["status"] == "skipped" and "dependency b failed" in s["c"]["error"]["message"]
    assert (
        s["d"]["status"] == "skipped" and "dependency c was skipped" in s["d"]["error"]["message"]
    )
    assert not any(r.prompt.startswith(("C", "D")) for r in fake_llm.requests())


async def test_optional_failed_step_lets_dependants_run(
    api: httpx.AsyncClient, fake_llm: FakeOpenAI
) -> None:
    def provider(req: RecordedRequest) -> Reply:
        return Reply.fail(400, "nope") if req.prompt.startswith("B") else answer(req)

    fake_llm.respond_with(provider)
    steps = [
        {"name": "b", "prompt_template": "B", "optional": True},
        {"name": "c", "prompt_template": "C [{b}]", "depends_on": ["b"]},
    ]
    run = await wait_run(api, (await start(api, steps)).json()["run_id"])
    assert run["status"] == "succeeded"
    s = steps_by_name(run)
    assert s["b"]["status"] == "failed" and s["c"]["status"] == "done"
    assert s["c"]["output"]["response"] == "<C []>"


async def test_cancel_stops_the_run(api: httpx.AsyncClient, fake_llm: FakeOpenAI) -> None:
    fake_llm.respond_with(
        lambda req: Reply(text="late", delay_s=8) if req.prompt == "long" else answer(req)
    )
    steps = [
        {"name": "long", "prompt_template": "long"},
        {"name": "after", "prompt_template": "after {long}", "depends_on": ["long"]},
    ]
    run_id = (await start(api, steps)).json()["run_id"]
    fake_llm.wait_for_requests(1)

    began = time.monotonic()
    resp = await api.post(f"/api/pipelines/runs/{run_id}/cancel")
    assert resp.status_code == 200, resp.text
    assert resp.json() == {"run_id": run_id, "status": "cancelled", "cancelled_tasks": 1}
    assert time.monotonic() - began < 5

    run = (await api.get(f"/api/pipelines/runs/{run_id}")).json()
    s = steps_by_name(run)
    assert run["status"] == "cancelled"
    assert s["long"]["status"] == "cancelled" and s["after"]["status"] == "skipped"
    task_id = s["long"]["task_ids"][0]
    task = (await api.get(f"/api/tasks/{task_id}")).json()
    assert task["state"] == "cancelled"
    await asyncio.sleep(0.3)
    assert [r.prompt for r in fake_llm.requests()] == ["long"]
    again = await api.post(f"/api/pipelines/runs/{run_id}/cancel")
    assert again.status_code == 409


async def test_group_and_chord_steps(api: httpx.AsyncClient, fake_llm: FakeOpenAI) -> None:
    fake_llm.respond_with(answer)
    steps = [
        {
            "name": "ideas",
            "kind": "group",
            "prompt_template": "SLOW idea for {query}",
            "variants": [
                {"options": {"temperature": 0.1}},
                {"options": {"temperature": 1.2}},
                {"model": "backup", "prompt_template": "SLOW wild idea for {query}"},
            ],
        },
        {
            "name": "best",
            "kind": "chord",
            "prompt_template": "SLOW draft on {ideas[responses][0]}",
            "depends_on": ["ideas"],
            "variants": [{}, {"model": "third"}],
            "combine": {
                "prompt_template": "Pick one of:\n{variants}\nFirst was {variants[0]}",
                "model": "backup",
            },
        },
    ]
    run = await wait_run(api, (await start(api, steps, input={"query": "lunch"})).json()["run_id"])
    assert run["status"] == "succeeded", run
    s = steps_by_name(run)

    ideas = s["ideas"]["output"]
    assert ideas["responses"] == [
        "<SLOW idea for lunch>",
        "<SLOW idea for lunch>",
        "<SLOW wild idea for lunch>",
    ]
    assert len(s["ideas"]["task_ids"]) == 3
    group_reqs = sorted(
        (r for r in fake_llm.requests() if r.prompt.startswith(("SLOW idea", "SLOW wild"))),
        key=lambda r: r.received_at,
    )
    assert sorted(r.body.get("temperature", -1) for r in group_reqs) == [-1, 0.1, 1.2]
    # The llm_q worker runs two at a time: the first two variants overlap.
    first, second = group_reqs[:2]
    assert first.finished_at and second.received_at < first.finished_at, "variants in parallel"

    combine_req = next(r for r in fake_llm.requests() if r.prompt.startswith("Pick one of"))
    assert combine_req.model == "fake-backup"
    draft = "<SLOW draft on <SLOW idea for lunch>>"
    assert f"Variant 1:\n{draft}\n\nVariant 2:\n{draft}" in combine_req.prompt
    assert combine_req.prompt.endswith(f"First was {draft}")
    best = s["best"]["output"]
    assert best["response"] == f"<{combine_req.prompt}>" and best["responses"] == [draft, draft]
    assert len(s["best"]["task_ids"]) == 3


async def test_other_users_get_404(
    api: httpx.AsyncClient, live_app: LiveApp, fake_llm: FakeOpenAI
) -> None:
    fake_llm.respond_with(answer)
    run_id = (await start(api, [{"name": "a", "prompt_template": "A"}])).json()["run_id"]
    await wait_run(api, run_id)
    token = issue_dev_token(AuthSettings(mode="dev", dev_secret=DEV_SECRET, dev_user_id="mallory"))
    async with httpx.AsyncClient(
        base_url=live_app.url, headers={"Authorization": f"Bearer {token}"}, timeout=10
    ) as other:
        for method, path in [
            ("GET", f"/api/pipelines/runs/{run_id}"),
            ("GET", f"/api/pipelines/runs/{run_id}/events"),
            ("POST", f"/api/pipelines/runs/{run_id}/cancel"),
        ]:
            resp = await other.request(method, path)
            assert resp.status_code == 404, (method, path, resp.text)
        assert run_id not in {r["run_id"] for r in (await other.get("/api/pipelines/runs")).json()}
    assert run_id in {r["run_id"] for r in (await api.get("/api/pipelines/runs")).json()}
    assert (await api.get("/api/pipelines/runs/does-not-exist")).status_code == 404
