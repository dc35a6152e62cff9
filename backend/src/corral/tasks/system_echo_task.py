"""``system.echo``: return the payload after an optional sleep; for health checks and benches."""

from __future__ import annotations

import os
import socket
import time

from corral.task_schemas import SYSTEM_ECHO, EchoInput, EchoOutput
from corral.tasks._base import TaskContext, corral_task


@corral_task(SYSTEM_ECHO)
def system_echo(ctx: TaskContext, params: EchoInput) -> EchoOutput:
    """Sleep ``sleep_s`` in ``steps`` slices, reporting progress after each one."""
    if params.sleep_s > 0 or params.steps > 1:
        pause = params.sleep_s / params.steps
        for step in range(1, params.steps + 1):
            time.sleep(pause)
            ctx.progress(step, params.steps, f"step {step} of {params.steps}")
    return EchoOutput(
        payload=params.payload, steps=params.steps, worker=f"{socket.gethostname()}:{os.getpid()}"
    )
