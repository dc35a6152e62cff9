"""Object store: the same tests against moto's S3 server and the local directory backend.

Each backend gets its own real app (uvicorn on a free loopback port) sharing the session's
redis-server; S3 is moto's server on another free port, reached with real boto3 and httpx.
The worker-side store (``corral.tasks.object_store``) is exercised against the same backends
and must agree with the app on keys and layout.
"""

from __future__ import annotations

import functools
import io
import json
import os
import secrets
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urljoin, urlsplit

import httpx
import pytest

from corral.app.auth.service import issue_dev_token
from corral.app.db import DatabaseSettings
from corral.app.main import create_app
from corral.app.settings import AppSettings, AppStorageSettings, AuthSettings
from corral.app.storage import store as app_store
from corral.config import RedisSettings, StorageSettings
from corral.tasks import object_store as tasks_store
from tests.support.db import new_sqlite_database
from tests.support.procs import RedisServer, UvicornThread, free_port
from tests.support.s3 import MotoS3, moto_s3_server

OWNER = "storage-owner"
OTHER = "storage-other"
CAP = 100_000
DEV_SECRET = "storage-dev-" + secrets.token_hex(24)
SIGNING_SECRET = "storage-sign-" + secrets.token_hex(24)
PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 8


@dataclass
class Stack:
    backend: str
    url: str
    settings: AppSettings
    tasks_storage: StorageSettings
    moto: MotoS3 | None

    def client(self, user: str | None = OWNER) -> httpx.AsyncClient:
        headers = {}
        if user is not None:
            auth = AuthSettings(mode="dev", dev_secret=DEV_SECRET, dev_user_id=user)
            headers["Authorization"] = f"Bearer {issue_dev_token(auth)}"
        return httpx.AsyncClient(base_url=self.url, headers=headers, timeout=20)

    def absolute(self, location: str) -> str:
        return urljoin(self.url + "/", location)

    def stored_keys(self, prefix: str) -> set[str]:
        """What the backend really holds under ``prefix`` (read behind the app's back)."""
        if self.moto is not None:
            reply = self.moto.client().list_objects_v2(
                Bucket=self.settings.storage.s3.bucket, Prefix=prefix
            )
            return {o["Key"] for o in reply.get("Contents", [])}
        root = self.settings.storage.local_dir / "data"
        return (
            {str(p.relative_to(root)) for p in (root / prefix).rglob("*") if p.is_file()}
            if (root / prefix).exists()
            else set()
        )


@functools.cache
def database_url() -> str:
    """The storage apps' database: a migrated SQLite file (storage itself keeps no rows)."""
    return new_sqlite_database(Path(tempfile.mkdtemp(prefix="corral-storage-db-")))


def make_settings(redis: RedisServer, storage: dict[str, Any]) -> AppSettings:
    return AppSettings(
        database=DatabaseSettings(url=database_url()),
        redis=RedisSettings(url=redis.url),
        auth=AuthSettings(mode="dev", dev_secret=DEV_SECRET, dev_user_id=OWNER),
        storage=AppStorageSettings(**{"max_upload_bytes": CAP, **storage}),
    )


@pytest.fixture(scope="module")
def moto() -> Iterator[MotoS3]:
    with moto_s3_server() as server:
        yield server


