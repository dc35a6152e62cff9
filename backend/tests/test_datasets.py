"""Datasets over real HTTP: uploads stored by the app and read by ``circuit.ingest`` on the real
circuit_q worker (processing -> ready | failed with a typed error), owner-only access, the shared
sample (built by a worker task), and the URL handed to circuit_q workers (local signed URL and
moto's S3)."""

from __future__ import annotations

import io
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from urllib.parse import parse_qs, urlsplit

import httpx
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from corral.app.datasets import service as datasets
from corral.app.datasets.schemas import DatasetRecord
from corral.app.main import create_app
from corral.app.settings import AppSettings, AppStorageSettings, DatasetSettings
from corral.app.storage.store import S3ObjectStore
from corral.task_schemas import CIRCUIT_ANALYZE, DatasetFormat
from corral.tasks.circuit import sample
from corral.tasks.circuit import sonata as task_sonata
from tests.conftest import LiveApp
from tests.support.circuit import (
    ingested,
    other_user_headers,
    upload,
    uploaded_id,
    wait_dataset,
    write_sonata,
)
from tests.support.procs import UvicornThread, env_vars
from tests.support.s3 import moto_s3_server

CSV = (
    b"node_id,layer,mtype,x,delete_count\n0,L2,L2_IPC,1.5,3\n1,L5,L5_MC,-2.25,0\n2,L5,L5_UPC,0,1\n"
)


def parquet_of(table: pa.Table) -> bytes:
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    return buffer.getvalue()


# -- the shared sample -------------------------------------------------------------------------


def test_sample_is_deterministic_with_realistic_proportions() -> None:
    first, second = sample.generate(), sample.generate()
    assert first.equals(second)
    assert sample.parquet_bytes(first) == sample.parquet_bytes(second)
    df = first.to_pandas()
    assert len(df) == 50_000 and df.node_id.is_unique
    assert list(df.columns) == [
        "node_id", "population", "region", "layer", "mtype", "etype", "morph_class",
        "synapse_class", "x", "y", "z", "depth",
    ]  # fmt: skip
    per_layer = df.layer.value_counts().to_dict()
    assert per_layer == sample.layer_counts()
    assert per_layer["L6"] > per_layer["L5"] > per_layer["L3"] > per_layer["L1"]
    inhibitory = (df.synapse_class == "INH").mean()
    assert 0.13 < inhibitory < 0.17, inhibitory
    assert (df[df.layer == "L1"].synapse_class == "INH").all()
    assert ((df.synapse_class == "INH") == (df.morph_class == "INT")).all()
    assert (df[df.synapse_class == "EXC"].etype == "cADpyr").all()
    for layer, (_, top, bottom, _) in sample.LAYERS.items():
        depth = df[df.layer == layer].depth
        assert depth.min() >= top and depth.max() <= bottom, layer
        prefixes = (layer, "L23_") if layer in {"L2", "L3"} else (layer,)
        assert df[df.layer == layer].mtype.str.startswith(prefixes).all(), layer
    assert np.allclose(df.y + df.depth, sample.THICKNESS_UM)
    assert (np.hypot(df.x, df.z) <= sample.COLUMN_RADIUS_UM + 0.1).all()


async def test_sample_is_listed_and_readable_by_everyone(api: httpx.AsyncClient) -> None:
    """Built by the circuit.build_sample task the app sent at start-up."""
    await wait_dataset(api, sample.SAMPLE_ID)
    listed = (await api.get("/api/datasets")).json()
    assert listed[0]["id"] == sample.SAMPLE_ID and listed[0]["read_only"] is True
    assert listed[0]["status"] == "ready"
    for headers in ({}, other_user_headers()):
        resp = await api.get(f"/api/datasets/{sample.SAMPLE_ID}", headers=headers)
        assert resp.status_code == 200, resp.text
        body = resp.json()
        assert body["row_count"] == 50_000
        assert [c["name"] for c in body["columns"]][:4] == [
            "node_id",
            "population",
            "region",
            "layer",
        ]
        assert {"name": "depth", "type": "DOUBLE"} in body["columns"]
        assert len(body["sample_rows"]) == 5 and body["sample_rows"][0][3] == "L1"
        assert "Markram" in body["description"]


