"""Worker-side object store: tasks upload results (figures, files) and fetch inputs by key.

The app has its own copy in ``corral.app.storage.store`` (the two packages never import each
other); both must agree on the key grammar and on the local directory layout, which
``tests/test_storage.py`` checks by writing here and reading there.

Keys are ``{owner_id}/{kind}/{name}``; ``new_key(owner_id, kind)`` makes one with a random name.
Local layout: data at ``<local_dir>/data/<key>``, content type in ``<local_dir>/meta/<key>.json``.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import threading
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, Protocol, TypeAlias

from corral.config import StorageSettings

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

# Keep in sync with corral/app/storage/store.py (tests compare the two on a battery of keys).
_OWNER = r"[A-Za-z0-9][A-Za-z0-9._@|+=:-]{0,127}"
_KIND = r"[a-z][a-z0-9_-]{0,31}"
_NAME = r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}"
KEY_RE = re.compile(rf"{_OWNER}/{_KIND}/{_NAME}")
OWNER_RE = re.compile(_OWNER)
KIND_RE = re.compile(_KIND)
CONTENT_TYPE_RE = re.compile(
    r"[a-z0-9][a-z0-9!#$&^_.+-]{0,63}/[a-z0-9][a-z0-9!#$&^_.+-]{0,63}"
    r"(?:\s*;\s*[a-z0-9_.-]{1,32}=[A-Za-z0-9_.-]{1,64})*"
)
_CHUNK = 1 << 16
_BIG_CHUNK = 1 << 20
Buffer: TypeAlias = bytes | bytearray | memoryview  # what a large object is written from


class ObjectStoreError(Exception):
    """Base for every object store failure; the message is fit for a user or a log."""


class InvalidKey(ObjectStoreError, ValueError):
    """The key does not follow ``{owner_id}/{kind}/{name}`` with safe characters."""


class ObjectNotFound(ObjectStoreError):
    """No object under that key."""


class ObjectTooLarge(ObjectStoreError):
    """The object is bigger than the caller's cap."""


class StoreUnavailable(ObjectStoreError):
    """The store could not be reached or refused the call (infrastructure, worth a retry)."""


@dataclass(frozen=True)
class StoredObject:
    key: str
    size: int
    content_type: str


def check_key(key: str) -> str:
    """Return ``key`` if it is well formed; raise ``InvalidKey`` saying what is wrong otherwise."""
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
        raise ObjectStoreError(f"invalid content type {content_type!r}: expected 'type/subtype'")
    return value


def new_key(owner_id: str, kind: str) -> str:
    """A fresh key ``{owner_id}/{kind}/{uuid}``; raises ``InvalidKey`` for unusable parts."""
    if not OWNER_RE.fullmatch(owner_id or ""):
        raise InvalidKey(f"owner id {owner_id!r} cannot be used in an object key")
    if not KIND_RE.fullmatch(kind or ""):
        raise InvalidKey(f"kind {kind!r} must be lowercase letters, digits, _ or -")
    return f"{owner_id}/{kind}/{uuid.uuid4().hex}"


class ObjectStore(Protocol):
    """What tasks may do with the store. Every method is synchronous (workers are prefork)."""

    def put_file(self, key: str, path: str | Path, content_type: str) -> StoredObject: ...

    def put_bytes(self, key: str, data: bytes, content_type: str) -> StoredObject: ...

    def put_parts(self, key: str, parts: Sequence[Buffer], content_type: str) -> StoredObject:
        """One object from several buffers, written where they lie (no joined copy where the
        store allows: a 100 MB session snapshot is a header plus the pickled state)."""
        ...

    def download_to(self, key: str, path: str | Path, max_bytes: int) -> StoredObject: ...

    def read_bytes(self, key: str, max_bytes: int) -> bytearray:
        """The whole object in one writable buffer (no temp file, no second copy)."""
        ...

    def delete(self, key: str) -> None: ...


def _copy_capped(src: BinaryIO, dst: BinaryIO, max_bytes: int, key: str) -> int:
    total = 0
    while chunk := src.read(_CHUNK):
        total += len(chunk)
        if total > max_bytes:
            raise ObjectTooLarge(f"object {key} is larger than the {max_bytes}-byte limit")
        dst.write(chunk)
    return total


def _check_size(key: str, size: int, max_bytes: int) -> None:
    if size > max_bytes:
        raise ObjectTooLarge(f"object {key} is {size} bytes, over the {max_bytes}-byte limit")