@pytest.fixture(scope="module")
def local_stack(
    redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    root = tmp_path_factory.mktemp("store")
    settings = make_settings(
        redis_server, {"backend": "local", "local_dir": root, "signing_secret": SIGNING_SECRET}
    )
    with UvicornThread(create_app(settings)) as server:
        yield Stack("local", server.url, settings, StorageSettings(local_dir=root), None)


@pytest.fixture(scope="module")
def s3_stack(redis_server: RedisServer, moto: MotoS3) -> Iterator[Stack]:
    storage = moto.storage(f"corral-{uuid.uuid4().hex[:10]}", f"http://localhost:{moto.port}")
    settings = make_settings(redis_server, storage)
    with UvicornThread(create_app(settings)) as server:
        yield Stack("s3", server.url, settings, StorageSettings(**storage), moto)


@pytest.fixture(params=["local", "s3"])
def stack(request: pytest.FixtureRequest) -> Stack:
    return request.getfixturevalue(f"{request.param}_stack")  # type: ignore[no-any-return]


async def upload(
    stack: Stack, data: bytes, content_type: str = "image/png", filename: str = "plot.png"
) -> httpx.Response:
    async with stack.client() as c:
        return await c.post("/api/storage", files={"file": (filename, data, content_type)})


async def fetch(stack: Stack, key: str, user: str = OWNER) -> httpx.Response:
    """GET /api/storage/{key} as ``user``, then follow the 307 without any credentials."""
    async with stack.client(user) as c:
        redirect = await c.get(f"/api/storage/{key}")
    assert redirect.status_code == 307, redirect.text
    assert redirect.headers["cache-control"] == "no-store"
    async with httpx.AsyncClient(timeout=20) as anonymous:
        return await anonymous.get(stack.absolute(redirect.headers["location"]))


# ---- the same behaviour on both backends ------------------------------------------------


async def test_upload_then_fetch_through_presigned_url(stack: Stack) -> None:
    r = await upload(stack, PNG)
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["key"].startswith(f"{OWNER}/uploads/")
    assert body["size"] == len(PNG)
    assert body["content_type"] == "image/png"
    assert stack.stored_keys(f"{OWNER}/uploads/") >= {body["key"]}

    got = await fetch(stack, body["key"])
    assert got.status_code == 200
    assert got.content == PNG
    assert got.headers["content-type"] == "image/png"


async def test_content_type_preserved_or_guessed(stack: Stack) -> None:
    r = await upload(stack, b'{"a": 1}', "application/json", "x.bin")
    assert (await fetch(stack, r.json()["key"])).headers["content-type"] == "application/json"
    r = await upload(stack, b"a,b\n1,2\n", "application/octet-stream", "table.csv")
    assert r.json()["content_type"] == "text/csv"
    assert (await fetch(stack, r.json()["key"])).headers["content-type"].startswith("text/csv")


async def test_delete_removes_the_object(stack: Stack) -> None:
    key = (await upload(stack, PNG)).json()["key"]
    async with stack.client() as c:
        old_url = stack.absolute((await c.get(f"/api/storage/{key}")).headers["location"])
        assert (await c.delete(f"/api/storage/{key}")).status_code == 204
        assert (await c.get(f"/api/storage/{key}")).status_code == 404
        again = await c.delete(f"/api/storage/{key}")
    assert again.status_code == 404
    assert key not in stack.stored_keys(f"{OWNER}/uploads/")
    async with httpx.AsyncClient(timeout=20) as anonymous:
        assert (await anonymous.get(old_url)).status_code == 404


async def test_another_users_key_looks_missing(stack: Stack) -> None:
    key = (await upload(stack, PNG)).json()["key"]
    missing = f"{OTHER}/uploads/{uuid.uuid4().hex}"
    async with stack.client(OTHER) as c:
        theirs = await c.get(f"/api/storage/{key}")
        own_missing = await c.get(f"/api/storage/{missing}")
        delete_theirs = await c.delete(f"/api/storage/{key}")
    assert theirs.status_code == own_missing.status_code == delete_theirs.status_code == 404
    assert theirs.json()["detail"] == f"no object {key}"
    assert own_missing.json()["detail"] == f"no object {missing}"
    assert (await fetch(stack, key)).content == PNG  # the owner still has it


@pytest.mark.parametrize(
    "key",
    [
        "..%2F..%2Fetc%2Fpasswd",
        f"{OWNER}/uploads/..%2F..%2F..%2Fetc%2Fpasswd",
        f"{OWNER}/uploads/.hidden",
        f"{OWNER}/uploads",
        f"{OWNER}/Uploads/abc",
        f"{OWNER}/uploads/a%00b",
        f"{OWNER}/uploads/a%5Cb",
        f"{OWNER}/uploads/a/b",
        "%2Fetc/passwd/x",
        f"{OWNER}/uploads/" + "a" * 129,
    ],
)
async def test_bad_keys_are_422(stack: Stack, key: str) -> None:
    async with stack.client() as c:
        for method in ("GET", "DELETE"):
            r = await c.request(method, f"/api/storage/{key}")
            assert r.status_code == 422, (method, key, r.text)
            assert "invalid object key" in r.json()["detail"]


async def test_upload_size_cap(stack: Stack) -> None:
    before = stack.stored_keys(f"{OWNER}/uploads/")
    exact = await upload(stack, b"x" * CAP, "text/plain", "a.txt")
    assert exact.status_code == 201, exact.text
    before.add(exact.json()["key"])

    just_over = await upload(stack, b"x" * (CAP + 1), "text/plain", "a.txt")
    assert just_over.status_code == 413
    assert f"limit is {CAP} bytes" in just_over.json()["detail"]

    far_over = await upload(stack, b"x" * (CAP * 10), "text/plain", "a.txt")
    assert far_over.status_code == 413  # refused on Content-Length, body never read

    boundary = "corralboundary"
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="a.txt"\r\n'
        "Content-Type: text/plain\r\n\r\n"
    ).encode()

    async def chunked() -> AsyncIterator[bytes]:  # no Content-Length: counted as it streams
        yield head
        for _ in range(40):
            yield b"y" * 65_536
        yield f"\r\n--{boundary}--\r\n".encode()

    async with stack.client() as c:
        streamed = await c.post(
            "/api/storage",
            content=chunked(),
            headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
        )
    assert streamed.status_code == 413, streamed.text
    assert stack.stored_keys(f"{OWNER}/uploads/") == before  # nothing partial left behind


