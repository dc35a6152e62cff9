"""Storage use cases: capped uploads, owner-checked redirects and deletes, local blob serving.

Ownership is the key's first segment. Another user's key answers exactly like a missing one, so
a caller can never learn which keys exist.
"""

from __future__ import annotations

import mimetypes
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from pathlib import Path

from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import Request

from corral.app.auth.service import User
from corral.app.services import Services
from corral.app.storage.schemas import UploadOut
from corral.app.storage.store import (
    InvalidKey,
    LocalObjectStore,
    ObjectInfo,
    ObjectTooLarge,
    StorageError,
    check_content_type,
    check_key,
    key_owner,
    new_key,
)

UPLOAD_FIELD = "file"
# Multipart framing around the file: boundaries, part headers, a few small fields.
_FRAMING_SLACK = 64 * 1024


class NotFound(StorageError):
    """No such object for this caller (missing, or someone else's)."""


class BadUpload(StorageError):
    """The upload request is malformed; the message says how to fix it."""


class BodyTooLarge(Exception):
    pass


UPLOAD_CHUNK = 1 << 20
"""Body chunks are joined up to this size before parsing: a 500 MB upload is ~500 parser calls
and file writes (each a thread hop) instead of ~8000, so the event loop stays free."""


async def capped(
    stream: AsyncIterator[bytes], limit: int, chunk: int = UPLOAD_CHUNK
) -> AsyncGenerator[bytes]:
    """Pass the body through in chunks of about ``chunk`` bytes, stopping as soon as it exceeds
    ``limit`` (no unbounded spooling)."""
    seen = 0
    pending: list[bytes] = []
    size = 0
    async for part in stream:
        seen += len(part)
        if seen > limit:
            raise BodyTooLarge
        pending.append(part)
        size += len(part)
        if size >= chunk:
            yield b"".join(pending)
            pending, size = [], 0
    if pending:
        yield b"".join(pending)


def _too_large(cap: int) -> ObjectTooLarge:
    return ObjectTooLarge(f"file too large: the limit is {cap} bytes")


async def read_upload_form(
    request: Request,
    cap: int,
    *,
    field: str,
    usage: str,
    bad: Callable[[str], Exception],
    too_large: Callable[[int], Exception],
) -> tuple[UploadFile, dict[str, str]]:
    """The multipart file in ``field`` (at most ``cap`` bytes) and the form's text fields.

    The body is read through ``capped``, so an oversized upload stops as soon as it passes the
    cap; ``usage`` says how to send it right, ``bad``/``too_large`` make the caller's errors.
    """
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        raise bad(usage)
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > cap + _FRAMING_SLACK:
        raise too_large(cap)
    parser = MultiPartParser(
        request.headers, capped(request.stream(), cap + _FRAMING_SLACK), max_files=1, max_fields=8
    )
    try:
        form = await parser.parse()
    except BodyTooLarge as exc:
        raise too_large(cap) from exc
    except MultiPartException as exc:
        raise bad(f"bad multipart body: {exc.message}") from exc
    upload = form.get(field)
    fields = {k: v for k, v in form.items() if isinstance(v, str)}
    if not isinstance(upload, UploadFile):
        await form.close()
        raise bad(f"missing file: send it in a multipart field named '{field}'")
    if upload.size is not None and upload.size > cap:
        await form.close()
        raise too_large(cap)
    return upload, fields


def _content_type_of(upload: UploadFile) -> str:
    given = (upload.content_type or "").strip()
    if given and given.lower() != "application/octet-stream":
        return check_content_type(given)
    guessed, _ = mimetypes.guess_type(upload.filename or "")
    return check_content_type(guessed or "application/octet-stream")


async def upload(services: Services, user: User, request: Request) -> UploadOut:
    """Store one uploaded file under ``{user.id}/uploads/{uuid}``."""
    cap = services.settings.storage.max_upload_bytes
    key = new_key(user.id, "uploads")
    part, _ = await read_upload_form(
        request,
        cap,
        field=UPLOAD_FIELD,
        usage=f"send multipart/form-data with the file in a '{UPLOAD_FIELD}' field",
        bad=BadUpload,
        too_large=_too_large,
    )
    try:
        content_type = _content_type_of(part)
        info = await services.storage.put(key, part.file, content_type, max_bytes=cap)
    finally:
        await part.close()
    return UploadOut(key=info.key, size=info.size, content_type=info.content_type)


async def owned_head(services: Services, user: User, key: str) -> ObjectInfo:
    """The object's metadata if ``user`` owns it and it exists; ``NotFound`` otherwise."""
    if key_owner(key) != user.id:
        raise NotFound(f"no object {key}")
    info = await services.storage.head(key)
    if info is None:
        raise NotFound(f"no object {key}")
    return info


async def download_url(services: Services, user: User, key: str) -> str:
    await owned_head(services, user, key)
    return await services.storage.presign_get(key, services.settings.storage.url_ttl_s)


async def delete(services: Services, user: User, key: str) -> None:
    await owned_head(services, user, key)
    await services.storage.delete(key)


async def open_blob(services: Services, key: str, exp: int, sig: str) -> tuple[Path, ObjectInfo]:
    """Check a local signed URL; the signature is the credential (browsers send no token)."""
    store = services.storage
    if not isinstance(store, LocalObjectStore):
        raise NotFound("signed local URLs are not served with the s3 backend")
    check_key(key)
    store.verify(key, exp, sig)
    info = await store.head(key)
    if info is None:
        raise NotFound(f"no object {key}")
    return store.data_path(key), info


__all__ = [
    "BadUpload",
    "InvalidKey",
    "NotFound",
    "delete",
    "download_url",
    "open_blob",
    "owned_head",
    "upload",
]
