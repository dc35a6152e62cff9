"""Waiting on task event streams: the hub, the long poll and its typed outcomes."""

from corral.app.streams._hub import StreamHub, Subscription
from corral.app.streams.long_poll import long_poll_celery_result
from corral.app.streams.outcomes import (
    TaskCancelled,
    TaskDone,
    TaskFailed,
    TaskOutcome,
    TaskTimedOut,
)
from corral.app.streams.result_backend import ResultBackendReader

__all__ = [
    "ResultBackendReader",
    "StreamHub",
    "Subscription",
    "TaskCancelled",
    "TaskDone",
    "TaskFailed",
    "TaskOutcome",
    "TaskTimedOut",
    "long_poll_celery_result",
]
