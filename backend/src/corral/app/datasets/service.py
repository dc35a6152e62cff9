"""Dataset use cases: capped uploads streamed to the object store and ingested on circuit_q,
owner-only access, the shared sample, and the URL a circuit_q worker downloads a dataset from.

The web process never parses a dataset: ``upload`` stores the bytes and records the dataset as
``processing``; ``circuit.ingest`` reads it on a worker (``corral.app.datasets.ingest``).
Another user's dataset answers exactly like a missing one (404); one retention purged answers
410 (``corral.app.records``). The sample is visible to every user and read-only.
"""

from __future__ import annotations

import contextlib
import re
import uuid
from datetime import UTC, datetime
from typing import Any

import structlog
from starlette.datastructures import UploadFile
from starlette.requests import Request

from corral.app.auth.service import User
from corral.app.datasets import ingest
from corral.app.datasets.repository import DatasetRepository
from corral.app.datasets.schemas import DatasetOut, DatasetRecord, DatasetSummary, summary_of
from corral.app.records import retention
from corral.app.services import Services
from corral.app.storage.service import read_upload_form
from corral.app.storage.store import BLOB_ROUTE, S3ObjectStore, new_key
from corral.app.task_runs import service as task_runs
from corral.task_schemas import (
    PARQUET_CONTENT_TYPE,
    SAMPLE_DATASET_ID,
    SAMPLE_DATASET_KEY,
    SAMPLE_OWNER,
    DatasetFormat,
    TaskSpec,
)

log = structlog.get_logger(__name__)

UPLOAD_FIELD = "file"
_ID_RE = re.compile(r"[0-9a-f]{32}")
LIST_LIMIT = 500
SAMPLE_ID = SAMPLE_DATASET_ID
KIND = "dataset"
"""Its name in retention settings and tombstones."""


class DatasetError(Exception):
    """Base; messages are fit for an API response."""


class DatasetNotFound(DatasetError, LookupError):
    def __init__(self, dataset_id: str) -> None:
        super().__init__(f"dataset {dataset_id[:80]!r} not found")


class DatasetPurged(DatasetError, LookupError):
    """Deleted by retention (410)."""


class DatasetReadOnly(DatasetError, PermissionError):
    pass


class DatasetNotReady(DatasetError):
    """Still processing, or failed (409); the message says which."""


class BadDatasetUpload(DatasetError, ValueError):
    """Malformed request (422); the message says what to fix."""


class DatasetTooLarge(DatasetError):
    pass


class WorkerURLUnavailable(DatasetError):
    """The app cannot give workers an absolute URL for the local store (configuration)."""


def repository(services: Services) -> DatasetRepository:
    return DatasetRepository(services.db)


# -- upload ------------------------------------------------------------------------------------


def _too_large(cap: int) -> DatasetTooLarge:
    return DatasetTooLarge(f"dataset too large: the limit is {cap} bytes")


async def _read_form(request: Request, cap: int) -> tuple[UploadFile, dict[str, str]]:
    return await read_upload_form(
        request,
        cap,
        field=UPLOAD_FIELD,
        usage=f"send multipart/form-data with the file in a '{UPLOAD_FIELD}' field (and optional "
        "'format', 'population', 'name' fields)",
        bad=BadDatasetUpload,
        too_large=_too_large,
    )


def _declared_format(value: str | None) -> DatasetFormat | None:
    if value is None or not value.strip():
        return None
    try:
        return DatasetFormat(value.strip().lower())
    except ValueError:
        allowed = ", ".join(f.value for f in DatasetFormat)
        raise BadDatasetUpload(f"format must be one of {allowed}, not {value[:40]!r}") from None


def _clean_name(value: str | None, filename: str | None) -> str:
    name = (value or filename or "dataset").strip()
    name = "".join(ch for ch in name if ch.isprintable())[:200]
    return name or "dataset"


def _clean_population(value: str | None) -> str | None:
    population = (value or "").strip() or None
    if population is not None and len(population) > 200:
        raise BadDatasetUpload("population must be at most 200 characters")
    return population


