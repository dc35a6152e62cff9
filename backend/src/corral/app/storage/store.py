"""App-side object store: async ``put``/``head``/``exists``/``delete``/``presign_get``.

Two backends behind ``ObjectStore``: a local directory (URLs signed with HMAC and served by the
app at ``/api/blobs/{key}``) and S3 (URLs presigned by boto3 for the PUBLIC endpoint; data calls
go to the internal one). boto3 and file I/O run in worker threads, never on the event loop.

Workers have their own copy in ``corral.tasks.object_store`` (the packages never import each
other); the key grammar and the local layout (``data/<key>``, ``meta/<key>.json``) must match.
"""

from __future__ import annotations

import abc
import contextlib
import hashlib
import hmac
import io
import json
import os
import re
import shutil
import tempfile
import threading
import time
import uuid
from collections.abc import AsyncIterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, Protocol
from urllib.parse import quote

import anyio

from corral.app.settings import AppStorageSettings

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

# Keep in sync with corral/tasks/object_store.py (tests compare the two on a battery of keys).
_OWNER = r"[A-Za-z0-9][A-Za-z0-9._@|+=:-]{0,127}"
_KIND = r"[a-z][a-z0-9_-]{0,31}"
_NAME = r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}"
KEY_RE = re.compile(rf"{_OWNER}/{_KIND}/{_NAME}")
OWNER_RE = re.compile(_OWNER)
CONTENT_TYPE_RE = re.compile(
    r"[a-z0-9][a-z0-9!#$&^_.+-]{0,63}/[a-z0-9][a-z0-9!#$&^_.+-]{0,63}"
    r"(?:\s*;\s*[a-z0-9_.-]{1,32}=[A-Za-z0-9_.-]{1,64})*"
)
BLOB_ROUTE = "/api/blobs/"
_CHUNK = 1 << 16
_SPOOL_IN_MEMORY = 1 << 20

PutData = bytes | BinaryIO | AsyncIterable[bytes]


class StorageError(Exception):
    """Base for object store failures; messages are fit for an API response."""


class InvalidKey(StorageError, ValueError):
    """The key is not ``{owner_id}/{kind}/{name}`` with safe characters."""


class InvalidContentType(StorageError, ValueError):
    """The content type is not ``type/subtype``."""


class ObjectTooLarge(StorageError):
    """More bytes than the caller's cap."""


class StoreUnavailable(StorageError):
    """The backend could not be reached or refused the call."""


class BadSignature(StorageError):
    """A local signed URL was tampered with, or has expired."""


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int
    content_type: str


def check_key(key: str) -> str:
    if not isinstance(key, str) or not KEY_RE.fullmatch(key):
        raise InvalidKey(
            f"invalid object key {key!r}: expected '<owner>/<kind>/<name>' where owner and name "
            "start with a letter or digit and use only letters, digits and . _ - "
            "(owner also @ | + = :), kind is lowercase, at most 128 characters each"
        )
    return key


def check_content_type(content_type: str) -> str:
    value = content_type.strip().lower() if isinstance(content_type, str) else ""
    if not CONTENT_TYPE_RE.fullmatch(value):
        raise InvalidContentType(
            f"invalid content type {content_type!r}: expected 'type/subtype', e.g. image/png"
        )
    return value


def key_owner(key: str) -> str:
    return check_key(key).split("/", 1)[0]


def new_key(owner_id: str, kind: str) -> str:
    if not OWNER_RE.fullmatch(owner_id or ""):
        raise InvalidKey(f"user id {owner_id!r} cannot be used in an object key")
    return check_key(f"{owner_id}/{kind}/{uuid.uuid4().hex}")


class ObjectStore(Protocol):
    async def put(
        self, key: str, data: PutData, content_type: str, *, max_bytes: int | None = None
    ) -> ObjectInfo: ...

    async def head(self, key: str) -> ObjectInfo | None: ...

    async def exists(self, key: str) -> bool: ...

    async def read(self, key: str, *, max_bytes: int) -> bytes: ...

    async def delete(self, key: str) -> None: ...

    async def presign_get(self, key: str, expires_s: int = 300) -> str: ...

    async def aclose(self) -> None: ...


