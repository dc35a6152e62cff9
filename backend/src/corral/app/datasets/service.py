"""Dataset use cases: capped uploads read at upload time, owner-only access, the shared sample,
and the URL a circuit_q worker downloads a dataset from.

Another user's dataset answers exactly like a missing one (404). The sample is visible to every
user and read-only.
"""

from __future__ import annotations

import contextlib
import re
import shutil
import tempfile
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio
from starlette.datastructures import UploadFile
from starlette.requests import Request

from corral.app.auth.service import User
from corral.app.datasets import sample
from corral.app.datasets.extract import (
    CONTENT_TYPES,
    Extracted,
    InvalidDataset,
    detect_format,
    extract,
)
from corral.app.datasets.repository import DatasetRepository, RedisDatasetRepository
from corral.app.datasets.schemas import DatasetOut, DatasetRecord, DatasetSummary, summary_of
from corral.app.services import Services
from corral.app.storage.service import read_upload_form
from corral.app.storage.store import BLOB_ROUTE, S3ObjectStore, new_key
from corral.task_schemas import DatasetFormat, TaskSpec

UPLOAD_FIELD = "file"
_ID_RE = re.compile(r"[0-9a-f]{32}")
LIST_LIMIT = 500


class DatasetError(Exception):
    """Base; messages are fit for an API response."""


class DatasetNotFound(DatasetError, LookupError):
    def __init__(self, dataset_id: str) -> None:
        super().__init__(f"dataset {dataset_id[:80]!r} not found")


class DatasetReadOnly(DatasetError, PermissionError):
    pass


class BadDatasetUpload(DatasetError, ValueError):
    """Malformed request or file (422); the message says what to fix."""


class DatasetTooLarge(DatasetError):
    pass


class WorkerURLUnavailable(DatasetError):
    """The app cannot give workers an absolute URL for the local store (configuration)."""


def repository(services: Services) -> DatasetRepository:
    """The dataset store; swap this for the SQL repository when the database arrives."""
    return RedisDatasetRepository(services.redis)


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


def _spool_to_path(src: Any, path: Path) -> None:
    src.seek(0)
    with path.open("wb") as out:
        shutil.copyfileobj(src, out, 1 << 20)


async def upload(services: Services, user: User, request: Request) -> DatasetOut:
    """Read the file (format, schema, rows) in a thread, store it, record it."""
    settings = services.settings.datasets
    cap = settings.max_upload_bytes
    part, fields = await _read_form(request, cap)
    population = (fields.get("population") or "").strip() or None
    try:
        declared = _declared_format(fields.get("format"))
        with tempfile.TemporaryDirectory(prefix="corral-dataset-") as tmp:
            path = Path(tmp) / "upload"
            await anyio.to_thread.run_sync(_spool_to_path, part.file, path)
            size = path.stat().st_size
            if size > cap:
                raise _too_large(cap)

            def read() -> Extracted:
                fmt = detect_format(path, part.filename, declared)
                sonata_population = population if fmt is DatasetFormat.SONATA else None
                found = extract(path, fmt, sonata_population, settings.preview_rows)
                if population is not None and fmt is not DatasetFormat.SONATA:
                    if all(c.name != "population" for c in found.columns):
                        raise InvalidDataset(
                            "population was given but this file has no `population` column"
                        )
                    found.population = population
                return found

            try:
                found = await anyio.to_thread.run_sync(read)
            except InvalidDataset as exc:
                raise BadDatasetUpload(str(exc)) from exc
            key = new_key(user.id, "datasets")
            with path.open("rb") as data:
                info = await services.storage.put(
                    key, data, CONTENT_TYPES[found.format], max_bytes=cap
                )
    finally:
        await part.close()
    record = DatasetRecord(
        id=uuid.uuid4().hex,
        owner_id=user.id,
        name=_clean_name(fields.get("name"), part.filename),
        format=found.format,
        key=info.key,
        size=info.size,
        population=found.population,
        populations=found.populations,
        row_count=found.row_count,
        columns=found.columns,
        sample_rows=found.sample_rows,
        created_at=datetime.now(UTC),
    )
    try:
        await repository(services).add(record)
    except BaseException:
        with contextlib.suppress(Exception):
            await services.storage.delete(info.key)
        raise
    return DatasetOut.of(record)


# -- reading -----------------------------------------------------------------------------------

_sample_stored: set[tuple[int, str]] = set()


async def sample_record(services: Services) -> DatasetRecord:
    """The shared sample's record; its file is generated and stored on first use."""
    preview = services.settings.datasets.preview_rows
    data, record = await anyio.to_thread.run_sync(sample.build, preview)
    marker = (id(services.storage), sample.SAMPLE_KEY)
    if marker not in _sample_stored:
        if not await services.storage.exists(sample.SAMPLE_KEY):
            await services.storage.put(sample.SAMPLE_KEY, data, sample.CONTENT_TYPE)
        _sample_stored.add(marker)
    return record


async def get_visible(services: Services, user: User, dataset_id: str) -> DatasetRecord:
    """The dataset if ``user`` may read it (theirs, or the sample); ``DatasetNotFound`` else."""
    if dataset_id == sample.SAMPLE_ID:
        return await sample_record(services)
    if not _ID_RE.fullmatch(dataset_id):
        raise DatasetNotFound(dataset_id)
    record = await repository(services).get(dataset_id)
    if record is None or record.owner_id != user.id:
        raise DatasetNotFound(dataset_id)
    return record


async def list_visible(services: Services, user: User) -> list[DatasetSummary]:
    owned = await repository(services).list_for_owner(user.id, LIST_LIMIT)
    return [summary_of(await sample_record(services)), *(summary_of(r) for r in owned)]


async def delete(services: Services, user: User, dataset_id: str) -> None:
    if dataset_id == sample.SAMPLE_ID:
        raise DatasetReadOnly("the sample dataset is shared by every user and cannot be deleted")
    record = await get_visible(services, user, dataset_id)
    await repository(services).delete(record)
    await services.storage.delete(record.key)


# -- handing the file to a worker ------------------------------------------------------------


def worker_url_ttl_s(spec: TaskSpec[Any, Any]) -> int:
    """Long enough for a task that waited its whole queue ``expires`` and then used every retry."""
    retry = spec.retry
    attempts = retry.max_retries + 1
    return int(
        spec.expires_s + attempts * spec.time_limit_s + retry.max_retries * retry.backoff_max_s + 60
    )


async def worker_url(services: Services, record: DatasetRecord, expires_s: int) -> str:
    """A presigned URL the workers can reach (internal endpoint, never the browser-facing one)."""
    store = services.storage
    if isinstance(store, S3ObjectStore):
        url: str = store.client.generate_presigned_url(  # internal endpoint; pure computation
            "get_object", Params={"Bucket": store.bucket, "Key": record.key}, ExpiresIn=expires_s
        )
        return url
    signed = await store.presign_get(record.key, expires_s=expires_s)
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
    "BadDatasetUpload",
    "DatasetNotFound",
    "DatasetReadOnly",
    "DatasetTooLarge",
    "WorkerURLUnavailable",
    "delete",
    "get_visible",
    "list_visible",
    "upload",
    "worker_url",
    "worker_url_ttl_s",
]
