"""The app's long-lived collaborators, built once in the lifespan and injected per request."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import anyio
import redis.asyncio as aioredis
from celery import Celery

from corral.app.auth.service import TokenVerifier
from corral.app.auth.users import KnownUsers
from corral.app.background import BackgroundTasks
from corral.app.budgets.settings import BudgetSettings
from corral.app.celery_client import TaskSender, build_celery_client
from corral.app.chat.llm import AgentModels
from corral.app.db import Database
from corral.app.fairshare.scheduler import FairShare
from corral.app.ratelimit.service import RateLimits
from corral.app.redis_pools import async_pool
from corral.app.settings import AppSettings
from corral.app.storage.store import ObjectStore, build_object_store
from corral.app.streams import ResultBackendReader, StreamHub
from corral.app.task_runs.reconcile import Reconciler
from corral.app.task_runs.tracker import TaskRunTracker
from corral.task_schemas import ALL_QUEUES

if TYPE_CHECKING:
    from corral.app.turns.runner import TurnManager


@dataclass
class Readiness:
    redis: bool
    queues: dict[str, list[str]]
    problems: list[str]

    @property
    def ok(self) -> bool:
        return not self.problems


@dataclass
class ReadinessProbe:
    """Redis ping plus which workers consume each queue; cached, bounded, one probe at a time."""

    redis: aioredis.Redis
    celery: Celery
    timeout_s: float
    cache_s: float
    db: Database | None = None
    _cached: tuple[float, Readiness] | None = None
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    async def check(self) -> Readiness:
        async with self._lock:
            now = time.monotonic()
            if self._cached is not None and now - self._cached[0] < self.cache_s:
                return self._cached[1]
            result = await self._probe()
            self._cached = (time.monotonic(), result)
            return result

    async def _probe(self) -> Readiness:
        problems: list[str] = []
        redis_ok = True
        try:
            with anyio.fail_after(self.timeout_s):
                await self.redis.ping()
        except Exception as exc:
            redis_ok = False
            problems.append(f"redis unreachable: {exc or type(exc).__name__}")
        if self.db is not None:
            try:
                with anyio.fail_after(self.timeout_s):
                    await self.db.ping()
            except Exception as exc:
                problems.append(f"database unreachable: {exc or type(exc).__name__}")
        queues: dict[str, list[str]] = {q.value: [] for q in ALL_QUEUES}
        if redis_ok:
            try:
                with anyio.fail_after(self.timeout_s + 2):
                    replies: dict[str, Any] | None = await anyio.to_thread.run_sync(
                        lambda: self.celery.control.inspect(timeout=self.timeout_s).active_queues()
                    )
            except Exception as exc:
                replies = None
                problems.append(f"could not ask workers: {exc or type(exc).__name__}")
            for worker, consumed in (replies or {}).items():
                for queue in consumed:
                    if queue.get("name") in queues:
                        queues[queue["name"]].append(worker)
        for name, workers in queues.items():
            if redis_ok and not workers:
                problems.append(f"no worker consuming {name}")
        return Readiness(redis=redis_ok, queues=queues, problems=problems)


@dataclass
class Services:
    settings: AppSettings
    redis: aioredis.Redis
    celery: Celery
    sender: TaskSender
    hub: StreamHub
    results: ResultBackendReader
    verifier: TokenVerifier
    readiness: ReadinessProbe
    storage: ObjectStore
    db: Database
    users: KnownUsers
    tracker: TaskRunTracker
    reconciler: Reconciler
    rate_limits: RateLimits
    agent_models: AgentModels
    background: BackgroundTasks = field(default_factory=BackgroundTasks)
    turns: TurnManager | None = None  # chat turns run in this process (built in start_background)
    fair: FairShare | None = None  # per-user caps per queue (app/fairshare); None: off

    @property
    def budgets(self) -> BudgetSettings:
        """Daily spend limits per user (app/budgets)."""
        return self.settings.budgets

    @classmethod
    async def start(cls, settings: AppSettings) -> Services:
        db = Database(settings.database)
        try:
            if settings.database.check_schema:
                await db.check_schema()
        except BaseException:
            await db.aclose()
            raise
        # Bursts (a thousand sends at once) wait for a connection instead of failing.
        redis = aioredis.Redis.from_pool(
            async_pool(
                settings.redis.streams_url,
                decode_responses=True,
                socket_timeout=10,
                socket_connect_timeout=5,
                max_connections=32,
                timeout=20,
            )
        )
        celery = build_celery_client(settings)
        hub = StreamHub(settings.redis.streams_url, readers=settings.streams.hub_readers)
        await hub.start()
        storage = await build_object_store(settings.storage)
        sender = TaskSender(celery, redis, settings.streams, settings.redis.streams_url, hub)
        results = ResultBackendReader(
            celery, settings.redis.backend_url, client_name=f"{hub.client_name}-backend"
        )
        tracker = TaskRunTracker(db, hub, results, redis)
        services = cls(
            settings=settings,
            redis=redis,
            celery=celery,
            sender=sender,
            hub=hub,
            results=results,
            verifier=TokenVerifier(settings.auth),
            readiness=ReadinessProbe(
                redis=redis,
                celery=celery,
                timeout_s=settings.readiness_timeout_s,
                cache_s=settings.readiness_cache_s,
                db=db,
            ),
            storage=storage,
            db=db,
            users=KnownUsers(db),
            tracker=tracker,
            reconciler=Reconciler(db, tracker, results, sender, celery, settings.task_runs),
            rate_limits=RateLimits(settings.rate_limits, settings.redis.streams_url),
            agent_models=AgentModels(settings.llm),
        )
        return services

    async def start_background(self) -> None:
        """Follow runs left open by an earlier process and start the periodic reconcile."""
        from corral.app.sessions import service as sessions  # it records calls as runs end

        sessions.install(self)
        await self.tracker.resume(timeout_s=self.settings.max_invoke_timeout_s + 3600)
        from corral.app.turns.runner import TurnManager  # it drives the chat loop (imports us)

        self.turns = TurnManager(self)
        self.turns.start()
        fair = FairShare(self)
        if fair.settings.enabled:
            self.fair = fair
            fair.hook_terminal_events()
            self.background.spawn("fair-share-release", fair.run_forever())
        if self.settings.task_runs.reconcile_interval_s > 0:
            self.background.spawn("task-runs-reconcile", self.reconciler.run_forever())
        from corral.app.records import lifecycle  # legacy import, sample, dataset ingests

        await lifecycle.start(self)

    async def aclose(self) -> None:
        if self.turns is not None:  # handed off (leases released), not stopped
            await self.turns.aclose()
        await self.background.aclose()  # first: their cleanup still needs Redis and Celery
        await self.tracker.aclose()
        await self.rate_limits.aclose()
        await self.agent_models.aclose()
        await self.storage.aclose()
        await self.hub.aclose()
        await self.results.aclose()
        await self.redis.aclose()
        await self.sender.aclose()
        self.celery.close()
        await self.db.aclose()