def _read_all(src: BinaryIO, key: str, size: int, max_bytes: int) -> bytearray:
    """``size`` bytes (the object's stated length) into one buffer, then check that nothing
    follows (an object that grew since its head is still held to ``max_bytes``)."""
    buf = bytearray(size)
    view = memoryview(buf)
    readinto = getattr(src, "readinto", None)  # a file: straight into the buffer
    got = 0
    while got < size:
        if readinto is not None:
            n = readinto(view[got:size]) or 0
        else:
            chunk = src.read(min(_BIG_CHUNK, size - got))
            n = len(chunk)
            view[got : got + n] = chunk
        if not n:
            raise StoreUnavailable(f"object {key} ended after {got} of its {size} bytes")
        got += n
    view.release()
    extra = src.read(_CHUNK)
    while extra:
        size += len(extra)
        if size > max_bytes:
            raise ObjectTooLarge(f"object {key} is larger than the {max_bytes}-byte limit")
        buf += extra
        extra = src.read(_CHUNK)
    return buf


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


class LocalObjectStore:
    """A directory; writes are atomic (temp file + rename), so readers never see half a file."""

    def __init__(self, root: Path) -> None:
        self.root = root.expanduser().resolve()

    def data_path(self, key: str) -> Path:
        path = self.root / "data" / check_key(key)
        if not path.resolve().is_relative_to(self.root):  # defence in depth against symlinks
            raise InvalidKey(f"object key {key!r} leaves the store")
        return path

    def meta_path(self, key: str) -> Path:
        return self.root / "meta" / f"{check_key(key)}.json"

    def _write(self, key: str, src: BinaryIO | Sequence[Buffer], content_type: str) -> StoredObject:
        content_type = check_content_type(content_type)
        data, meta = self.data_path(key), self.meta_path(key)
        tmp = data.parent / f".tmp-{uuid.uuid4().hex}"
        meta_tmp = meta.parent / f".tmp-{uuid.uuid4().hex}"
        with _local_errors(key):
            data.parent.mkdir(parents=True, exist_ok=True)
            meta.parent.mkdir(parents=True, exist_ok=True)
            try:
                with tmp.open("xb") as out:
                    if isinstance(src, Sequence):
                        for part in src:
                            out.write(part)
                    else:
                        shutil.copyfileobj(src, out, _CHUNK)
                size = tmp.stat().st_size
                meta_tmp.write_text(json.dumps({"content_type": content_type, "size": size}))
                os.replace(meta_tmp, meta)
                os.replace(tmp, data)
            finally:
                for leftover in (tmp, meta_tmp):
                    with contextlib.suppress(FileNotFoundError):
                        leftover.unlink()
        return StoredObject(key, size, content_type)

    def put_file(self, key: str, path: str | Path, content_type: str) -> StoredObject:
        with Path(path).open("rb") as src:
            return self._write(key, src, content_type)

    def put_bytes(self, key: str, data: bytes, content_type: str) -> StoredObject:
        return self.put_parts(key, [data], content_type)

    def put_parts(self, key: str, parts: Sequence[Buffer], content_type: str) -> StoredObject:
        return self._write(key, parts, content_type)

    def read_bytes(self, key: str, max_bytes: int) -> bytearray:
        info = self.head(key)
        if info is None:
            raise ObjectNotFound(f"no object {key}")
        _check_size(key, info.size, max_bytes)
        try:
            with _local_errors(key), self.data_path(key).open("rb", buffering=0) as src:
                return _read_all(src, key, info.size, max_bytes)
        except FileNotFoundError as exc:
            raise ObjectNotFound(f"no object {key}") from exc

    def head(self, key: str) -> StoredObject | None:
        try:
            size = self.data_path(key).stat().st_size
        except FileNotFoundError:
            return None
        try:
            content_type = str(json.loads(self.meta_path(key).read_text())["content_type"])
        except (OSError, ValueError, KeyError):
            content_type = "application/octet-stream"
        return StoredObject(key, size, content_type)

    def download_to(self, key: str, path: str | Path, max_bytes: int) -> StoredObject:
        info = self.head(key)
        if info is None:
            raise ObjectNotFound(f"no object {key}")
        _check_size(key, info.size, max_bytes)
        try:
            with self.data_path(key).open("rb") as src, Path(path).open("wb") as dst:
                size = _copy_capped(src, dst, max_bytes, key)
        except FileNotFoundError as exc:
            raise ObjectNotFound(f"no object {key}") from exc
        return StoredObject(key, size, info.content_type)

    def delete(self, key: str) -> None:
        for path in (self.data_path(key), self.meta_path(key)):
            with _local_errors(key), contextlib.suppress(FileNotFoundError):
                path.unlink()


