"""Shared fixtures: a real redis-server, real Celery workers (one per queue), a real app server.

Set CORRAL_TEST_REDIS_URL to use an existing Redis instead of starting one.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from corral.task_schemas import ALL_QUEUES, Queue
from tests.support.db import PostgresServer, new_sqlite_database, postgres_server
from tests.support.fake_openai import FakeOpenAI
from tests.support.llm_env import LLM_API_KEY, llm_env
from tests.support.procs import (
    RedisServer,
    UvicornThread,
    Worker,
    free_port,
    start_redis,
    start_worker,
    wait_workers_ready,
)
from tests.support.sandbox import (
    as_sandbox_user,
    check_sandbox_host,
    ensure_sandbox_venv,
    python_worker_env,
    sandbox_env,
    shared_dir,
)

DEV_SECRET = "test-" + secrets.token_hex(24)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests marked ``run_last`` go after all others: the API fuzzer fills the shared stack's
    queues (and the dev user's fair share) with thousands of generated tasks."""
    items.sort(key=lambda item: item.get_closest_marker("run_last") is not None)


STORAGE_SECRET = "test-storage-" + secrets.token_hex(24)


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    given = os.environ.get("CORRAL_TEST_REDIS_URL")
    if given:
        from urllib.parse import urlsplit

        parts = urlsplit(given)
        yield RedisServer(parts.hostname or "127.0.0.1", parts.port or 6379, parts.password, None)
        return
    server = start_redis()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def fake_llm_server() -> Iterator[FakeOpenAI]:
    """The OpenAI-protocol provider every configured model points at (see support/llm_env)."""
    with FakeOpenAI(api_key=LLM_API_KEY) as server:
        yield server


@pytest.fixture
def fake_llm(fake_llm_server: FakeOpenAI) -> Iterator[FakeOpenAI]:
    """The provider with a clean script and request log for this test."""
    fake_llm_server.reset()
    yield fake_llm_server
    fake_llm_server.reset()


@pytest.fixture(scope="session")
def database_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The session app's database: a SQLite file migrated to head."""
    return new_sqlite_database(tmp_path_factory.mktemp("db"))


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """CORRAL_TEST_POSTGRES_URL, or a private PostgreSQL started for the session."""
    with postgres_server() as server:
        yield server


@pytest.fixture(scope="session")
def stack_env(
    redis_server: RedisServer,
    tmp_path_factory: pytest.TempPathFactory,
    fake_llm_server: FakeOpenAI,
    database_url: str,
) -> dict[str, str]:
    """Environment shared by the app and the workers under test."""
    objects = shared_dir("corral-test-objects-")  # the python_q worker runs as another user
    return {
        **llm_env(fake_llm_server),
        **sandbox_env(),
        "TASKS_REDIS__URL": redis_server.url,
        "CORRAL_REDIS__URL": redis_server.url,
        "CORRAL_AUTH__MODE": "dev",
        "CORRAL_AUTH__DEV_SECRET": DEV_SECRET,
        "TASKS_STORAGE__LOCAL_DIR": str(objects),
        "CORRAL_STORAGE__LOCAL_DIR": str(objects),
        "CORRAL_STORAGE__SIGNING_SECRET": STORAGE_SECRET,
        # circuit_q workers download datasets from the app's signed blob URLs (live_app's port).
        "CORRAL_DATASETS__WORKER_BASE_URL": f"http://127.0.0.1:{free_port()}",
        "CORRAL_DATABASE__URL": database_url,
        # Limits have their own tests; the shared app must not throttle everyone else's.
        "CORRAL_RATE_LIMITS__CHAT": "100000/minute",
        "CORRAL_RATE_LIMITS__TOOLS": "100000/minute",
    }


@pytest.fixture(scope="session")
def workers(
    stack_env: dict[str, str], redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Worker]]:
    """One worker per queue, as deployed."""
    log_dir = tmp_path_factory.mktemp("worker-logs")
    check_sandbox_host()
    ensure_sandbox_venv()
    started = {
        q.value: start_worker((q.value,), stack_env, name=f"{q.value}@test", log_dir=log_dir)
        if q != Queue.PYTHON
        else start_worker(
            (q.value,),
            {**stack_env, **python_worker_env()},
            name=f"{q.value}@test",
            log_dir=log_dir,
            wrap=as_sandbox_user(),
        )
        for q in ALL_QUEUES
    }
    try:
        wait_workers_ready(redis_server.url + "/0", list(started.values()))
        yield started
    finally:
        for w in started.values():
            w.stop()


@dataclass
class LiveApp:
    url: str
    token: str
    server: UvicornThread

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def client(self, timeout: float = 30) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=self.url, headers=self.headers, timeout=timeout)


@pytest.fixture(scope="session")
def live_app(stack_env: dict[str, str], workers: dict[str, Worker]) -> Iterator[LiveApp]:
    from corral.app.auth.service import issue_dev_token
    from corral.app.main import create_app
    from corral.app.settings import AppSettings
    from tests.support.procs import env_vars

    with env_vars(stack_env):
        settings = AppSettings()  # type: ignore[call-arg]
    port = int(stack_env["CORRAL_DATASETS__WORKER_BASE_URL"].rsplit(":", 1)[1])
    with UvicornThread(create_app(settings), port=port) as server:
        live = LiveApp(server.url, issue_dev_token(settings.auth), server)
        wait_sample_ready(live)
        yield live


def wait_sample_ready(live: LiveApp, timeout_s: float = 90) -> None:
    """The shared sample is built by a circuit_q task the app sends at start-up."""
    from tests.support.procs import wait_until

    def ready() -> bool:
        resp = httpx.get(
            f"{live.url}/api/datasets/sample-cortical-column", headers=live.headers, timeout=5
        )
        return resp.status_code == 200 and resp.json()["status"] == "ready"

    wait_until(ready, timeout_s, "the sample dataset to be built on circuit_q", interval=0.2)


@pytest.fixture
async def api(live_app: LiveApp) -> AsyncIterator[httpx.AsyncClient]:
    async with live_app.client() as client:
        yield client


@pytest.fixture(scope="session")
def backend_dir() -> Path:
    return Path(__file__).resolve().parents[1]