@pytest.mark.parametrize("declare_length", [True, False])
async def test_upload_stops_reading_past_the_cap(declare_length: bool) -> None:
    """An oversized body is refused without being read (or spooled) to the end."""
    from starlette.requests import Request

    from corral.app.storage import service

    chunk, total_chunks, pulled = 65_536, 1_000, 0
    head = b'--b\r\nContent-Disposition: form-data; name="file"; filename="a"\r\n\r\n'

    async def receive() -> dict[str, Any]:
        nonlocal pulled
        pulled += 1
        body = head if pulled == 1 else b"z" * chunk
        return {"type": "http.request", "body": body, "more_body": pulled < total_chunks}

    headers = [(b"content-type", b"multipart/form-data; boundary=b")]
    if declare_length:
        headers.append((b"content-length", str(chunk * total_chunks).encode()))
    request = Request({"type": "http", "method": "POST", "headers": headers}, receive)
    with pytest.raises(app_store.ObjectTooLarge, match=f"limit is {CAP} bytes"):
        await service.read_upload_form(
            request,
            CAP,
            field=service.UPLOAD_FIELD,
            usage="multipart please",
            bad=service.BadUpload,
            too_large=service._too_large,
        )
    budget = 0 if declare_length else (CAP + service._FRAMING_SLACK) // chunk + 2
    assert pulled <= budget


async def test_malformed_uploads_are_422(stack: Stack) -> None:
    async with stack.client() as c:
        not_multipart = await c.post("/api/storage", json={"file": "x"})
        no_file = await c.post("/api/storage", data={"other": "x"}, files={"f2": ("a", b"1")})
        bad_type = await c.post("/api/storage", files={"file": ("a", b"1", "not a type")})
        broken = await c.post(
            "/api/storage",
            content=b"garbage",
            headers={"Content-Type": "multipart/form-data"},
        )
    assert not_multipart.status_code == 422
    assert "multipart/form-data" in not_multipart.json()["detail"]
    assert no_file.status_code == 422
    assert "field named 'file'" in no_file.json()["detail"]
    assert bad_type.status_code == 422
    assert "invalid content type" in bad_type.json()["detail"]
    assert broken.status_code == 422
    assert "boundary" in broken.json()["detail"].lower()


async def test_storage_routes_need_a_token(stack: Stack) -> None:
    key = f"{OWNER}/uploads/{uuid.uuid4().hex}"
    async with stack.client(user=None) as c:
        assert (await c.post("/api/storage", files={"file": ("a", b"1")})).status_code == 401
        assert (await c.get(f"/api/storage/{key}")).status_code == 401
        assert (await c.delete(f"/api/storage/{key}")).status_code == 401