def _too_large(max_bytes: int) -> ObjectTooLarge:
    return ObjectTooLarge(f"object is larger than the {max_bytes}-byte limit")


async def _as_file(data: PutData, max_bytes: int | None) -> tuple[BinaryIO, int, bool]:
    """Turn any input into a seekable file at position 0, its size, and whether we own it."""
    if isinstance(data, bytes | bytearray | memoryview):
        if max_bytes is not None and len(data) > max_bytes:
            raise _too_large(max_bytes)
        return io.BytesIO(bytes(data)), len(data), True
    if hasattr(data, "read"):
        fileobj: BinaryIO = data  # type: ignore[assignment]

        def measure() -> int:
            fileobj.seek(0, os.SEEK_END)
            size = fileobj.tell()
            fileobj.seek(0)
            return size

        size = await anyio.to_thread.run_sync(measure)
        if max_bytes is not None and size > max_bytes:
            raise _too_large(max_bytes)
        return fileobj, size, False
    spool = tempfile.SpooledTemporaryFile(max_size=_SPOOL_IN_MEMORY)  # noqa: SIM115 - returned
    size = 0
    try:
        async for chunk in data:
            size += len(chunk)
            if max_bytes is not None and size > max_bytes:
                raise _too_large(max_bytes)
            await anyio.to_thread.run_sync(spool.write, chunk)
        spool.seek(0)
    except BaseException:
        spool.close()
        raise
    return spool, size, True  # type: ignore[return-value]


class _Base(abc.ABC):
    async def put(
        self, key: str, data: PutData, content_type: str, *, max_bytes: int | None = None
    ) -> ObjectInfo:
        """Store ``data`` (bytes, a file, or an async byte stream) under ``key``."""
        check_key(key)
        content_type = check_content_type(content_type)
        fileobj, size, owned = await _as_file(data, max_bytes)
        try:
            return await anyio.to_thread.run_sync(self._put_sync, key, fileobj, size, content_type)
        finally:
            if owned:
                fileobj.close()

    async def head(self, key: str) -> ObjectInfo | None:
        check_key(key)
        return await anyio.to_thread.run_sync(self._head_sync, key)

    async def exists(self, key: str) -> bool:
        return await self.head(key) is not None

    async def read(self, key: str, *, max_bytes: int) -> bytes:
        """The object's bytes (small objects only): ``ObjectTooLarge`` past ``max_bytes``,
        ``FileNotFoundError`` when there is no such object."""
        check_key(key)
        data = await anyio.to_thread.run_sync(self._read_sync, key, max_bytes + 1)
        if len(data) > max_bytes:
            raise _too_large(max_bytes)
        return data

    async def delete(self, key: str) -> None:
        check_key(key)
        await anyio.to_thread.run_sync(self._delete_sync, key)

    async def aclose(self) -> None:
        return None

    @abc.abstractmethod
    def _put_sync(self, key: str, src: BinaryIO, size: int, content_type: str) -> ObjectInfo:
        """Blocking backend operation (run in a worker thread)."""

    @abc.abstractmethod
    def _head_sync(self, key: str) -> ObjectInfo | None:
        """Blocking backend operation (run in a worker thread)."""

    @abc.abstractmethod
    def _delete_sync(self, key: str) -> None:
        """Blocking backend operation (run in a worker thread)."""

    @abc.abstractmethod
    def _read_sync(self, key: str, limit: int) -> bytes:
        """Blocking backend operation (run in a worker thread): at most ``limit`` bytes."""


@contextlib.contextmanager
def _local_errors(key: str) -> Iterator[None]:
    """Permission and disk errors become a clear ``StoreUnavailable`` (not a bare 500)."""
    try:
        yield
    except (FileNotFoundError, IsADirectoryError):
        raise
    except OSError as exc:
        raise StoreUnavailable(
            f"local object store failed for {key}: {exc.strerror or exc}; the app and the "
            "workers must be able to read and write storage.local_dir (same user or a shared "
            "group with a setgid directory and umask 002)"
        ) from exc


