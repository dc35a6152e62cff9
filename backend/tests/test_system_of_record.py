"""SQL is the system of record: emptying Redis (FLUSHALL, then a restart without data) loses no
user record, delays but does not lose work in flight, and retention is explicit.

A private stack (its own redis-server, circuit_q and llm_q workers, app, SQLite database and
object store), because FLUSHALL would wreck the shared session stack.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import tempfile
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pyarrow as pa
import pytest
import redis as redis_sync
from celery import Celery

from corral.app import clock
from corral.task_schemas import SYSTEM_PURGE, PurgeInput, PurgeOutput, message_kwargs
from tests.conftest import DEV_SECRET, STORAGE_SECRET, LiveApp, wait_sample_ready
from tests.support.circuit import wait_dataset, write_sonata
from tests.support.db import new_sqlite_database
from tests.support.fake_openai import FakeOpenAI, RecordedRequest, Reply
from tests.support.llm_env import llm_env
from tests.support.procs import (
    UvicornThread,
    Worker,
    env_vars,
    free_port,
    redis_server_binary,
    start_worker,
    wait_until,
    wait_workers_ready,
)
from tests.test_datasets import CSV, parquet_of
from tests.test_pipelines import wait_run

RETENTION_DAYS = 7


@dataclass
class Redis:
    port: int
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}"

    def start(self) -> None:
        data = tempfile.mkdtemp(prefix="corral-sor-redis-")
        self.proc = subprocess.Popen(
            [redis_server_binary(), "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", data, "--loglevel", "warning"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        client = redis_sync.Redis(port=self.port, socket_timeout=1)
        try:
            wait_until(client.ping, 10, f"redis-server on {self.port}")
        finally:
            client.close()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)

    def flushall_and_restart(self) -> None:
        """Everything in Redis goes (as on a replaced server, or a restart without its AOF)."""
        client = redis_sync.Redis(port=self.port, socket_timeout=5)
        try:
            client.flushall()
        finally:
            client.close()
        self.stop()
        self.start()


@dataclass
class Stack:
    redis: Redis
    env: dict[str, str]
    workers: dict[str, Worker]
    app: LiveApp
    objects: Path

    def start_worker(self, queue: str) -> None:
        worker = start_worker((queue,), self.env, name=f"{queue}-sor-{free_port()}@test")
        wait_workers_ready(self.redis.url + "/0", [worker])
        self.workers[queue] = worker

    def purge(self, now: datetime) -> PurgeOutput:
        """``system.purge`` on the real circuit_q worker, as beat sends it, at time ``now``."""
        celery = Celery(broker=self.redis.url + "/0", backend=self.redis.url + "/1")
        try:
            result = celery.send_task(
                SYSTEM_PURGE.name,
                kwargs=message_kwargs(PurgeInput(now=now), owner_id="system"),
                queue="circuit_q",
                priority=6,
            )
            return PurgeOutput.model_validate(result.get(timeout=60))
        finally:
            celery.close()


@pytest.fixture(scope="module")
def stack(fake_llm_server: FakeOpenAI, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    from corral.app.auth.service import issue_dev_token
    from corral.app.main import create_app
    from corral.app.settings import AppSettings

    redis = Redis(free_port())
    redis.start()
    objects = tmp_path_factory.mktemp("sor-objects")
    database = new_sqlite_database(tmp_path_factory.mktemp("sor-db"))
    port = free_port()
    env = {
        **llm_env(fake_llm_server),
        "TASKS_REDIS__URL": redis.url,
        "CORRAL_REDIS__URL": redis.url,
        "CORRAL_AUTH__MODE": "dev",
        "CORRAL_AUTH__DEV_SECRET": DEV_SECRET,
        "TASKS_STORAGE__LOCAL_DIR": str(objects),
        "CORRAL_STORAGE__LOCAL_DIR": str(objects),
        "CORRAL_STORAGE__SIGNING_SECRET": STORAGE_SECRET,
        "CORRAL_DATASETS__WORKER_BASE_URL": f"http://127.0.0.1:{port}",
        "CORRAL_DATASETS__INGEST_CHECK_INTERVAL_S": "0.5",
        "CORRAL_DATASETS__INGEST_LOST_AFTER_S": "1",
        "CORRAL_TASK_RUNS__RECONCILE_INTERVAL_S": "1",
        "CORRAL_TASK_RUNS__IDLE_S": "1",
        "CORRAL_DATABASE__URL": database,
        "CORRAL_RATE_LIMITS__CHAT": "100000/minute",
        "CORRAL_RATE_LIMITS__TOOLS": "100000/minute",
        "TASKS_RETENTION__DATABASE_URL": database,
        "TASKS_RETENTION__DATASET_DAYS": str(RETENTION_DAYS),
        "TASKS_RETENTION__PIPELINE_RUN_DAYS": str(RETENTION_DAYS),
        "TASKS_RETENTION__TASK_RUN_DAYS": str(RETENTION_DAYS),
    }
    workers: dict[str, Worker] = {}
    try:
        for queue in ("circuit_q", "llm_q"):
            workers[queue] = start_worker((queue,), env, name=f"{queue}-sor@test")
        wait_workers_ready(redis.url + "/0", list(workers.values()))
        with env_vars(env):
            settings = AppSettings()  # type: ignore[call-arg]
        with UvicornThread(create_app(settings), port=port) as server:
            app = LiveApp(server.url, issue_dev_token(settings.auth), server)
            wait_sample_ready(app)
            yield Stack(redis, env, workers, app, objects)
    finally:
        for worker in workers.values():
            worker.stop()
        redis.stop()


@pytest.fixture
async def api(stack: Stack) -> AsyncIterator[httpx.AsyncClient]:
    async with stack.app.client() as client:
        yield client


def echo(req: RecordedRequest) -> Reply:
    return Reply(text=f"<{req.prompt}>")


PIPELINE = [
    {"name": "a", "prompt_template": "A {query}"},
    {"name": "b", "prompt_template": "B {a}", "depends_on": ["a"]},
]


async def sql_count(api: httpx.AsyncClient, dataset_id: str) -> int:
    resp = await api.post(
        "/api/tools/circuit_population_analysis/invoke",
        json={
            "arguments": {"dataset_id": dataset_id, "question": "how many",
                          "sql": "SELECT count(*) AS n FROM neurons"},
            "timeout_s": 60,
        },
    )  # fmt: skip
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["status"] == "done", body
    return int(body["output"]["rows"][0][0])


async def start_run(api: httpx.AsyncClient, query: str) -> str:
    resp = await api.post(
        "/api/pipelines/runs", json={"steps": PIPELINE, "input": {"query": query}}
    )
    assert resp.status_code == 202, resp.text
    return str(resp.json()["run_id"])


async def upload(api: httpx.AsyncClient, content: bytes, name: str, **fields: str) -> str:
    resp = await api.post(
        "/api/datasets",
        files={"file": (name, content, "application/octet-stream")},
        data=fields,
    )
    assert resp.status_code == 201, resp.text
    return str(resp.json()["id"])


@pytest.mark.timeout(300)
async def test_flushall_and_restart_lose_no_record(
    api: httpx.AsyncClient, stack: Stack, fake_llm: FakeOpenAI, tmp_path: Path
) -> None:
    fake_llm.respond_with(echo)
    sonata_path = tmp_path / "nodes.h5"
    write_sonata(sonata_path)
    table = pa.table({"node_id": [1, 2, 3, 4], "layer": ["L2", "L5", "L5", "L6"]})
    datasets = {
        await upload(api, CSV, "cells.csv"): 3,
        await upload(api, parquet_of(table), "cells.parquet"): 4,
        await upload(api, sonata_path.read_bytes(), "nodes.h5", population="cortex"): 40,
    }
    for dataset_id in datasets:
        assert (await wait_dataset(api, dataset_id))["status"] == "ready"
    runs = [await start_run(api, "now")]
    with clock.shifted(-timedelta(days=3)):  # a run from 3 days ago
        old_run = await start_run(api, "then")
        runs.append(old_run)
    for run_id in runs:
        assert (await wait_run(api, run_id))["status"] == "succeeded"
    old = (await api.get(f"/api/pipelines/runs/{old_run}")).json()
    assert datetime.now(UTC) - datetime.fromisoformat(old["created_at"]) > timedelta(days=2.9)
    thread = (await api.post("/api/threads", json={"title": "kept"})).json()["id"]
    echo_task = await api.post(
        "/api/tools/echo/invoke",
        json={"arguments": {"payload": "hi", "queue": "llm_q"}, "timeout_s": 30},
    )
    assert echo_task.json()["status"] == "done", echo_task.text
    task_id = echo_task.json()["task_id"]

    # Work in flight: an upload queued while no circuit_q worker runs (its message is in Redis).
    stack.workers.pop("circuit_q").stop()
    late = await upload(api, b"a,b\n1,2\n3,4\n5,6\n", "late.csv")
    await asyncio.sleep(0.5)
    assert (await api.get(f"/api/datasets/{late}")).json()["status"] == "processing"

    await asyncio.to_thread(stack.redis.flushall_and_restart)
    await asyncio.to_thread(stack.start_worker, "circuit_q")

    # Every record is still listed.
    listed = {d["id"] for d in (await api.get("/api/datasets")).json()}
    assert set(datasets) | {late, "sample-cortical-column"} <= listed
    listed_runs = {r["run_id"]: r for r in (await api.get("/api/pipelines/runs")).json()}
    assert set(runs) <= set(listed_runs), "a run from 3 days ago is listed too"
    assert all(listed_runs[r]["steps"] == {"a": "done", "b": "done"} for r in runs)
    for run_id in runs:
        run = (await api.get(f"/api/pipelines/runs/{run_id}")).json()
        assert [s["status"] for s in run["steps"]] == ["done", "done"]
        assert run["steps"][1]["output"]["response"].startswith("<B <A ")
    assert thread in {t["id"] for t in (await api.get("/api/threads")).json()}
    assert task_id in {t["task_id"] for t in (await api.get("/api/tasks")).json()}
    # The run's live feed is gone with Redis; its events come from the record.
    async with api.stream("GET", f"/api/pipelines/runs/{runs[0]}/events", timeout=10) as resp:
        lines = [line async for line in resp.aiter_lines() if line.startswith("data:")]
    assert '"status": "succeeded"' in lines[-1]

    # ... and usable: the in-flight upload was sent again and finished; analysis works.
    assert (await wait_dataset(api, late, timeout_s=60))["status"] == "ready"
    for dataset_id, rows in {**datasets, late: 3}.items():
        assert await sql_count(api, dataset_id) == rows
    assert await sql_count(api, "sample-cortical-column") == 50_000

    # New work runs.
    new_run = await start_run(api, "after")
    assert (await wait_run(api, new_run))["status"] == "succeeded"
    fresh = await upload(api, CSV, "fresh.csv")
    assert (await wait_dataset(api, fresh))["status"] == "ready"


@pytest.mark.timeout(200)
async def test_retention_purges_records_with_their_objects_and_answers_410(
    api: httpx.AsyncClient, stack: Stack, fake_llm: FakeOpenAI
) -> None:
    fake_llm.respond_with(echo)
    dataset = await upload(api, CSV, "short-lived.csv")
    assert (await wait_dataset(api, dataset))["status"] == "ready"
    with clock.shifted(-timedelta(days=3)):
        old_run = await start_run(api, "old")
    new_run = await start_run(api, "new")
    for run_id in (old_run, new_run):
        assert (await wait_run(api, run_id))["status"] == "succeeded"
    files = sorted((stack.objects / "data" / "dev-user" / "datasets").glob(f"{dataset}*"))
    assert files, "the dataset's Parquet copy"

    now = datetime.now(UTC)
    kept = await asyncio.to_thread(stack.purge, now)  # nothing is older than 7 days yet
    assert all(k.deleted == 0 for k in kept.kinds), kept
    assert (await api.get(f"/api/pipelines/runs/{old_run}")).status_code == 200

    # Five days later the 3-day-old run is 8 days old: past retention; the other is not.
    later = await asyncio.to_thread(stack.purge, now + timedelta(days=5))
    by_kind = {k.kind: k for k in later.kinds}
    assert by_kind["pipeline_run"].deleted >= 1 and later.complete
    gone = await api.get(f"/api/pipelines/runs/{old_run}")
    assert gone.status_code == 410, gone.text
    assert gone.json()["type"] == "/errors/purged" and "retention" in gone.json()["detail"]
    assert (await api.get(f"/api/pipelines/runs/{new_run}")).status_code == 200
    assert old_run not in {r["run_id"] for r in (await api.get("/api/pipelines/runs")).json()}

    # Ten days later the dataset goes too, files and all; the shared sample never does.
    await asyncio.to_thread(stack.purge, now + timedelta(days=10))
    resp = await api.get(f"/api/datasets/{dataset}")
    assert resp.status_code == 410 and resp.json()["type"] == "/errors/purged", resp.text
    assert not any(f.exists() for f in files)
    assert (await api.get("/api/datasets/sample-cortical-column")).status_code == 200
    other = {"Authorization": f"Bearer {_token('mallory')}"}
    assert (await api.get(f"/api/datasets/{dataset}", headers=other)).status_code == 404


def _token(user: str) -> str:
    from corral.app.auth.service import issue_dev_token
    from corral.app.settings import AuthSettings

    return issue_dev_token(AuthSettings(mode="dev", dev_secret=DEV_SECRET, dev_user_id=user))  # type: ignore[arg-type]


def test_retention_defaults_to_keep() -> None:
    from corral.tasks.settings import RetentionSettings

    settings = RetentionSettings()
    assert (settings.dataset_days, settings.pipeline_run_days, settings.task_run_days) == (
        None,
        None,
        None,
    )


@pytest.mark.timeout(200)
async def test_upgrade_imports_legacy_redis_records_once(
    api: httpx.AsyncClient, stack: Stack
) -> None:
    """Records an earlier version kept only in Redis are in SQL after the app starts."""
    import uuid

    from corral.app.main import create_app
    from corral.app.settings import AppSettings
    from corral.tasks.object_store import LocalObjectStore

    dataset_id = uuid.uuid4().hex
    key = f"dev-user/datasets/{uuid.uuid4()}"
    LocalObjectStore(stack.objects).put_bytes(key, CSV, "text/csv")
    legacy_dataset = {
        "id": dataset_id, "owner_id": "dev-user", "name": "from-redis.csv", "format": "csv",
        "key": key, "size": len(CSV), "population": None, "populations": [], "row_count": 3,
        "columns": [{"name": "node_id", "type": "BIGINT"}], "sample_rows": [[0]],
        "description": None, "read_only": False, "created_at": "2026-11-01T10:00:00Z",
    }  # fmt: skip
    run_id = str(uuid.uuid4())
    legacy_run = {
        "run_id": run_id, "owner_id": "dev-user", "status": "succeeded",
        "created_at": "2026-11-30T09:00:00Z", "finished_at": "2026-11-30T09:00:05Z",
        "error": None, "usage": {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7},
        "definition": {"steps": [{"name": "a", "prompt_template": "A"}]},
        "steps": [{"name": "a", "kind": "generate", "status": "done", "task_ids": ["t-1"],
                   "output": {"response": "<A>"}, "model": "primary"}],
    }  # fmt: skip
    client = redis_sync.Redis(port=stack.redis.port, db=1)

    def write_legacy() -> None:
        client.set(f"dataset:{dataset_id}", json.dumps(legacy_dataset))
        client.zadd("owner:dev-user:datasets", {dataset_id: 1})
        client.set(f"pipeline:{run_id}:run", json.dumps(legacy_run))
        client.zadd("owner:dev-user:pipelines", {run_id: 1})

    def restart_app() -> None:  # an upgraded app starting on the same Redis and database
        with env_vars(stack.env):
            settings = AppSettings()  # type: ignore[call-arg]
        with UvicornThread(create_app(settings)):
            pass

    try:
        write_legacy()
        await asyncio.to_thread(restart_app)
        assert not client.exists(f"dataset:{dataset_id}", f"pipeline:{run_id}:run")
        write_legacy()  # the same records again (e.g. a second app imported concurrently)
        await asyncio.to_thread(restart_app)
    finally:
        client.close()

    datasets = [d for d in (await api.get("/api/datasets")).json() if d["id"] == dataset_id]
    assert len(datasets) == 1 and datasets[0]["name"] == "from-redis.csv"
    ready = await wait_dataset(api, dataset_id, timeout_s=60)  # re-ingested: a Parquet copy
    assert ready["status"] == "ready" and ready["row_count"] == 3
    assert await sql_count(api, dataset_id) == 3
    runs = [r for r in (await api.get("/api/pipelines/runs")).json() if r["run_id"] == run_id]
    assert len(runs) == 1 and runs[0]["steps"] == {"a": "done"}
    run = (await api.get(f"/api/pipelines/runs/{run_id}")).json()
    assert run["steps"][0]["output"] == {"response": "<A>"} and run["usage"]["total_tokens"] == 7