async def test_sample_cannot_be_deleted(api: httpx.AsyncClient) -> None:
    resp = await api.delete(f"/api/datasets/{sample.SAMPLE_ID}")
    assert resp.status_code == 403
    assert "cannot be deleted" in resp.json()["detail"]
    assert (await api.get(f"/api/datasets/{sample.SAMPLE_ID}")).status_code == 200


# -- uploads -----------------------------------------------------------------------------------


async def test_csv_upload_list_read_delete(
    api: httpx.AsyncClient, stack_env: dict[str, str]
) -> None:
    body = await ingested(api, CSV, "cells.csv")
    assert body["status"] == "ready" and body["error"] is None
    assert body["format"] == "csv" and body["name"] == "cells.csv" and body["row_count"] == 3
    assert body["columns"] == [
        {"name": "node_id", "type": "BIGINT"},
        {"name": "layer", "type": "VARCHAR"},
        {"name": "mtype", "type": "VARCHAR"},
        {"name": "x", "type": "DOUBLE"},
        {"name": "delete_count", "type": "BIGINT"},
    ]
    assert body["sample_rows"][1] == [1, "L5", "L5_MC", -2.25, 0]
    dataset_id = body["id"]
    listed = [d["id"] for d in (await api.get("/api/datasets")).json()]
    assert dataset_id in listed
    assert (await api.get(f"/api/datasets/{dataset_id}")).json()["row_count"] == 3
    stored = Path(stack_env["CORRAL_STORAGE__LOCAL_DIR"]) / "data" / "dev-user" / "datasets"
    assert any(p.read_bytes() == CSV for p in stored.iterdir())
    parquet = stored / f"{dataset_id}.parquet"
    assert pq.read_table(parquet).num_rows == 3  # converted once, read by every analysis
    assert (await api.delete(f"/api/datasets/{dataset_id}")).status_code == 204
    assert not parquet.exists() and not any(p.read_bytes() == CSV for p in stored.iterdir())
    assert (await api.get(f"/api/datasets/{dataset_id}")).status_code == 404
    assert dataset_id not in [d["id"] for d in (await api.get("/api/datasets")).json()]
    assert (await api.delete(f"/api/datasets/{dataset_id}")).status_code == 404


async def test_parquet_upload_with_name(api: httpx.AsyncClient) -> None:
    table = pa.table({"gid": pa.array([1, 2, 3], pa.int32()), "mtype": ["a", "b", None]})
    body = await ingested(api, parquet_of(table), "blob.bin", name="my cells")
    assert (body["format"], body["name"], body["row_count"]) == ("parquet", "my cells", 3)
    assert body["columns"] == [
        {"name": "gid", "type": "INTEGER"},
        {"name": "mtype", "type": "VARCHAR"},
    ]
    assert body["sample_rows"][2] == [3, None]


async def test_sonata_upload_needs_a_population(api: httpx.AsyncClient, tmp_path: Path) -> None:
    path = tmp_path / "nodes.h5"
    truth = write_sonata(path)
    content = path.read_bytes()
    body = await ingested(api, content, "nodes.h5", population="cortex")
    assert body["status"] == "ready", body
    assert (body["format"], body["population"], body["row_count"]) == ("sonata", "cortex", 40)
    assert body["populations"] == ["cortex", "thalamus"]
    assert [c["name"] for c in body["columns"]] == [
        "node_id", "population", "node_type_id", "layer", "mtype", "x",
        "dynamics_params_holding_current",
    ]  # fmt: skip
    assert body["sample_rows"][0][:5] == [
        0, "cortex", truth["node_type_id"][0], truth["layer"][0], truth["mtype"][0],
    ]  # fmt: skip
    for fields, message in (
        ({}, "give the population to read; this file has: cortex, thalamus"),
        ({"population": "hippocampus"}, "population 'hippocampus' not in file; it has: "),
    ):
        failed = await ingested(api, content, "nodes.h5", **fields)
        assert failed["status"] == "failed", failed
        assert failed["error"]["type"] == "UnknownPopulation"
        assert (
            message in failed["error"]["message"]
            and "cortex, thalamus" in failed["error"]["message"]
        )