_GUESS = {".parquet": DatasetFormat.PARQUET, ".pq": DatasetFormat.PARQUET}
_GUESS |= {s: DatasetFormat.SONATA for s in (".h5", ".hdf5", ".sonata")}


def _guess_format(declared: DatasetFormat | None, filename: str | None) -> DatasetFormat:
    """What to call the dataset until the worker has looked (it detects from the bytes)."""
    if declared is not None:
        return declared
    suffix = "." + (filename or "").rsplit(".", 1)[-1].lower() if "." in (filename or "") else ""
    return _GUESS.get(suffix, DatasetFormat.CSV)


async def upload(services: Services, user: User, request: Request) -> DatasetOut:
    """Stream the file to the object store, record it ``processing`` and send ``circuit.ingest``."""
    cap = services.settings.datasets.max_upload_bytes
    part, fields = await _read_form(request, cap)
    try:
        declared = _declared_format(fields.get("format"))
        population = _clean_population(fields.get("population"))
        key = new_key(user.id, "datasets")
        info = await services.storage.put(key, part.file, "application/octet-stream", max_bytes=cap)
    finally:
        await part.close()
    dataset_id = uuid.uuid4().hex
    record = DatasetRecord(
        id=dataset_id,
        owner_id=user.id,
        name=_clean_name(fields.get("name"), part.filename),
        format=_guess_format(declared, part.filename),
        declared_format=declared,
        key=info.key,
        parquet_key=f"{user.id}/datasets/{dataset_id}.parquet",
        size=info.size,
        population=population,
        row_count=0,
        columns=[],
        created_at=datetime.now(UTC),
        status="processing",
    )
    try:
        await repository(services).add(record)
    except BaseException:
        with contextlib.suppress(Exception):
            await services.storage.delete(info.key)
        raise
    await ingest.send(services, record, previous_task=None)
    return DatasetOut.of(await repository(services).get(dataset_id) or record)


# -- the shared sample ---------------------------------------------------------------------------


async def ensure_sample(services: Services) -> None:
    """Have a circuit_q worker build the sample unless it is built (or being built) already."""
    repo = repository(services)
    record = await repo.get(SAMPLE_ID)
    if record is None:
        record = DatasetRecord(
            id=SAMPLE_ID,
            owner_id=SAMPLE_OWNER,
            name="Sample cortical column (50k neurons)",
            format=DatasetFormat.PARQUET,
            key=SAMPLE_DATASET_KEY,
            parquet_key=SAMPLE_DATASET_KEY,
            size=0,
            row_count=0,
            columns=[],
            read_only=True,
            created_at=datetime(2015, 10, 8, tzinfo=UTC),
            status="processing",
        )
        with contextlib.suppress(Exception):  # another process inserted it first
            await repo.add(record)
            await ingest.send(services, record, previous_task=None)
        return
    broken = record.status == "failed" or (
        record.status == "ready" and not await services.storage.exists(SAMPLE_DATASET_KEY)
    )
    if broken:
        await repo.reset(
            SAMPLE_ID, status="processing", task_id=None, ingest_attempts=0, error=None
        )
        fresh = await repo.get(SAMPLE_ID)
        if fresh is not None:
            await ingest.send(services, fresh, previous_task=None)


# -- reading -----------------------------------------------------------------------------------


async def _missing(services: Services, user: User, dataset_id: str) -> DatasetError:
    when = await retention.purged_at(services, KIND, dataset_id, user.id)
    if when is not None:
        return DatasetPurged(
            f"dataset {dataset_id} was deleted on {when:%Y-%m-%d} by the retention policy "
            "(CORRAL retention settings); upload the file again to analyse it"
        )
    return DatasetNotFound(dataset_id)


