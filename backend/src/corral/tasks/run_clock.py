"""CPU seconds a task run has used so far, for the budget ledger (its outcome event carries it).

Measured in the pool child that runs the task: its own rusage plus that of the children it has
reaped (each sandbox run is one, waited for before the task returns). Read while the outcome is
written (``result_backend`` on success, ``lifecycle`` on failure), before ``task_postrun``.
"""

from __future__ import annotations

import resource
from typing import Any

from celery import Task
from celery.signals import task_postrun, task_prerun

from corral.task_schemas import REGISTRY

_started: dict[str, float] = {}
_charged: dict[str, float] = {}
_current: list[str] = []  # the run this process executes now (prefork: one at a time)


def children_cpu() -> float:
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return kids.ru_utime + kids.ru_stime


def cpu_now() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF)
    return own.ru_utime + own.ru_stime + children_cpu()  # + the children it reaped


def charge(seconds: float) -> None:
    """Add CPU that rusage cannot see (a sandbox's pid namespace, from its cgroup) to the run
    this process executes now."""
    if _current and seconds > 0:
        _charged[_current[-1]] = _charged.get(_current[-1], 0.0) + seconds


def cpu_since_start(task_id: str) -> float | None:
    """None outside a run of this process (e.g. an outcome written for another task)."""
    start = _started.get(task_id)
    if start is None:
        return None
    return round(max(0.0, cpu_now() - start) + _charged.get(task_id, 0.0), 4)


@task_prerun.connect
def _start(task_id: str, task: Task, **_: Any) -> None:
    if task.name in REGISTRY:
        _started[task_id] = cpu_now()
        _current[:] = [task_id]


@task_postrun.connect
def _forget(task_id: str, **_: Any) -> None:
    _started.pop(task_id, None)
    _charged.pop(task_id, None)
    if _current == [task_id]:
        _current.clear()