MALFORMED: list[tuple[str, bytes, dict[str, str], str]] = [
    ("empty.csv", b"", {}, "empty"),
    ("ragged.csv", b"a,b\n1,2\n3,4,5,6\n7,8\n", {}, "no consistent delimiter"),
    ("ragged-late.csv", b"a,b,c\n" + b"1,2,3\n" * 50 + b"4,5\n", {}, "malformed CSV"),
    ("binary.csv", b"\xff\xfe\x00\x81" * 300, {"format": "csv"}, "malformed CSV"),
    ("fake.parquet", CSV, {"format": "parquet"}, "not a Parquet file"),
    ("cut.parquet", b"PAR1" + b"\x00" * 100, {}, "unreadable Parquet"),
    ("nodes.h5", CSV, {"format": "sonata"}, "not an HDF5 file"),
    ("cells.csv", CSV, {"format": "xlsx"}, "format must be one of csv, parquet, sonata"),
    ("cells.csv", CSV, {"population": "cortex"}, "no `population` column"),
]


@pytest.mark.parametrize(("filename", "content", "fields", "message"), MALFORMED)
async def test_malformed_uploads_fail_with_a_typed_error(
    api: httpx.AsyncClient, filename: str, content: bytes, fields: dict[str, str], message: str
) -> None:
    """The request is well formed (201); the worker finds what is wrong with the file."""
    if "format must be one of" in message:  # a bad form field is the request's fault: 422
        resp = await upload(api, content, filename, **fields)
        assert resp.status_code == 422, resp.text
        assert message in resp.json()["detail"]
        return
    body = await ingested(api, content, filename, **fields)
    assert body["status"] == "failed", body
    assert body["error"]["type"] == "DatasetInvalid" and message in body["error"]["message"]
    assert body["row_count"] == 0 and body["columns"] == []
    analysis = await api.post(
        "/api/tools/circuit_population_analysis/invoke",
        json={"arguments": {"dataset_id": body["id"], "question": "q", "sql": "SELECT 1"}},
    )
    assert analysis.status_code == 409, analysis.text
    assert analysis.json()["type"] == "/errors/dataset-not-ready"


async def test_hdf5_without_nodes_fails(api: httpx.AsyncClient, tmp_path: Path) -> None:
    import h5py

    path = tmp_path / "edges.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("edges/x", data=[1, 2])
    body = await ingested(api, path.read_bytes(), "edges.h5", population="x")
    assert body["status"] == "failed"
    assert "no /nodes group" in body["error"]["message"]


async def test_upload_without_file_or_multipart_is_422(api: httpx.AsyncClient) -> None:
    resp = await api.post("/api/datasets", data={"name": "x"}, files={"other": ("a", b"1")})
    assert resp.status_code == 422 and "'file'" in resp.json()["detail"]
    resp = await api.post("/api/datasets", content=CSV, headers={"content-type": "text/csv"})
    assert resp.status_code == 422 and "multipart/form-data" in resp.json()["detail"]


@pytest.fixture(scope="module")
def small_cap_app(stack_env: dict[str, str], live_app: LiveApp) -> Iterator[str]:
    """A second app on the same Redis with a 1000-byte dataset cap."""
    with env_vars(stack_env):
        settings = AppSettings()  # type: ignore[call-arg]
    settings = settings.model_copy(update={"datasets": DatasetSettings(max_upload_bytes=1000)})
    with UvicornThread(create_app(settings)) as server:
        yield server.url


async def test_over_the_cap_is_413(small_cap_app: str, live_app: LiveApp) -> None:
    async with httpx.AsyncClient(base_url=small_cap_app, headers=live_app.headers) as client:
        resp = await upload(client, b"a,b\n" + b"1,2\n" * 400, "big.csv")
        assert resp.status_code == 413
        assert "1000 bytes" in resp.json()["detail"]
        small = await upload(client, CSV, "small.csv")
        assert small.status_code == 201
        assert (await wait_dataset(client, small.json()["id"]))["status"] == "ready"


async def test_another_users_dataset_is_404(api: httpx.AsyncClient) -> None:
    dataset_id = await uploaded_id(api, CSV, "mine.csv")
    mallory = other_user_headers()
    await wait_dataset(api, sample.SAMPLE_ID)
    assert (await api.get(f"/api/datasets/{dataset_id}", headers=mallory)).status_code == 404
    assert (await api.delete(f"/api/datasets/{dataset_id}", headers=mallory)).status_code == 404
    theirs = [d["id"] for d in (await api.get("/api/datasets", headers=mallory)).json()]
    assert dataset_id not in theirs and theirs[0] == sample.SAMPLE_ID
    assert (await api.get(f"/api/datasets/{dataset_id}")).status_code == 200
    for bad in ("nope", "Sample-Cortical-Column", "0" * 32):
        resp = await api.get(f"/api/datasets/{bad}")
        assert resp.status_code == 404 and "not found" in resp.json()["detail"]