class LocalObjectStore(_Base):
    """Files under ``root``; survives restarts; URLs are HMAC-signed and served by the app."""

    def __init__(self, root: Path, secret: bytes, public_base_url: str | None) -> None:
        self.root = root.expanduser().resolve()
        self._secret = secret
        self._base = public_base_url or ""

    def data_path(self, key: str) -> Path:
        path = self.root / "data" / check_key(key)
        if not path.resolve().is_relative_to(self.root):  # defence in depth against symlinks
            raise InvalidKey(f"object key {key!r} leaves the store")
        return path

    def meta_path(self, key: str) -> Path:
        return self.root / "meta" / f"{check_key(key)}.json"

    def _put_sync(self, key: str, src: BinaryIO, size: int, content_type: str) -> ObjectInfo:
        data, meta = self.data_path(key), self.meta_path(key)
        tmp = data.parent / f".tmp-{uuid.uuid4().hex}"
        meta_tmp = meta.parent / f".tmp-{uuid.uuid4().hex}"
        with _local_errors(key):
            data.parent.mkdir(parents=True, exist_ok=True)
            meta.parent.mkdir(parents=True, exist_ok=True)
            try:
                with tmp.open("xb") as out:
                    shutil.copyfileobj(src, out, _CHUNK)
                written = tmp.stat().st_size
                meta_tmp.write_text(json.dumps({"content_type": content_type, "size": written}))
                os.replace(meta_tmp, meta)
                os.replace(tmp, data)
            finally:
                for leftover in (tmp, meta_tmp):
                    with contextlib.suppress(FileNotFoundError):
                        leftover.unlink()
        return ObjectInfo(key, written, content_type)

    def _head_sync(self, key: str) -> ObjectInfo | None:
        try:
            size = self.data_path(key).stat().st_size
        except FileNotFoundError:
            return None
        try:
            content_type = str(json.loads(self.meta_path(key).read_text())["content_type"])
        except (OSError, ValueError, KeyError):
            content_type = "application/octet-stream"
        return ObjectInfo(key, size, content_type)

    def _read_sync(self, key: str, limit: int) -> bytes:
        with _local_errors(key), self.data_path(key).open("rb") as src:
            return src.read(limit)

    def _delete_sync(self, key: str) -> None:
        for path in (self.data_path(key), self.meta_path(key)):
            with _local_errors(key), contextlib.suppress(FileNotFoundError):
                path.unlink()

    def _sign(self, key: str, exp: int) -> str:
        message = f"corral-blob-v1\n{key}\n{exp}".encode()
        return hmac.new(self._secret, message, hashlib.sha256).hexdigest()

    async def presign_get(self, key: str, expires_s: int = 300) -> str:
        check_key(key)
        exp = int(time.time()) + expires_s
        sig = self._sign(key, exp)
        return f"{self._base}{BLOB_ROUTE}{quote(key, safe='/')}?exp={exp}&sig={sig}"

    def verify(self, key: str, exp: int, sig: str) -> None:
        """Raise ``BadSignature`` unless ``sig`` signs ``key`` and ``exp`` is in the future."""
        check_key(key)
        if not hmac.compare_digest(self._sign(key, exp), sig):
            raise BadSignature("bad signature: this link was altered; request a new one")
        if time.time() > exp:
            raise BadSignature("link expired; request a new one")


