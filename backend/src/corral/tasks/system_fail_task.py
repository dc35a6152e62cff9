"""``system.fail``: raise a typed error, so the failure path is exercised like a real tool's."""

from __future__ import annotations

import time

from corral.task_schemas import SYSTEM_FAIL, FailInput, FailOutput
from corral.tasks._base import TaskContext, TaskUserError, corral_task


class DeliberateFailure(TaskUserError):
    error_type = "DeliberateFailure"


@corral_task(SYSTEM_FAIL)
def system_fail(ctx: TaskContext, params: FailInput) -> FailOutput:
    """Always raises ``DeliberateFailure`` with the given message."""
    if params.sleep_s:
        ctx.progress(0, 1, "about to fail")
        time.sleep(params.sleep_s)
    raise DeliberateFailure(params.message)