async def test_worker_store_and_app_agree(stack: Stack, tmp_path: Path) -> None:
    store = tasks_store.get_object_store(stack.tasks_storage)
    assert tasks_store.get_object_store(stack.tasks_storage) is store  # built once per process
    source = tmp_path / "figure.png"
    source.write_bytes(PNG)

    key = tasks_store.new_key(OWNER, "plots")
    stored = store.put_file(key, source, "image/png")
    assert (stored.key, stored.size, stored.content_type) == (key, len(PNG), "image/png")
    got = await fetch(stack, key)
    assert (got.content, got.headers["content-type"]) == (PNG, "image/png")

    svg_key = tasks_store.new_key(OWNER, "plots")
    store.put_bytes(svg_key, b"<svg/>", "image/svg+xml")
    assert (await fetch(stack, svg_key)).headers["content-type"] == "image/svg+xml"

    uploaded = (await upload(stack, b"input data", "text/plain", "in.txt")).json()["key"]
    target = tmp_path / "in.txt"
    info = store.download_to(uploaded, target, max_bytes=100)
    assert target.read_bytes() == b"input data"
    assert info.content_type == "text/plain"
    with pytest.raises(tasks_store.ObjectTooLarge, match="over the 5-byte limit"):
        store.download_to(uploaded, tmp_path / "capped", max_bytes=5)
    with pytest.raises(tasks_store.ObjectNotFound):
        store.download_to(f"{OWNER}/uploads/{uuid.uuid4().hex}", tmp_path / "x", max_bytes=5)
    with pytest.raises(tasks_store.InvalidKey):
        store.put_bytes("../../etc/passwd", b"x", "text/plain")

    # Large objects (session snapshots) are written from parts and read into one buffer.
    big = bytearray(os.urandom(3 << 20))
    parts_key = tasks_store.new_key(OWNER, "scratch")
    stored = store.put_parts(parts_key, [b"head", memoryview(big)[1:], b""], "application/x-a")
    assert stored.size == 4 + len(big) - 1
    back = store.read_bytes(parts_key, max_bytes=stored.size)
    assert isinstance(back, bytearray) and back == b"head" + big[1:]
    assert (await fetch(stack, parts_key)).content == bytes(back)  # the app reads it too
    with pytest.raises(tasks_store.ObjectTooLarge, match="over the"):
        store.read_bytes(parts_key, max_bytes=stored.size - 1)
    with pytest.raises(tasks_store.ObjectNotFound):
        store.read_bytes(f"{OWNER}/scratch/{uuid.uuid4().hex}", max_bytes=5)

    store.delete(key)
    async with stack.client() as c:
        assert (await c.get(f"/api/storage/{key}")).status_code == 404


async def test_app_store_api(stack: Stack) -> None:
    storage = await app_store.build_object_store(stack.settings.storage)
    try:
        key = app_store.new_key(OWNER, "plots")

        async def chunks() -> AsyncIterator[bytes]:
            for part in (b"ab", b"cd", b"ef"):
                yield part

        info = await storage.put(key, chunks(), "text/plain", max_bytes=6)
        assert (info.size, info.content_type) == (6, "text/plain")
        assert await storage.head(key) == info
        assert await storage.exists(key)

        file_key = app_store.new_key(OWNER, "plots")
        await storage.put(file_key, io.BytesIO(PNG), "image/png")
        assert (await storage.head(file_key)) == app_store.ObjectInfo(
            file_key, len(PNG), "image/png"
        )
        assert await storage.read(file_key, max_bytes=len(PNG)) == PNG
        with pytest.raises(app_store.ObjectTooLarge):
            await storage.read(file_key, max_bytes=len(PNG) - 1)
        with pytest.raises(FileNotFoundError):
            await storage.read(app_store.new_key(OWNER, "plots"), max_bytes=10)

        too_big = app_store.new_key(OWNER, "plots")
        with pytest.raises(app_store.ObjectTooLarge):
            await storage.put(too_big, chunks(), "text/plain", max_bytes=5)
        with pytest.raises(app_store.ObjectTooLarge):
            await storage.put(too_big, b"123456", "text/plain", max_bytes=5)
        with pytest.raises(app_store.ObjectTooLarge):
            await storage.put(too_big, io.BytesIO(b"123456"), "text/plain", max_bytes=5)
        assert not await storage.exists(too_big)
        with pytest.raises(app_store.InvalidKey):
            await storage.put("a/../b", b"x", "text/plain")
        with pytest.raises(app_store.InvalidContentType):
            await storage.put(key, b"x", "text/html<script>")

        await storage.delete(key)
        assert not await storage.exists(key)
        assert await storage.head(key) is None
        await storage.delete(key)  # idempotent
    finally:
        await storage.aclose()