class S3ObjectStore(_Base):
    """S3 through boto3. Two clients: data on the internal endpoint, presigning on the public."""

    def __init__(self, settings: AppStorageSettings) -> None:
        import boto3
        from botocore.config import Config

        s3 = settings.s3
        self.bucket = s3.bucket
        self.region = s3.region
        session = boto3.session.Session()
        secret = s3.secret_access_key.get_secret_value() if s3.secret_access_key else None

        def client(endpoint: str | None) -> S3Client:
            return session.client(
                "s3",
                endpoint_url=endpoint,
                region_name=s3.region,
                aws_access_key_id=s3.access_key_id,
                aws_secret_access_key=secret,
                config=Config(
                    signature_version="s3v4",
                    s3={"addressing_style": "path" if endpoint else "auto"},
                    connect_timeout=5,
                    read_timeout=60,
                    retries={"max_attempts": 3, "mode": "standard"},
                    max_pool_connections=32,
                ),
            )

        self.client = client(s3.endpoint_url)
        self.presigner = client(s3.public_endpoint_url or s3.endpoint_url)
        self._bucket_ready = False
        self._lock = threading.Lock()

    def _ensure_bucket(self) -> None:
        if self._bucket_ready:
            return
        from botocore.exceptions import ClientError

        with self._lock, _translate("create bucket", self.bucket):
            if self._bucket_ready:
                return
            try:
                self.client.head_bucket(Bucket=self.bucket)
            except ClientError as exc:
                if _status(exc) != 404:
                    raise
                try:
                    if self.region == "us-east-1":
                        self.client.create_bucket(Bucket=self.bucket)
                    else:
                        self.client.create_bucket(
                            Bucket=self.bucket,
                            CreateBucketConfiguration={"LocationConstraint": self.region},  # type: ignore[typeddict-item]
                        )
                except ClientError as create_exc:
                    code = create_exc.response.get("Error", {}).get("Code")
                    if code not in {"BucketAlreadyOwnedByYou", "BucketAlreadyExists"}:
                        raise
            self._bucket_ready = True

    def _put_sync(self, key: str, src: BinaryIO, size: int, content_type: str) -> ObjectInfo:
        self._ensure_bucket()
        with _translate("upload", key):
            self.client.upload_fileobj(
                src, self.bucket, key, ExtraArgs={"ContentType": content_type}
            )
        return ObjectInfo(key, size, content_type)

    def _head_sync(self, key: str) -> ObjectInfo | None:
        from botocore.exceptions import ClientError

        with _translate("head", key):
            try:
                reply = self.client.head_object(Bucket=self.bucket, Key=key)
            except ClientError as exc:
                if _status(exc) == 404:
                    return None
                raise
        return ObjectInfo(
            key, int(reply["ContentLength"]), reply.get("ContentType") or "application/octet-stream"
        )

    def _read_sync(self, key: str, limit: int) -> bytes:
        from botocore.exceptions import ClientError

        with _translate("read", key):
            try:
                reply = self.client.get_object(
                    Bucket=self.bucket, Key=key, Range=f"bytes=0-{max(0, limit - 1)}"
                )
            except ClientError as exc:
                if _status(exc) == 404:
                    raise FileNotFoundError(key) from exc
                raise
            body: bytes = reply["Body"].read(limit)
            return body

    def _delete_sync(self, key: str) -> None:
        with _translate("delete", key):
            self.client.delete_object(Bucket=self.bucket, Key=key)

    async def presign_get(self, key: str, expires_s: int = 300) -> str:
        check_key(key)
        # Pure computation (no request), cheap enough for the event loop.
        return self.presigner.generate_presigned_url(
            "get_object", Params={"Bucket": self.bucket, "Key": key}, ExpiresIn=expires_s
        )


def _status(exc: Exception) -> int | None:
    response = getattr(exc, "response", None) or {}
    if response.get("Error", {}).get("Code") in {"NoSuchKey", "NoSuchBucket", "NotFound", "404"}:
        return 404
    status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return int(status) if status is not None else None


@contextlib.contextmanager
def _translate(what: str, key: str) -> Iterator[None]:
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        yield
    except ClientError as exc:
        message = exc.response.get("Error", {}).get("Message") or str(exc)
        raise StoreUnavailable(f"object store {what} failed for {key}: {message}") from exc
    except BotoCoreError as exc:
        raise StoreUnavailable(f"object store {what} failed for {key}: {exc}") from exc


async def build_object_store(settings: AppStorageSettings) -> ObjectStore:
    """The configured backend; boto3 client creation (slow, file I/O) runs off the loop."""
    if settings.backend == "s3":
        return await anyio.to_thread.run_sync(S3ObjectStore, settings)
    assert settings.signing_secret is not None  # guaranteed by AppStorageSettings
    return LocalObjectStore(
        settings.local_dir,
        settings.signing_secret.get_secret_value().encode(),
        settings.public_base_url,
    )
