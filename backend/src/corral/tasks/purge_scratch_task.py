"""``system.purge_scratch``: delete expired scratch objects; scheduled by ``celery beat``.

Scratch objects are ``{owner}/{kind}/{name}`` with ``kind`` in
``TASKS_MAINTENANCE__SCRATCH_KINDS`` (default ``scratch``); one is expired when it was last
written more than ``SCRATCH_TTL_S`` ago (file mtime locally, ``LastModified`` on S3). Listing
and deleting go straight to the store, page by page, so memory stays flat however many objects
there are. Run the schedule with ``celery -A corral.tasks.main beat`` (its own process).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from dataclasses import dataclass

import structlog

from corral.task_schemas import (
    PRIORITY_NORMAL,
    SYSTEM_PURGE_SCRATCH,
    PurgeScratchInput,
    PurgeScratchOutput,
    message_kwargs,
)
from corral.tasks._base import TaskContext, corral_task
from corral.tasks.celery_app import app, settings
from corral.tasks.object_store import (
    KEY_RE,
    LocalObjectStore,
    ObjectStore,
    ObjectStoreError,
    S3ObjectStore,
    get_object_store,
)

log = structlog.get_logger(__name__)

BEAT_ENTRY = "corral.purge-scratch"


@dataclass(frozen=True)
class Listed:
    key: str
    size: int
    modified: float  # Unix seconds


def _local_objects(store: LocalObjectStore, kinds: set[str]) -> Iterator[Listed]:
    data = store.root / "data"
    if not data.is_dir():
        return
    for owner in os.scandir(data):
        if not owner.is_dir(follow_symlinks=False):
            continue
        for kind in kinds:
            folder = os.path.join(owner.path, kind)
            if not os.path.isdir(folder):
                continue
            for entry in os.scandir(folder):
                key = f"{owner.name}/{kind}/{entry.name}"
                if entry.is_file(follow_symlinks=False) and KEY_RE.fullmatch(key):
                    stat = entry.stat(follow_symlinks=False)
                    yield Listed(key, stat.st_size, stat.st_mtime)


def _s3_objects(store: S3ObjectStore, kinds: set[str]) -> Iterator[Listed]:
    paginator = store.client.get_paginator("list_objects_v2")
    try:
        for page in paginator.paginate(Bucket=store.bucket, PaginationConfig={"PageSize": 1000}):
            for item in page.get("Contents", []):
                key = item["Key"]
                parts = key.split("/")
                if len(parts) == 3 and parts[1] in kinds and KEY_RE.fullmatch(key):
                    yield Listed(key, item["Size"], item["LastModified"].timestamp())
    except store.client.exceptions.NoSuchBucket:
        return


def scratch_objects(store: ObjectStore, kinds: set[str]) -> Iterator[Listed]:
    if isinstance(store, LocalObjectStore):
        return _local_objects(store, kinds)
    if isinstance(store, S3ObjectStore):
        return _s3_objects(store, kinds)
    raise TypeError(f"cannot list objects of {type(store).__name__}")


PURGE_BUDGET_S = 200.0  # below the task's soft limit; the next scheduled run continues


def purge_expired(
    store: ObjectStore,
    kinds: set[str],
    max_age_s: int,
    *,
    dry_run: bool = False,
    budget_s: float = PURGE_BUDGET_S,
) -> PurgeScratchOutput:
    cutoff = time.time() - max_age_s
    stop_at = time.monotonic() + budget_s
    scanned = deleted = deleted_bytes = errors = 0
    complete = True
    for item in scratch_objects(store, kinds):
        if time.monotonic() > stop_at:
            complete = False
            break
        scanned += 1
        if item.modified >= cutoff:
            continue
        if not dry_run:
            try:
                store.delete(item.key)
            except ObjectStoreError as exc:
                errors += 1
                log.warning("could not purge", key=item.key, error=str(exc))
                continue
        deleted += 1
        deleted_bytes += item.size
    return PurgeScratchOutput(
        kinds=sorted(kinds),
        max_age_s=max_age_s,
        scanned=scanned,
        deleted=deleted,
        deleted_bytes=deleted_bytes,
        errors=errors,
        complete=complete,
    )


@corral_task(SYSTEM_PURGE_SCRATCH)
def purge_scratch(ctx: TaskContext, params: PurgeScratchInput) -> PurgeScratchOutput:
    """Delete scratch objects older than their time to live."""
    maintenance = settings.maintenance
    max_age = maintenance.scratch_ttl_s if params.max_age_s is None else params.max_age_s
    store = get_object_store(settings.storage)
    result = purge_expired(store, set(maintenance.scratch_kinds), max_age, dry_run=params.dry_run)
    log.info("purged scratch objects", **result.model_dump())
    return result


app.conf.beat_schedule = {
    **(app.conf.beat_schedule or {}),
    BEAT_ENTRY: {
        "task": SYSTEM_PURGE_SCRATCH.name,
        "schedule": settings.maintenance.purge_interval_s,
        "kwargs": message_kwargs(PurgeScratchInput(), owner_id="system"),
        "options": {
            "queue": SYSTEM_PURGE_SCRATCH.default_queue.value,
            "expires": min(SYSTEM_PURGE_SCRATCH.expires_s, settings.maintenance.purge_interval_s),
            "priority": PRIORITY_NORMAL,
        },
    },
}
