"""``/api/datasets``: upload, list, read and delete datasets for circuit analysis."""

from __future__ import annotations

from typing import NoReturn

from fastapi import APIRouter, HTTPException, Request, Response, status

from corral.app.datasets import service
from corral.app.datasets.schemas import DatasetOut, DatasetSummary
from corral.app.deps import CurrentUser, ServicesDep
from corral.app.params import ResourceId
from corral.app.problems import ProblemError, problem_responses
from corral.app.records.retention import PURGED_KIND
from corral.app.storage.store import StorageError, StoreUnavailable

router = APIRouter(prefix="/datasets", tags=["datasets"])

_FORM_SCHEMA = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": [service.UPLOAD_FIELD],
                    "properties": {
                        service.UPLOAD_FIELD: {"type": "string", "format": "binary"},
                        "format": {
                            "type": "string",
                            "enum": ["csv", "parquet", "sonata", ""],
                            "description": "Empty or left out: detected from the file.",
                        },
                        "population": {
                            "type": "string",
                            "description": "SONATA: the node population (required).",
                        },
                        "name": {"type": "string"},
                    },
                }
            }
        },
    }
}


def _raise_http(exc: Exception) -> NoReturn:
    if isinstance(exc, service.DatasetPurged):
        raise ProblemError(410, PURGED_KIND, str(exc), title="Purged") from exc
    if isinstance(exc, service.DatasetNotFound):
        code = status.HTTP_404_NOT_FOUND
    elif isinstance(exc, service.DatasetReadOnly):
        code = status.HTTP_403_FORBIDDEN
    elif isinstance(exc, service.BadDatasetUpload):
        code = status.HTTP_422_UNPROCESSABLE_CONTENT
    elif isinstance(exc, service.DatasetTooLarge):
        code = status.HTTP_413_CONTENT_TOO_LARGE
    elif isinstance(exc, StoreUnavailable):
        code = status.HTTP_503_SERVICE_UNAVAILABLE
    else:
        code = status.HTTP_500_INTERNAL_SERVER_ERROR
    raise HTTPException(code, str(exc)) from exc


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    openapi_extra=_FORM_SCHEMA,
    responses=problem_responses(413, 422, 503),
)
async def upload(request: Request, services: ServicesDep, user: CurrentUser) -> DatasetOut:
    """Upload CSV, Parquet or a SONATA nodes file (with `population`). Past the cap: 413.

    The file is stored and the dataset answered at once with `status: processing`; a circuit_q
    worker then reads it (progress on `GET /api/tasks/{task_id}/events`) and the dataset becomes
    `ready` (columns, rows, populations) or `failed` with a typed `error`."""
    try:
        return await service.upload(services, user, request)
    except (service.DatasetError, StorageError) as exc:
        _raise_http(exc)


@router.get("", responses=problem_responses(503))
async def list_datasets(services: ServicesDep, user: CurrentUser) -> list[DatasetSummary]:
    """Your datasets, newest first, after the shared sample."""
    try:
        return await service.list_visible(services, user)
    except StorageError as exc:
        _raise_http(exc)


@router.get("/{dataset_id}", responses=problem_responses(410, 503))
async def get_dataset(
    dataset_id: ResourceId, services: ServicesDep, user: CurrentUser
) -> DatasetOut:
    """Status; when ready: columns and DuckDB types, row count and the first rows. 410 when the
    retention policy deleted it."""
    try:
        return DatasetOut.of(await service.get_visible(services, user, dataset_id))
    except (service.DatasetError, StorageError) as exc:
        _raise_http(exc)


@router.delete(
    "/{dataset_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    responses=problem_responses(403, 410, 503),
)
async def delete_dataset(
    dataset_id: ResourceId, services: ServicesDep, user: CurrentUser
) -> Response:
    """Delete one of your datasets and its files. The shared sample is read-only (403)."""
    try:
        await service.delete(services, user, dataset_id)
    except (service.DatasetError, StorageError) as exc:
        _raise_http(exc)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