class S3ObjectStore:
    """S3 through boto3 on the internal endpoint; the bucket is created on first write."""

    def __init__(self, settings: StorageSettings) -> None:
        import boto3
        from botocore.config import Config

        s3 = settings.s3
        self.bucket = s3.bucket
        self.region = s3.region
        self.client: S3Client = boto3.session.Session().client(
            "s3",
            endpoint_url=s3.endpoint_url,
            region_name=s3.region,
            aws_access_key_id=s3.access_key_id,
            aws_secret_access_key=(
                s3.secret_access_key.get_secret_value() if s3.secret_access_key else None
            ),
            config=Config(
                signature_version="s3v4",
                s3={"addressing_style": "path" if s3.endpoint_url else "auto"},
                connect_timeout=5,
                read_timeout=60,
                retries={"max_attempts": 3, "mode": "standard"},
            ),
        )
        self._bucket_ready = False
        self._lock = threading.Lock()

    def _call(self, what: str, key: str) -> contextlib.AbstractContextManager[None]:
        return _translate_s3_errors(what, key)

    def ensure_bucket(self) -> None:
        if self._bucket_ready:
            return
        with self._lock, self._call("create bucket", self.bucket):
            if self._bucket_ready:
                return
            from botocore.exceptions import ClientError

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

    def put_file(self, key: str, path: str | Path, content_type: str) -> StoredObject:
        check_key(key)
        content_type = check_content_type(content_type)
        self.ensure_bucket()
        size = Path(path).stat().st_size
        with self._call("upload", key):
            self.client.upload_file(
                str(path), self.bucket, key, ExtraArgs={"ContentType": content_type}
            )
        return StoredObject(key, size, content_type)

    def put_bytes(self, key: str, data: bytes, content_type: str) -> StoredObject:
        check_key(key)
        content_type = check_content_type(content_type)
        self.ensure_bucket()
        with self._call("upload", key):
            self.client.put_object(Bucket=self.bucket, Key=key, Body=data, ContentType=content_type)
        return StoredObject(key, len(data), content_type)

    def put_parts(self, key: str, parts: Sequence[Buffer], content_type: str) -> StoredObject:
        # One PUT of the joined parts: the network copy dwarfs the join's.
        return self.put_bytes(key, b"".join(parts), content_type)

    def read_bytes(self, key: str, max_bytes: int) -> bytearray:
        with self._body(key, max_bytes) as (info, body):
            return _read_all(body, key, info.size, max_bytes)

    @contextlib.contextmanager
    def _body(self, key: str, max_bytes: int) -> Iterator[tuple[StoredObject, BinaryIO]]:
        """The object's size checked against ``max_bytes``, then its body, closed after."""
        info = self.head(key)
        if info is None:
            raise ObjectNotFound(f"no object {key}")
        _check_size(key, info.size, max_bytes)
        with self._call("download", key):
            body = self.client.get_object(Bucket=self.bucket, Key=key)["Body"]
            try:
                yield info, body  # type: ignore[misc]
            finally:
                body.close()

    def head(self, key: str) -> StoredObject | None:
        check_key(key)
        from botocore.exceptions import ClientError

        with self._call("head", key):
            try:
                reply = self.client.head_object(Bucket=self.bucket, Key=key)
            except ClientError as exc:
                if _status(exc) == 404:
                    return None
                raise
        content_type = reply.get("ContentType") or "application/octet-stream"
        return StoredObject(key, int(reply["ContentLength"]), content_type)

    def download_to(self, key: str, path: str | Path, max_bytes: int) -> StoredObject:
        with self._body(key, max_bytes) as (info, body), Path(path).open("wb") as dst:
            size = _copy_capped(body, dst, max_bytes, key)
        return StoredObject(key, size, info.content_type)

    def delete(self, key: str) -> None:
        check_key(key)
        with self._call("delete", key):
            self.client.delete_object(Bucket=self.bucket, Key=key)


def _status(exc: Exception) -> int | None:
    response = getattr(exc, "response", None) or {}
    status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    code = response.get("Error", {}).get("Code")
    if code in {"NoSuchKey", "NoSuchBucket", "NotFound", "404"}:
        return 404
    return int(status) if status is not None else None


@contextlib.contextmanager
def _translate_s3_errors(what: str, key: str) -> Iterator[None]:
    """botocore errors become ``ObjectNotFound`` / ``StoreUnavailable`` with a readable message."""
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        yield
    except ClientError as exc:
        if _status(exc) == 404 and what in {"download"}:
            raise ObjectNotFound(f"no object {key}") from exc
        message = exc.response.get("Error", {}).get("Message") or str(exc)
        raise StoreUnavailable(f"object store {what} failed for {key}: {message}") from exc
    except BotoCoreError as exc:
        raise StoreUnavailable(f"object store {what} failed for {key}: {exc}") from exc


_stores: dict[tuple[int, str], ObjectStore] = {}
_stores_lock = threading.Lock()


def get_object_store(settings: StorageSettings) -> ObjectStore:
    """The store for these settings, built once per process (never shared across a fork)."""
    secret = settings.s3.secret_access_key
    cache_key = (
        os.getpid(),
        settings.model_dump_json() + (secret.get_secret_value() if secret else ""),
    )
    with _stores_lock:
        store = _stores.get(cache_key)
        if store is None:
            store = (
                S3ObjectStore(settings)
                if settings.backend == "s3"
                else LocalObjectStore(settings.local_dir)
            )
            _stores[cache_key] = store
        return store