# -- SONATA: the worker's reader -----------------------------------------------------------------


@pytest.mark.parametrize("reorder", [False, True])
def test_worker_sonata_reader(tmp_path: Path, reorder: bool) -> None:
    path = tmp_path / "nodes.h5"
    truth = write_sonata(path, reorder=reorder)
    table = task_sonata.read_population(path, "cortex")
    assert table.num_rows == 40
    assert table.column("mtype").to_pylist() == truth["mtype"]
    assert table.column("layer").to_pylist() == truth["layer"]
    assert table.column("x").to_pylist() == truth["x"]
    with pytest.raises(task_sonata.SonataError, match="it has: cortex, thalamus"):
        task_sonata.read_population(path, "nope")


def test_sonata_with_bad_library_index_is_refused(tmp_path: Path) -> None:
    import h5py

    path = tmp_path / "bad.h5"
    write_sonata(path)
    with h5py.File(path, "a") as f:
        f["nodes/cortex/0/mtype"][0] = 99
    with pytest.raises(task_sonata.SonataError, match="outside its @library"):
        task_sonata.read_population(path, "cortex")


# -- the URL a worker downloads from -----------------------------------------------------------


def _record(key: str) -> DatasetRecord:
    from datetime import UTC, datetime

    return DatasetRecord(
        id="0" * 32, owner_id="u", name="n", format=DatasetFormat.CSV, key=key, size=1,
        row_count=1, columns=[], created_at=datetime.now(UTC),
    )  # fmt: skip


async def test_worker_url_is_absolute_and_outlives_queueing(
    api: httpx.AsyncClient, live_app: LiveApp
) -> None:
    """Local backend: the app's signed URL on the workers' base URL, valid for expires + limits."""
    from corral.app.services import Services

    services: Services = live_app.server.server.config.app.state.services  # type: ignore[attr-defined]
    await wait_dataset(api, sample.SAMPLE_ID)
    record = await datasets.repository(services).get(sample.SAMPLE_ID)
    assert record is not None
    ttl = datasets.worker_url_ttl_s(CIRCUIT_ANALYZE)
    assert ttl >= CIRCUIT_ANALYZE.expires_s + CIRCUIT_ANALYZE.time_limit_s * 3
    url = await datasets.worker_url(services, record, ttl)
    assert url.startswith(live_app.url + "/api/blobs/system/datasets/")
    exp = int(parse_qs(urlsplit(url).query)["exp"][0])
    assert exp >= time.time() + CIRCUIT_ANALYZE.expires_s + CIRCUIT_ANALYZE.time_limit_s
    async with httpx.AsyncClient(timeout=10) as anonymous:
        got = await anonymous.get(url)
    assert got.status_code == 200 and got.content[:4] == b"PAR1"
    unset = SimpleNamespace(
        storage=services.storage,
        settings=services.settings.model_copy(update={"datasets": DatasetSettings()}),
    )
    with pytest.raises(datasets.WorkerURLUnavailable, match="CORRAL_DATASETS__WORKER_BASE_URL"):
        await datasets.worker_url(unset, record, ttl)  # type: ignore[arg-type]


async def test_worker_url_on_s3_uses_the_internal_endpoint() -> None:
    """Browsers get the public endpoint; workers must get the one inside the network."""
    with moto_s3_server() as moto:
        settings = AppStorageSettings(
            **moto.storage("corral-datasets", public_endpoint="http://public.invalid:9000")  # type: ignore[arg-type]
        )
        store = S3ObjectStore(settings)
        key = "u/datasets/abc"
        await store.put(key, CSV, "text/csv")
        services = SimpleNamespace(
            storage=store, settings=SimpleNamespace(datasets=DatasetSettings())
        )
        url = await datasets.worker_url(services, _record(key), 5000)  # type: ignore[arg-type]
        assert url.startswith(moto.endpoint + "/corral-datasets/u/datasets/abc?")
        assert "Expires=5000" in url or "X-Amz-Expires=5000" in url
        assert (await store.presign_get(key)).startswith("http://public.invalid:9000/")
        async with httpx.AsyncClient(timeout=10) as worker:
            got = await worker.get(url)
        assert got.status_code == 200 and got.content == CSV
