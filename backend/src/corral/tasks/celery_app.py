"""The workers' Celery application, configured from ``TasksSettings``.

Task modules import ``app`` from here; ``corral.tasks.main`` (the ``-A`` target) imports every
task module so a worker of any queue knows every task name.
"""

from __future__ import annotations

from typing import Any

from celery import Celery
from celery.signals import setup_logging

from corral.task_schemas import PRIORITY_STEPS
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
    "worker_send_task_events": False,
    # priority_steps: the lists this worker polls, most urgent first (see task_schemas).
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
    celery_app = Celery("corral", broker=tasks_settings.redis.broker_url, backend=backend)
    celery_app.conf.update(WORKER_DEFAULTS)
    celery_app.conf.result_expires = tasks_settings.result_expires_s
    celery_app.conf.update(tasks_settings.celery)
    return celery_app


app = build_celery_app(settings)


@setup_logging.connect
def _structlog_instead_of_celery_logging(**_: Any) -> None:
    configure_logging(settings.log_level, json_logs=settings.log_json)
