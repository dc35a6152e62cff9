"""At app start-up: import legacy Redis records, have the sample built, follow open ingests."""

from __future__ import annotations

import structlog

from corral.app.datasets import ingest
from corral.app.datasets import service as datasets
from corral.app.records.legacy_import import import_from_redis
from corral.app.services import Services

log = structlog.get_logger(__name__)


async def start(services: Services) -> None:
    try:
        await import_from_redis(services)
        await datasets.ensure_sample(services)
    except Exception as exc:  # Redis or a worker down: the periodic check picks it up later
        log.error("system-of-record start-up step failed", error=repr(exc))
    if services.settings.datasets.ingest_check_interval_s > 0:
        services.background.spawn("dataset-ingest-check", ingest.check_forever(services))
    else:
        await ingest.check_once(services)
