"""Helpers for tests that drive the task bus directly (no HTTP)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from corral.app.services import Services
from corral.app.settings import AppSettings
from tests.support.procs import env_vars


@asynccontextmanager
async def running_services(stack_env: dict[str, str]) -> AsyncIterator[Services]:
    with env_vars(stack_env):
        settings = AppSettings()
    services = await Services.start(settings)
    try:
        yield services
    finally:
        await services.aclose()