# ---- local backend: signed URLs served by the app, layout on disk, restarts ----------------


def _url_parts(url: str) -> tuple[str, dict[str, str]]:
    parts = urlsplit(url)
    return parts.path, {k: v[0] for k, v in parse_qs(parts.query).items()}


async def test_local_signed_url_tampering_is_403(local_stack: Stack) -> None:
    key = (await upload(local_stack, PNG)).json()["key"]
    other = (await upload(local_stack, b"other")).json()["key"]
    async with local_stack.client() as c:
        path, q = _url_parts((await c.get(f"/api/storage/{key}")).headers["location"])
    assert path == f"/api/blobs/{key}"
    async with httpx.AsyncClient(base_url=local_stack.url, timeout=20) as anon:
        assert (await anon.get(path, params=q)).status_code == 200
        flipped = q["sig"][:-1] + ("0" if q["sig"][-1] != "0" else "1")
        cases = {
            "sig": {**q, "sig": flipped},
            "exp": {**q, "exp": str(int(q["exp"]) + 3600)},
            "key": q,
        }
        for what, params in cases.items():
            target = f"/api/blobs/{other}" if what == "key" else path
            r = await anon.get(target, params=params)
            assert r.status_code == 403, (what, r.text)
            assert "bad signature" in r.json()["detail"]
        missing = await anon.get(path, params={"exp": q["exp"]})
        assert missing.status_code == 422
        traversal = await anon.get("/api/blobs/..%2F..%2Fetc%2Fpasswd", params=q)
        assert traversal.status_code == 422


async def test_local_signed_url_expires(local_stack: Stack) -> None:
    key = (await upload(local_stack, PNG)).json()["key"]
    storage = await app_store.build_object_store(local_stack.settings.storage)
    fresh = await storage.presign_get(key, expires_s=60)
    expired = await storage.presign_get(key, expires_s=-1)
    async with httpx.AsyncClient(timeout=20) as anon:
        assert (await anon.get(local_stack.absolute(fresh))).status_code == 200
        r = await anon.get(local_stack.absolute(expired))
    assert r.status_code == 403
    assert "expired" in r.json()["detail"]


async def test_local_blob_headers_keep_content_inert(local_stack: Stack) -> None:
    html = (await upload(local_stack, b"<script>x</script>", "text/html", "a.html")).json()
    got = await fetch(local_stack, html["key"])
    assert got.headers["content-disposition"].startswith("attachment")
    assert got.headers["x-content-type-options"] == "nosniff"
    assert "sandbox" in got.headers["content-security-policy"]
    png = await fetch(local_stack, (await upload(local_stack, PNG)).json()["key"])
    assert "content-disposition" not in png.headers  # images render inline for <img>


async def test_local_layout_on_disk(local_stack: Stack) -> None:
    key = (await upload(local_stack, PNG)).json()["key"]
    root = local_stack.settings.storage.local_dir
    assert (root / "data" / key).read_bytes() == PNG
    assert json.loads((root / "meta" / f"{key}.json").read_text())["content_type"] == "image/png"
    assert not [p for p in root.rglob(".tmp-*")]


