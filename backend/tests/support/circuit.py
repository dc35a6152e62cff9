"""Helpers for the dataset and circuit-analysis tests: small SONATA files, uploads, invokes."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import h5py
import httpx
import numpy as np

from corral.app.auth.service import issue_dev_token
from corral.app.settings import AuthSettings
from tests.conftest import DEV_SECRET

SONATA_MTYPES = ["L5_TPC:A", "L5_MC", "L6_IPC"]
SONATA_LAYERS = ["5", "6"]


def other_user_headers(user_id: str = "mallory") -> dict[str, str]:
    token = issue_dev_token(AuthSettings(mode="dev", dev_secret=DEV_SECRET, dev_user_id=user_id))  # type: ignore[arg-type]
    return {"Authorization": f"Bearer {token}"}


def write_sonata(path: Path, *, reorder: bool = False) -> dict[str, Any]:
    """Two populations; ``cortex`` has 40 nodes with enumerated mtype (via @library)."""
    rng = np.random.default_rng(7)
    n = 40
    mtype_idx = rng.integers(0, len(SONATA_MTYPES), n)
    layer = np.where(mtype_idx == 2, "6", "5")
    x = np.round(rng.uniform(-100, 100, n), 3)
    truth = {
        "mtype": [SONATA_MTYPES[i] for i in mtype_idx],
        "layer": [str(v) for v in layer],
        "x": x.tolist(),
        "node_type_id": [int(i) for i in mtype_idx + 100],
    }
    with h5py.File(path, "w") as f:
        pop = f.create_group("nodes/cortex")
        pop.create_dataset("node_type_id", data=mtype_idx + 100)
        group = pop.create_group("0")
        order = np.arange(n)
        if reorder:  # node i's attributes live at row order[i] of group 0
            order = rng.permutation(n)
            inverse = np.empty(n, dtype=np.int64)
            inverse[order] = np.arange(n)
            pop.create_dataset("node_group_id", data=np.zeros(n, dtype=np.int64))
            pop.create_dataset("node_group_index", data=order)
            mtype_idx, layer, x = mtype_idx[inverse], layer[inverse], x[inverse]
        group.create_dataset("mtype", data=mtype_idx.astype(np.uint32))
        group.create_dataset("layer", data=layer.astype(object), dtype=h5py.string_dtype())
        group.create_dataset("x", data=x)
        group.create_group("@library").create_dataset(
            "mtype", data=np.array(SONATA_MTYPES, dtype=object), dtype=h5py.string_dtype()
        )
        group.create_group("dynamics_params").create_dataset("holding_current", data=np.zeros(n))
        other = f.create_group("nodes/thalamus")
        other.create_dataset("node_type_id", data=np.zeros(3, dtype=np.int64))
        other.create_group("0").create_dataset("x", data=np.zeros(3))
    return truth


async def upload(
    api: httpx.AsyncClient,
    content: bytes,
    filename: str,
    *,
    headers: dict[str, str] | None = None,
    **fields: str,
) -> httpx.Response:
    return await api.post(
        "/api/datasets",
        files={"file": (filename, content, "application/octet-stream")},
        data=fields,
        headers=headers,
    )


async def wait_dataset(
    api: httpx.AsyncClient, dataset_id: str, *, timeout_s: float = 30, **kwargs: Any
) -> dict[str, Any]:
    """The dataset once a worker has read it (``ready`` or ``failed``)."""
    deadline = time.monotonic() + timeout_s
    while True:
        resp = await api.get(f"/api/datasets/{dataset_id}", **kwargs)
        assert resp.status_code == 200, resp.text
        body: dict[str, Any] = resp.json()
        if body["status"] != "processing":
            return body
        if time.monotonic() > deadline:
            raise TimeoutError(f"dataset {dataset_id} still processing after {timeout_s}s")
        await asyncio.sleep(0.05)


async def ingested(
    api: httpx.AsyncClient, content: bytes, filename: str, **fields: str
) -> dict[str, Any]:
    """Upload (201, ``processing``) and wait for the worker's verdict."""
    resp = await upload(api, content, filename, **fields)
    assert resp.status_code == 201, resp.text
    assert resp.json()["status"] == "processing", resp.text
    return await wait_dataset(api, resp.json()["id"])


async def uploaded_id(api: httpx.AsyncClient, content: bytes, filename: str, **fields: str) -> str:
    body = await ingested(api, content, filename, **fields)
    assert body["status"] == "ready", body
    return str(body["id"])


async def analyze(
    api: httpx.AsyncClient, arguments: dict[str, Any], *, timeout_s: float = 60
) -> dict[str, Any]:
    resp = await api.post(
        "/api/tools/circuit_population_analysis/invoke",
        json={"arguments": arguments, "timeout_s": timeout_s},
    )
    assert resp.status_code == 200, resp.text
    body: dict[str, Any] = resp.json()
    return body


def sql_reply(sql: str, explanation: str = "computed") -> str:
    return json.dumps({"sql": sql, "explanation": explanation})


class _Claims10GB(BaseHTTPRequestHandler):
    """Claims a 10 GB body (Content-Length); /endless streams without a length; /flaky fails
    once with 503; /garbage is a broken Parquet file."""

    def do_GET(self) -> None:
        self.server.hits += 1  # type: ignore[attr-defined]
        if self.path.startswith("/garbage"):  # claims nothing, is not a Parquet file
            body = b"PAR1 this is not really parquet"
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        if self.path.startswith("/flaky"):  # 503 the first time, a small CSV after
            body = b"a,b\n1,2\n3,4\n"
            self.send_response(503 if self.server.hits == 1 else 200)  # type: ignore[attr-defined]
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        if self.path.startswith("/endless"):
            self.send_header("Connection", "close")
            self.end_headers()
            chunk = b"a,b\n" * 16384
            try:
                while True:
                    self.wfile.write(chunk)
            except (BrokenPipeError, ConnectionResetError):
                return
        self.send_header("Content-Length", str(10 * 1024**3))
        self.end_headers()
        try:
            for _ in range(64):  # a few MB at most, then the test is long decided
                self.wfile.write(b"x" * 65536)
        except (BrokenPipeError, ConnectionResetError):
            return

    def log_message(self, *args: Any) -> None:
        return


@contextmanager
def huge_download_server() -> Iterator[ThreadingHTTPServer]:
    """A loopback HTTP server whose files are far larger than any cap."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Claims10GB)
    server.daemon_threads = True
    server.hits = 0  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
