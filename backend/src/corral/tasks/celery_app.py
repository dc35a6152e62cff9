"""The workers' Celery application, configured from ``TasksSettings``.

Task modules import ``app`` from here; ``corral.tasks.main`` (the ``-A`` target) imports every
task module so a worker of any queue knows every task name.
"""

from __future__ import annotations

from typing import Any

from celery import Celery
from celery.signals import celeryd_init, setup_logging
from celery.utils.text import str_to_list

from corral.task_schemas import ALL_QUEUES, PRIORITY_STEPS
from corral.task_schemas.delivery import URGENT_SUFFIX, urgent_queue
from corral.tasks.delivery import amqp_queues, is_amqp, redis_transport_options
from corral.tasks.logging_setup import configure_logging
from corral.tasks.result_backend import BACKEND_PATH, StreamingRedisBackend
from corral.tasks.settings import TasksSettings

settings = TasksSettings()

# Reliability defaults from ARCHITECTURE.md; TASKS_CELERY__<option> overrides any of them.
WORKER_DEFAULTS: dict[str, Any] = {
    "task_acks_late": True,
    "task_reject_on_worker_lost": True,
    "worker_prefetch_multiplier": 1,
    "task_track_started": True,
    "task_serializer": "json",
    "result_serializer": "json",
    "accept_content": ["json"],
    "result_accept_content": ["json"],
    "timezone": "UTC",
    "enable_utc": True,
    "worker_hijack_root_logger": False,
    "worker_redirect_stdouts": False,
    "broker_connection_retry_on_startup": True,
    "task_create_missing_queues": True,
    "result_extended": True,
    # A Redis restart must not fail the tasks finishing meanwhile: keep retrying the store.
    "result_backend_always_retry": True,
    "result_backend_max_retries": 20,
    "worker_send_task_events": False,
    # priority_steps: the lists this worker polls, most urgent first (see task_schemas). The
    # visibility timeout is set per worker from the queues it consumes (worker_broker_bounds).
    "broker_transport_options": {
        "visibility_timeout": 3600,
        "priority_steps": list(PRIORITY_STEPS),
    },
}


def done_rides_with_result(tasks_settings: TasksSettings) -> bool:
    """Streams in the result backend's database: ``done`` is written with the result itself."""
    return tasks_settings.redis.streams_url == tasks_settings.redis.backend_url


def build_celery_app(tasks_settings: TasksSettings) -> Celery:
    backend = tasks_settings.redis.backend_url
    if done_rides_with_result(tasks_settings):
        StreamingRedisBackend.stream_settings = tasks_settings.streams
        backend = f"{BACKEND_PATH}+{backend}"
    broker = tasks_settings.broker.resolve(tasks_settings.redis)
    celery_app = Celery("corral", broker=broker, backend=backend)
    celery_app.conf.update(WORKER_DEFAULTS)
    if is_amqp(broker):
        # Quorum queues (delivery limit) for every workload and its urgent twin; declared the
        # same way by the app. Quorum queues have no priorities: urgency is by routing.
        celery_app.conf.task_queues = amqp_queues([q.value for q in ALL_QUEUES])
        celery_app.conf.broker_transport_options = {"confirm_publish": True}
    celery_app.conf.result_expires = tasks_settings.result_expires_s
    # Task events for Flower / `celery events` (TASKS_TASK_EVENTS=false turns them off).
    celery_app.conf.worker_send_task_events = tasks_settings.task_events
    celery_app.conf.update(tasks_settings.celery)
    return celery_app


app = build_celery_app(settings)


def worker_queues(raw: Any) -> list[str]:
    """The queues a worker consumes (``-Q``), each workload with its urgent twin on RabbitMQ."""
    queues = [q for q in str_to_list(raw or "") if q] or [q.value for q in ALL_QUEUES]
    if not is_amqp(settings.broker.resolve(settings.redis)):
        return queues
    out: list[str] = []
    for queue in queues:
        base = queue.removesuffix(URGENT_SUFFIX)
        out += [q for q in (urgent_queue(base), base) if q not in out]
    return out


@celeryd_init.connect
def worker_broker_bounds(
    sender: Any = None, instance: Any = None, conf: Any = None, options: Any = None, **_: Any
) -> None:
    """Per worker, before it connects: redelivery bounds from the tasks routed to its queues."""
    queues = worker_queues((options or {}).get("queues"))
    if is_amqp(settings.broker.resolve(settings.redis)):
        if instance is not None:  # consume the urgent twins too (listed first)
            setup_queues = instance.setup_queues
            instance.setup_queues = lambda include, exclude=None: setup_queues(queues, exclude)
        return
    delivery = settings.delivery
    options_now = dict(app.conf.broker_transport_options or {})
    explicit = settings.celery.get("broker_transport_options", {}).get("visibility_timeout")
    app.conf.broker_transport_options = options_now | redis_transport_options(
        queues,
        visibility_timeout=explicit or delivery.visibility_timeout_s,
        restore_interval_s=delivery.restore_interval_s,
        margin_s=delivery.visibility_margin_s,
    )


@setup_logging.connect
def _structlog_instead_of_celery_logging(**_: Any) -> None:
    configure_logging(settings.log_level, json_logs=settings.log_json)