async def test_local_store_survives_restart(local_stack: Stack, redis_server: RedisServer) -> None:
    from corral.app.services import Services

    key = (await upload(local_stack, PNG)).json()["key"]
    async with local_stack.client() as c:
        old_link = local_stack.absolute((await c.get(f"/api/storage/{key}")).headers["location"])

    services = await Services.start(local_stack.settings)
    try:
        assert await services.storage.head(key) == app_store.ObjectInfo(key, len(PNG), "image/png")
    finally:
        await services.aclose()

    restarted = Stack("local", "", local_stack.settings, local_stack.tasks_storage, None)
    with UvicornThread(create_app(local_stack.settings)) as server:
        restarted.url = server.url
        got = await fetch(restarted, key)
        assert got.content == PNG
        async with httpx.AsyncClient(timeout=20) as anon:  # a link from before still works
            path, q = _url_parts(old_link)
            assert (await anon.get(server.url + path, params=q)).content == PNG


async def test_local_disk_errors_are_a_clear_503(local_stack: Stack) -> None:
    root = local_stack.settings.storage.local_dir
    (root / "data").mkdir(exist_ok=True)
    (root / "data" / "blocked-user").write_text("a file where a directory should be")
    async with local_stack.client("blocked-user") as c:
        r = await c.post("/api/storage", files={"file": ("a.png", PNG, "image/png")})
    assert r.status_code == 503
    assert "local object store failed" in r.json()["detail"]
    worker = tasks_store.get_object_store(local_stack.tasks_storage)
    with pytest.raises(tasks_store.StoreUnavailable, match="local_dir"):
        worker.put_bytes(tasks_store.new_key("blocked-user", "plots"), b"x", "text/plain")


async def test_local_public_base_url_makes_absolute_links(tmp_path: Path) -> None:
    settings = AppStorageSettings(
        local_dir=tmp_path, signing_secret=SIGNING_SECRET, public_base_url="https://corral.test/"
    )
    storage = await app_store.build_object_store(settings)
    url = await storage.presign_get(f"{OWNER}/plots/abc")
    assert url.startswith("https://corral.test/api/blobs/storage-owner/plots/abc?exp=")


def test_local_backend_needs_a_real_signing_secret(tmp_path: Path) -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="CORRAL_STORAGE__SIGNING_SECRET"):
        AppStorageSettings(local_dir=tmp_path)
    with pytest.raises(ValidationError, match="placeholder"):
        AppStorageSettings(local_dir=tmp_path, signing_secret="changeme")
    with pytest.raises(ValidationError, match="at least 32"):
        AppStorageSettings(local_dir=tmp_path, signing_secret="short-secret")
    with pytest.raises(ValidationError, match="http"):
        AppStorageSettings(
            local_dir=tmp_path, signing_secret=SIGNING_SECRET, public_base_url="corral.test"
        )


# ---- S3 backend: endpoints, bucket creation, outages ----------------------------------------


async def test_s3_presigned_url_uses_public_endpoint(s3_stack: Stack) -> None:
    assert s3_stack.moto is not None
    key = (await upload(s3_stack, PNG)).json()["key"]
    async with s3_stack.client() as c:
        location = (await c.get(f"/api/storage/{key}")).headers["location"]
    parts = urlsplit(location)
    assert parts.netloc == f"localhost:{s3_stack.moto.port}"  # public, not the internal 127.0.0.1
    assert parts.path == f"/{s3_stack.settings.storage.s3.bucket}/{key}"
    query = parse_qs(parts.query)
    assert query["X-Amz-Expires"] == [str(s3_stack.settings.storage.url_ttl_s)]
    assert query["X-Amz-Algorithm"] == ["AWS4-HMAC-SHA256"]
    async with httpx.AsyncClient(timeout=20) as browser:
        assert (await browser.get(location)).content == PNG


