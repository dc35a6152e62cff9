"""``/api/storage`` (upload, owner-only redirect, delete) and ``/api/blobs`` (local signed URLs)."""

from __future__ import annotations

import os
from typing import Annotated, NoReturn

from fastapi import APIRouter, HTTPException, Query, Request, Response, status
from fastapi.responses import FileResponse, RedirectResponse

from corral.app.deps import CurrentUser, ServicesDep
from corral.app.params import ObjectKey
from corral.app.problems import problem_responses
from corral.app.storage import service
from corral.app.storage.schemas import UploadOut
from corral.app.storage.store import (
    BLOB_ROUTE,
    BadSignature,
    InvalidContentType,
    InvalidKey,
    ObjectTooLarge,
    StorageError,
    StoreUnavailable,
)

router = APIRouter(tags=["storage"])

# Served inline; anything else is a download so user content never renders as a page here.
INLINE_TYPES = frozenset(
    {
        "image/png",
        "image/jpeg",
        "image/gif",
        "image/webp",
        "image/svg+xml",
        "text/plain",
        "application/json",
        "text/csv",
        "application/pdf",
    }
)
BLOB_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; sandbox",
    "Cache-Control": "private, max-age=300",
}


def _raise_http(exc: StorageError) -> NoReturn:
    if isinstance(exc, InvalidKey | InvalidContentType | service.BadUpload):
        code = status.HTTP_422_UNPROCESSABLE_CONTENT
    elif isinstance(exc, ObjectTooLarge):
        code = status.HTTP_413_CONTENT_TOO_LARGE
    elif isinstance(exc, service.NotFound):
        code = status.HTTP_404_NOT_FOUND
    elif isinstance(exc, BadSignature):
        code = status.HTTP_403_FORBIDDEN
    elif isinstance(exc, StoreUnavailable):
        code = status.HTTP_503_SERVICE_UNAVAILABLE
    else:
        code = status.HTTP_500_INTERNAL_SERVER_ERROR
    raise HTTPException(code, str(exc)) from exc


@router.post(
    "/storage",
    status_code=status.HTTP_201_CREATED,
    responses=problem_responses(413, 422, 503),
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "multipart/form-data": {
                    "schema": {
                        "type": "object",
                        "required": [service.UPLOAD_FIELD],
                        "properties": {
                            service.UPLOAD_FIELD: {"type": "string", "format": "binary"}
                        },
                    }
                }
            },
        }
    },
)
async def upload(request: Request, services: ServicesDep, user: CurrentUser) -> UploadOut:
    """Upload one file (multipart field `file`); returns its key. Past the size cap: 413."""
    try:
        return await service.upload(services, user, request)
    except StorageError as exc:
        _raise_http(exc)


@router.get(
    "/storage/{key:path}",
    status_code=status.HTTP_307_TEMPORARY_REDIRECT,
    response_class=RedirectResponse,
    responses=problem_responses(503),
)
async def download(key: ObjectKey, services: ServicesDep, user: CurrentUser) -> RedirectResponse:
    """Redirect the owner to a short-lived presigned URL; anyone else gets 404."""
    try:
        url = await service.download_url(services, user, key)
    except StorageError as exc:
        _raise_http(exc)
    return RedirectResponse(
        url, status.HTTP_307_TEMPORARY_REDIRECT, headers={"Cache-Control": "no-store"}
    )


@router.delete(
    "/storage/{key:path}", status_code=status.HTTP_204_NO_CONTENT, responses=problem_responses(503)
)
async def delete(key: ObjectKey, services: ServicesDep, user: CurrentUser) -> Response:
    """Delete one of your objects. Anyone else's key is a 404, as if it did not exist."""
    try:
        await service.delete(services, user, key)
    except StorageError as exc:
        _raise_http(exc)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get(BLOB_ROUTE.removeprefix("/api").rstrip("/") + "/{key:path}", include_in_schema=False)
async def blob(
    key: str,
    services: ServicesDep,
    exp: Annotated[int, Query(description="Expiry, Unix seconds (signed).")],
    sig: Annotated[str, Query(max_length=128, description="HMAC-SHA256 of key and exp.")],
) -> FileResponse:
    """Serve a local-backend object to whoever holds a valid, unexpired signed URL."""
    try:
        path, info = await service.open_blob(services, key, exp, sig)
    except StorageError as exc:
        _raise_http(exc)
    headers = dict(BLOB_HEADERS)
    if info.content_type.split(";", 1)[0] not in INLINE_TYPES:
        headers["Content-Disposition"] = f'attachment; filename="{os.path.basename(key)}"'
    return FileResponse(path, media_type=info.content_type, headers=headers)
