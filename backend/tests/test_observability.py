"""Issue 15: one trace from the HTTP request to the sandbox, /metrics that move, the ops view.

A private stack (its own Redis, a python_q and a circuit_q worker, an app in this process), all
exporting spans to one JSON-lines file (``exporter=file``), which the test reads back.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.support.fake_openai import FakeOpenAI, Reply
from tests.support.procs import (
    UvicornThread,
    Worker,
    env_vars,
    start_redis,
    start_worker,
    wait_until,
    wait_workers_ready,
)
from tests.support.sandbox import as_sandbox_user, python_worker_env, shared_dir

pytestmark = pytest.mark.timeout(300)  # a private stack of three workers starts first


@dataclass
class TracedStack:
    url: str
    headers: dict[str, str]
    spans_file: Path
    workers: dict[str, Worker]
    redis_url: str

    def spans(self) -> list[dict[str, object]]:
        if not self.spans_file.exists():
            return []
        return [json.loads(line) for line in self.spans_file.read_text().splitlines() if line]


@pytest.fixture(scope="module")
def traced_stack(stack_env: dict[str, str], database_url: str) -> Iterator[TracedStack]:
    from corral.app.auth.service import issue_dev_token
    from corral.app.main import create_app
    from corral.app.settings import AppSettings
    from corral.telemetry import TelemetrySettings, setup_tracing

    redis = start_redis()
    spans_dir = shared_dir("corral-spans-")
    spans_file = spans_dir / "spans.jsonl"
    spans_file.touch()
    spans_file.chmod(0o666)
    env = {
        **stack_env,
        "TASKS_REDIS__URL": redis.url,
        "CORRAL_REDIS__URL": redis.url,
        "TASKS_TELEMETRY__EXPORTER": "file",
        "TASKS_TELEMETRY__FILE_PATH": str(spans_file),
        "CORRAL_TELEMETRY__EXPORTER": "file",
        "CORRAL_TELEMETRY__FILE_PATH": str(spans_file),
        "CORRAL_ADMIN_USER_IDS": '["dev-user"]',
    }
    log_dir = Path(shared_dir("corral-obs-logs-"))
    workers = {
        "python_q": start_worker(
            ("python_q",),
            {**env, **python_worker_env()},
            name="python_q@obs",
            log_dir=log_dir,
            wrap=as_sandbox_user(),
        ),
        "circuit_q": start_worker(("circuit_q",), env, name="circuit_q@obs", log_dir=log_dir),
        "llm_q": start_worker(("llm_q",), env, name="llm_q@obs", log_dir=log_dir),
    }
    try:
        wait_workers_ready(redis.url + "/0", list(workers.values()), timeout=150)
        with env_vars(env):
            settings = AppSettings()  # type: ignore[call-arg]
        with UvicornThread(create_app(settings)) as server:
            yield TracedStack(
                server.url,
                {"Authorization": f"Bearer {issue_dev_token(settings.auth)}"},
                spans_file,
                workers,
                redis.url,
            )
    finally:
        setup_tracing(TelemetrySettings(), "corral-app")  # exporting off again for later tests
        for w in workers.values():
            w.stop()
        redis.stop()


@pytest.fixture
async def client(traced_stack: TracedStack) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(
        base_url=traced_stack.url, headers=traced_stack.headers, timeout=60
    ) as c:
        yield c


async def test_a_tool_invoke_is_one_trace_from_request_to_sandbox(
    traced_stack: TracedStack, client: httpx.AsyncClient
) -> None:
    resp = await client.post(
        "/api/tools/run_python/invoke",
        json={"arguments": {"code": "print(sum(range(10)))"}, "timeout_s": 60},
    )
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["status"] == "done", body
    task_id = body["task_id"]

    # Every event of the task carries the one trace id.
    detail = (await client.get(f"/api/tasks/{task_id}")).json()
    trace_ids = {e["data"].get("trace_id") for e in detail["events"]}
    assert len(trace_ids) == 1, detail["events"]
    trace_id = trace_ids.pop()
    assert isinstance(trace_id, str) and re.fullmatch(r"[0-9a-f]{32}", trace_id)

    def trace_spans() -> list[dict[str, object]] | None:
        spans = [s for s in traced_stack.spans() if s["trace_id"] == trace_id]
        names = {str(s["name"]) for s in spans}
        # The run span ends (and is written) after the sandbox's spans: wait for it too.
        return spans if {"sandbox run", "upload figures", "run/python.run"} <= names else None

    spans = wait_until(trace_spans, 15, "the worker's spans in the file")
    wait_until(
        lambda: any(str(s["name"]).startswith("POST /api/tools") for s in traced_stack.spans()),
        5,
        "the request span",
    )
    spans = [s for s in traced_stack.spans() if s["trace_id"] == trace_id]
    by_name = {str(s["name"]): s for s in spans}
    names = set(by_name)
    assert {
        "task_runs insert",
        "send python.run",
        "queue wait",
        "run/python.run",
        "sandbox run",
        "upload figures",
    } <= names, names
    assert any(n.startswith("POST /api/tools/") for n in names), names
    # SQL statements (SQLAlchemy instrumentation) under the row's span.
    row = by_name["task_runs insert"]
    assert any(
        str(s["name"]).startswith("INSERT") and s["parent_id"] == row["span_id"] for s in spans
    ), names
    assert {str(s["service"]) for s in spans} == {"corral-app", "corral-worker"}
    # The worker's span hangs off the app's send span: one tree, not two traces.
    # (In this test process an earlier test may have imported the worker package, whose Celery
    # instrumentation then adds its own publish span under ours; so follow the ancestry.)
    send = by_name["send python.run"]
    by_id = {str(s["span_id"]): s for s in spans}

    def descends_from_send(span: dict[str, object]) -> bool:
        parent = by_id.get(str(span["parent_id"]))
        while parent is not None:
            if parent is send:
                return True
            parent = by_id.get(str(parent["parent_id"]))
        return False

    assert descends_from_send(by_name["run/python.run"]), spans
    assert descends_from_send(by_name["queue wait"]), spans
    assert by_name["sandbox run"]["parent_id"] == by_name["run/python.run"]["span_id"]
    # Redis commands (the redis-py instrumentation) in both processes, inside this trace: the
    # app's event writes and send, the worker's stream events and stored result.
    redis_spans = [s for s in spans if _is_redis(s)]
    assert {str(s["service"]) for s in redis_spans} == {"corral-app", "corral-worker"}, names
    # ... and never a trace of their own (the hub's blocking reads, the broker's polling).
    loose = [s for s in traced_stack.spans() if _is_redis(s) and s["parent_id"] is None]
    assert not loose, loose[:3]
    # The worker's log lines carry it too.
    log = traced_stack.workers["python_q"].log()
    assert any(trace_id in line and task_id in line for line in log.splitlines())


def _is_redis(span: dict[str, object]) -> bool:
    attributes = span["attributes"]
    assert isinstance(attributes, dict)
    return "redis" in (attributes.get("db.system"), attributes.get("db.system.name"))


def _sample(text: str, name: str, **labels: str) -> float:
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))  # exposition sorts them
    for line in text.splitlines():
        if line.startswith(f"{name}{{{want}}} ") or (not labels and line.startswith(name + " ")):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


async def test_metrics_move_as_tasks_run(
    traced_stack: TracedStack, client: httpx.AsyncClient
) -> None:
    before = (await client.get("/metrics")).text
    for _ in range(2):
        ok = await client.post(
            "/api/tools/echo/invoke", json={"arguments": {"payload": "x", "queue": "circuit_q"}}
        )
        assert ok.json()["status"] == "done", ok.text
    bad = await client.post(
        "/api/tools/fail/invoke", json={"arguments": {"message": "boom", "queue": "circuit_q"}}
    )
    assert bad.json()["status"] == "error", bad.text

    def moved() -> str | None:
        text = httpx.get(f"{traced_stack.url}/metrics", timeout=10).text
        done = _sample(text, "corral_tasks_succeeded_total", task="system.echo")
        failed = _sample(text, "corral_tasks_failed_total", task="system.fail")
        old_done = _sample(before, "corral_tasks_succeeded_total", task="system.echo")
        return text if done >= old_done + 2 and failed >= 1 else None

    text = wait_until(moved, 10, "task counters to move")
    for name in ("corral_tasks_sent_total", "corral_tasks_started_total"):
        assert _sample(text, name, task="system.echo") >= 2, name
    assert _sample(text, "corral_task_run_seconds_count", task="system.echo") >= 2
    assert _sample(text, "corral_task_queue_wait_seconds_count", task="system.echo") >= 2
    assert _sample(text, "corral_task_cpu_seconds_total", task="system.echo") > 0
    assert _sample(text, "corral_workers", queue="circuit_q") == 1
    assert _sample(text, "corral_workers", queue="python_q") == 1
    assert 'corral_queue_depth{queue="python_q"}' in text
    for name in (
        "corral_open_waits",
        "corral_stream_hub_lag_seconds",
        "corral_sse_clients",
    ):
        assert re.search(rf"^{name} ", text, re.M), name

    # The Operations view: the failure with its trace id, workers healthy.
    ops = (await client.get("/api/ops/overview")).json()
    failure = next(f for f in ops["failures"] if f["task_name"] == "system.fail")
    assert re.fullmatch(r"[0-9a-f]{32}", failure["trace_id"]), failure
    assert {w["name"] for w in ops["workers"] if w["healthy"]} >= {"python_q@obs", "circuit_q@obs"}
    assert any(q["name"] == "python_q" and q["workers"] == 1 for q in ops["queues"]), ops


async def test_flower_lists_the_tasks(
    traced_stack: TracedStack, client: httpx.AsyncClient, stack_env: dict[str, str]
) -> None:
    import os
    import subprocess
    import sys

    from tests.support.procs import free_port

    port = free_port()
    flower_log = traced_stack.spans_file.parent / "flower.log"
    env = {
        **os.environ,
        **stack_env,
        "TASKS_REDIS__URL": traced_stack.redis_url,
        "FLOWER_UNAUTHENTICATED_API": "true",
    }
    flower = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "corral.tasks.main",
            "flower",
            f"--port={port}",
            "--address=127.0.0.1",
        ],
        env=env,
        stdout=flower_log.open("wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:

        def up() -> bool:
            try:
                return httpx.get(f"{base}/healthcheck", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        wait_until(up, 30, "flower to answer")

        async def echo() -> str:
            resp = await client.post(
                "/api/tools/echo/invoke", json={"arguments": {"payload": "f", "queue": "circuit_q"}}
            )
            return str(resp.json()["task_id"])

        # Flower answers before its event receiver is connected (and tasks finished before it
        # is are not seen): send warm-up tasks until one shows up.
        def seen(task: str) -> bool:
            return task in httpx.get(f"{base}/api/tasks", timeout=5).json()

        for _ in range(12):
            warm = await echo()
            try:
                wait_until(lambda: seen(warm), 5, "flower's event receiver")  # noqa: B023
                break
            except TimeoutError:
                continue
        else:
            raise AssertionError(flower_log.read_text(errors="replace")[-3000:])
        task_id = await echo()

        def listed() -> dict[str, object] | None:
            tasks = httpx.get(f"{base}/api/tasks", timeout=5).json()
            task = tasks.get(task_id)
            return task if task and task.get("state") == "SUCCESS" else None

        task = wait_until(listed, 20, "flower to list the task")
        assert task["name"] == "system.echo"
        assert task["worker"] == "circuit_q@obs"
    finally:
        flower.terminate()
        flower.wait(10)


def _metric_names_used(text: str) -> set[str]:
    return set(re.findall(r"\b(corral_[a-z_]+)\b", text))


def test_dashboard_and_prometheus_files_use_only_real_metrics(traced_stack: TracedStack) -> None:
    """Every metric the Grafana dashboard and the Prometheus rules use exists in /metrics."""
    import yaml

    deploy = Path(__file__).resolve().parents[2] / "deploy" / "observability"
    prometheus = yaml.safe_load((deploy / "prometheus.yml").read_text())
    job = prometheus["scrape_configs"][0]
    assert job["metrics_path"] == "/metrics"
    assert job["static_configs"][0]["targets"] == ["app:8078"]
    alerts = yaml.safe_load((deploy / "alerts.yml").read_text())
    dashboard = json.loads((deploy / "grafana" / "dashboards" / "corral.json").read_text())
    exprs = [r["expr"] for g in alerts["groups"] for r in g["rules"]]
    exprs += [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    used = set().union(*(_metric_names_used(e) for e in exprs))
    assert len(used) >= 15, used

    text = httpx.get(f"{traced_stack.url}/metrics", timeout=10).text
    families = dict(re.findall(r"^# TYPE (\S+) (\S+)$", text, re.M))
    samples = {line.split("{")[0].split(" ")[0] for line in text.splitlines() if line[:1] != "#"}

    def exists(name: str) -> bool:
        # A family without samples yet (no refusal so far) still has its TYPE line.
        if name in samples or name in families:
            return True
        for suffix in ("_bucket", "_sum", "_count"):
            if name.endswith(suffix) and families.get(name.removesuffix(suffix)) == "histogram":
                return True
        return False

    missing = sorted(n for n in used if not exists(n))
    assert not missing, f"used by the dashboard/rules but not in /metrics: {missing}"
    # Provisioning points Grafana at the dashboards folder and at Prometheus.
    provider = yaml.safe_load(
        (deploy / "grafana" / "provisioning" / "dashboards" / "dashboards.yaml").read_text()
    )
    assert provider["providers"][0]["options"]["path"] == "/var/lib/grafana/dashboards"
    sources = yaml.safe_load(
        (deploy / "grafana" / "provisioning" / "datasources" / "datasources.yaml").read_text()
    )
    assert {s["uid"] for s in sources["datasources"]} >= {"prometheus", "jaeger"}


async def test_the_model_call_span_has_token_counts(
    traced_stack: TracedStack, client: httpx.AsyncClient, fake_llm: FakeOpenAI
) -> None:
    fake_llm.script("fake-primary", Reply(text="hi", prompt_tokens=12, completion_tokens=3))
    resp = await client.post(
        "/api/llm/generate", json={"prompt": "Say hi", "model": "primary", "timeout_s": 30}
    )
    assert resp.status_code == 200, resp.text
    detail = (await client.get(f"/api/tasks/{resp.json()['task_id']}")).json()
    trace_id = detail["events"][0]["data"]["trace_id"]

    def model_span() -> dict[str, object] | None:
        spans = [s for s in traced_stack.spans() if s["trace_id"] == trace_id]
        return next((s for s in spans if s["name"] == "model call"), None)

    span = wait_until(model_span, 10, "the model call span")
    attributes = span["attributes"]
    assert isinstance(attributes, dict)
    assert attributes["llm.prompt_tokens"] == 12 and attributes["llm.completion_tokens"] == 3
    # The provider's HTTP request (httpx instrumentation) is a child of the model call.
    spans = [s for s in traced_stack.spans() if s["trace_id"] == trace_id]
    assert any(s["parent_id"] == span["span_id"] for s in spans), spans
    text = httpx.get(f"{traced_stack.url}/metrics", timeout=10).text
    assert _sample(text, "corral_llm_tokens_total", model="primary", kind="prompt") >= 12