async def test_s3_data_calls_use_internal_endpoint(moto: MotoS3) -> None:
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens: any data call there would fail
    storage_kwargs = moto.storage(f"corral-{uuid.uuid4().hex[:10]}", dead)
    storage = await app_store.build_object_store(AppStorageSettings(**storage_kwargs))
    key = app_store.new_key(OWNER, "plots")
    await storage.put(key, PNG, "image/png")
    assert await storage.exists(key)
    assert (await storage.presign_get(key)).startswith(f"{dead}/")
    worker = tasks_store.get_object_store(StorageSettings(**storage_kwargs))
    worker.put_bytes(tasks_store.new_key(OWNER, "plots"), b"x", "text/plain")
    await storage.delete(key)
    assert not await storage.exists(key)


async def test_s3_bucket_created_on_first_write(moto: MotoS3) -> None:
    from botocore.exceptions import ClientError

    for side in ("app", "worker"):
        bucket = f"corral-new-{side}-{uuid.uuid4().hex[:8]}"
        kwargs = moto.storage(bucket)
        with pytest.raises(ClientError):
            moto.client().head_bucket(Bucket=bucket)
        key = tasks_store.new_key(OWNER, "plots")
        if side == "app":
            await (await app_store.build_object_store(AppStorageSettings(**kwargs))).put(
                key, b"x", "text/plain"
            )
        else:
            tasks_store.get_object_store(StorageSettings(**kwargs)).put_bytes(
                key, b"x", "text/plain"
            )
        moto.client().head_bucket(Bucket=bucket)
        assert moto.client().head_object(Bucket=bucket, Key=key)["ContentType"] == "text/plain"


async def test_s3_unreachable_is_a_clear_503(redis_server: RedisServer, moto: MotoS3) -> None:
    kwargs = moto.storage("corral-unreachable")
    kwargs["s3"]["endpoint_url"] = f"http://127.0.0.1:{free_port()}"  # type: ignore[index]
    down = Stack("s3", "", make_settings(redis_server, kwargs), StorageSettings(**kwargs), None)
    with UvicornThread(create_app(down.settings)) as server:
        down.url = server.url
        r = await upload(down, PNG)
        assert r.status_code == 503
        assert "object store" in r.json()["detail"]
        async with down.client() as c:
            head = await c.get(f"/api/storage/{OWNER}/uploads/abc")
        assert head.status_code == 503
    with pytest.raises(tasks_store.StoreUnavailable, match="object store"):
        tasks_store.get_object_store(down.tasks_storage).put_bytes(
            tasks_store.new_key(OWNER, "plots"), b"x", "text/plain"
        )


def test_s3_backend_needs_credentials() -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="access_key_id"):
        StorageSettings(backend="s3")


# ---- both sides parse keys the same way -----------------------------------------------------


@pytest.mark.parametrize(
    ("key", "valid"),
    [
        ("dev-user/plots/0123abcd", True),
        ("auth0|5f3a/uploads/x.png", True),
        ("me@example.com/uploads/file_1.csv", True),
        ("u/k/n", True),
        ("../plots/x", False),
        ("/u/plots/x", False),
        ("u/plots/../x", False),
        ("u/plots/.x", False),
        ("u//x", False),
        ("u/plots/x/y", False),
        ("u/plots", False),
        ("u/Plots/x", False),
        ("u/plots/x y", False),
        ("u/plots/x\n", False),
        ("u\\plots\\x", False),
        ("", False),
        ("u/plots/" + "a" * 128, True),
        ("u/plots/" + "a" * 129, False),
    ],
)
def test_key_grammar_is_the_same_on_both_sides(key: str, valid: bool) -> None:
    def ok(check: Any) -> bool:
        try:
            check(key)
        except ValueError:
            return False
        return True

    assert ok(app_store.check_key) is valid
    assert ok(tasks_store.check_key) is valid


def test_new_keys_are_valid_on_both_sides() -> None:
    for make in (tasks_store.new_key, app_store.new_key):
        key = make("auth0|user", "plots")
        owner, kind, name = key.split("/")
        assert (owner, kind, len(name)) == ("auth0|user", "plots", 32)
        app_store.check_key(key)
        tasks_store.check_key(key)
    with pytest.raises(tasks_store.InvalidKey):
        tasks_store.new_key("../x", "plots")
    with pytest.raises(app_store.InvalidKey):
        app_store.new_key("a/b", "plots")