async def get_visible(services: Services, user: User, dataset_id: str) -> DatasetRecord:
    """The dataset if ``user`` may read it (theirs, or the sample); ``DatasetNotFound`` else."""
    if dataset_id != SAMPLE_ID and not _ID_RE.fullmatch(dataset_id):
        raise DatasetNotFound(dataset_id)
    record = await repository(services).get(dataset_id)
    if record is None or (record.owner_id != user.id and not record.read_only):
        raise await _missing(services, user, dataset_id)
    return record


async def get_ready(services: Services, user: User, dataset_id: str) -> DatasetRecord:
    """As ``get_visible``, and ready for analysis (``DatasetNotReady`` says why not)."""
    record = await get_visible(services, user, dataset_id)
    if record.status == "processing":
        raise DatasetNotReady(
            f"dataset {record.name!r} is still being read by a worker; follow "
            f"GET /api/tasks/{record.task_id}/events or poll GET /api/datasets/{record.id}"
        )
    if record.status == "failed":
        message = record.error.message if record.error else "ingestion failed"
        raise DatasetNotReady(f"dataset {record.name!r} could not be read: {message}")
    return record


async def list_visible(services: Services, user: User) -> list[DatasetSummary]:
    repo = repository(services)
    owned = await repo.list_for_owner(user.id, LIST_LIMIT)
    sample = await repo.get(SAMPLE_ID)
    return [summary_of(r) for r in ([sample] if sample else []) + owned]


async def delete(services: Services, user: User, dataset_id: str) -> None:
    if dataset_id == SAMPLE_ID:
        raise DatasetReadOnly("the sample dataset is shared by every user and cannot be deleted")
    record = await get_visible(services, user, dataset_id)
    await repository(services).delete(record)
    if record.status == "processing" and record.task_id:
        with contextlib.suppress(Exception):
            await task_runs.cancel(services, record.task_id, record.owner_id, "dataset deleted")
    for key in {record.key, record.parquet_key} - {None}:
        assert key is not None
        try:
            await services.storage.delete(key)
        except Exception as exc:  # the record is gone; an orphan object is only space
            log.warning("could not delete dataset object", key=key, error=repr(exc))


# -- handing the file to a worker ------------------------------------------------------------


def worker_url_ttl_s(spec: TaskSpec[Any, Any]) -> int:
    """Long enough for a task that waited its whole queue ``expires`` and then used every retry."""
    retry = spec.retry
    attempts = retry.max_retries + 1
    return int(
        spec.expires_s + attempts * spec.time_limit_s + retry.max_retries * retry.backoff_max_s + 60
    )


async def worker_url(services: Services, record: DatasetRecord, expires_s: int) -> str:
    """A presigned URL of the dataset's Parquet the workers can reach (internal endpoint, never
    the browser-facing one)."""
    store = services.storage
    key = record.parquet_key or record.key
    if isinstance(store, S3ObjectStore):
        url: str = store.client.generate_presigned_url(  # internal endpoint; pure computation
            "get_object", Params={"Bucket": store.bucket, "Key": key}, ExpiresIn=expires_s
        )
        return url
    signed = await store.presign_get(key, expires_s=expires_s)
    base = services.settings.datasets.worker_base_url
    if base is not None:
        return base + signed[signed.index(BLOB_ROUTE) :]
    if signed.startswith(("http://", "https://")):
        return signed
    raise WorkerURLUnavailable(
        "the app cannot hand datasets to workers: with the local storage backend set "
        "CORRAL_DATASETS__WORKER_BASE_URL (or CORRAL_STORAGE__PUBLIC_BASE_URL) to the URL the "
        "workers reach this app at"
    )


__all__ = [
    "PARQUET_CONTENT_TYPE",
    "BadDatasetUpload",
    "DatasetNotFound",
    "DatasetNotReady",
    "DatasetPurged",
    "DatasetReadOnly",
    "DatasetTooLarge",
    "WorkerURLUnavailable",
    "delete",
    "ensure_sample",
    "get_ready",
    "get_visible",
    "list_visible",
    "upload",
    "worker_url",
    "worker_url_ttl_s",
]
