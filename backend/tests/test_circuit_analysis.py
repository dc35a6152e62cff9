"""``circuit_population_analysis`` end to end: HTTP → app → Redis → circuit_q worker → the app's
signed blob URL → DuckDB → the scripted OpenAI-protocol model → object store → result.

Numbers are checked against pandas on the same data; SQL safety is checked through the worker.
"""

from __future__ import annotations

import io
import json
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import urljoin

import httpx
import pyarrow.parquet as pq
import pytest
import redis

from corral.config import RedisSettings
from corral.task_schemas import (
    CIRCUIT_ANALYZE,
    PRIORITY_NORMAL,
    PRIORITY_STEPS,
    CircuitAnalyzeInput,
    DatasetFormat,
    decode_event,
    is_terminal,
    message_kwargs,
    task_events_key,
)
from corral.tasks.circuit import sample
from tests.conftest import LiveApp
from tests.support.circuit import (
    analyze,
    huge_download_server,
    other_user_headers,
    sql_reply,
    uploaded_id,
    write_sonata,
)
from tests.support.fake_openai import FakeOpenAI, Reply
from tests.support.procs import RedisServer, wait_until

SAMPLE = sample.SAMPLE_ID
QUESTION = "How many excitatory cells per layer, and their mean depth?"
EXC_PER_LAYER = (
    "SELECT layer, count(*) AS excitatory_cells, round(avg(depth), 2) AS mean_depth_um "
    "FROM neurons WHERE synapse_class = 'EXC' GROUP BY layer ORDER BY layer"
)


def events(redis_server: RedisServer, task_id: str) -> list[Any]:
    client = redis.Redis.from_url(
        redis_server.url + f"/{RedisSettings().streams_db}", decode_responses=True
    )
    try:
        return [decode_event(f) for _, f in client.xrange(task_events_key(task_id))]
    finally:
        client.close()


def assert_rows_close(actual: list[list[Any]], expected: list[list[Any]], tol: float) -> None:
    """Same shape, equal text and integers, floats within ``tol`` (rounding of the same mean)."""
    assert len(actual) == len(expected), (actual, expected)
    for got, want in zip(actual, expected, strict=True):
        assert len(got) == len(want), (got, want)
        for a, b in zip(got, want, strict=True):
            if isinstance(b, float):
                assert a == pytest.approx(b, abs=tol), (got, want)
            else:
                assert a == b, (got, want)


def progress_messages(redis_server: RedisServer, task_id: str) -> list[str]:
    return [e.message for e in events(redis_server, task_id) if e.type == "progress"]


async def test_tool_is_listed(api: httpx.AsyncClient) -> None:
    tools = {t["name"]: t for t in (await api.get("/api/tools")).json()}
    params = tools["circuit_population_analysis"]["parameters"]
    assert set(params["properties"]) == {
        "dataset_id", "question", "sql", "population", "model", "max_rows",
    }  # fmt: skip
    assert set(params["required"]) == {"dataset_id", "question"}


async def test_question_answered_with_correct_numbers(
    api: httpx.AsyncClient, fake_llm: FakeOpenAI, redis_server: RedisServer
) -> None:
    fake_llm.script(
        "fake-primary",
        Reply(text=sql_reply(EXC_PER_LAYER), prompt_tokens=812, completion_tokens=64,
              cached_tokens=512),
    )  # fmt: skip
    body = await analyze(api, {"dataset_id": SAMPLE, "question": QUESTION})
    assert body["status"] == "done", body
    out = body["output"]
    assert out["error"] is None, out
    df = sample.generate().to_pandas()
    exc = df[df.synapse_class == "EXC"].groupby("layer").depth.agg(["size", "mean"])
    expected = [
        [layer, int(row["size"]), round(float(row["mean"]), 2)] for layer, row in exc.iterrows()
    ]
    assert [r[0] for r in expected] == ["L2", "L3", "L4", "L5", "L6"]  # L1 is all inhibitory
    assert_rows_close(out["rows"], expected, tol=0.011)
    assert out["columns"] == [
        {"name": "layer", "type": "VARCHAR"},
        {"name": "excitatory_cells", "type": "BIGINT"},
        {"name": "mean_depth_um", "type": "DOUBLE"},
    ]
    assert (out["row_count"], out["truncated"], out["result_key"]) == (5, False, None)
    assert out["sql"] == EXC_PER_LAYER and out["dataset_rows"] == 50_000
    assert (out["model"], out["provider_model"], out["llm_requests"]) == (
        "primary", "fake-primary", 1,
    )  # fmt: skip
    assert out["usage"] == {
        "prompt_tokens": 812, "completion_tokens": 64, "cached_tokens": 512, "total_tokens": 876,
    }  # fmt: skip
    assert all(out["timings"][k] >= 0 for k in ("download_s", "load_s", "model_s", "query_s"))
    (request,) = fake_llm.requests()
    assert request.body["response_format"]["type"] == "json_schema"
    assert request.body["response_format"]["json_schema"]["schema"]["required"] == [
        "sql", "explanation",
    ]  # fmt: skip
    prompt = request.prompt
    assert "Table neurons: 50000 rows" in prompt
    assert '- layer: VARCHAR (6 distinct values: "L1", "L2", "L3", "L4", "L5", "L6")' in prompt
    assert "- depth: DOUBLE (min 0." in prompt and "max 2081." in prompt
    assert '"mtype": "L1_' in prompt  # sample rows
    assert prompt.endswith(f"Question: {QUESTION}")
    steps = progress_messages(redis_server, body["task_id"])
    assert steps[0] == "downloading dataset" and steps[1].startswith("loading ")
    assert steps[2:4] == ["asking model", "running query"]


async def test_sql_given_directly_skips_the_model(
    api: httpx.AsyncClient, fake_llm: FakeOpenAI
) -> None:
    sql = (
        "SELECT mtype, count(*) AS n FROM neurons WHERE layer = 'L1' "
        "GROUP BY ALL ORDER BY n DESC, mtype"
    )
    body = await analyze(api, {"dataset_id": SAMPLE, "question": "L1 m-types", "sql": sql})
    out = body["output"]
    assert out["error"] is None, out
    df = sample.generate().to_pandas()
    counts = df[df.layer == "L1"].mtype.value_counts()
    expected = sorted(((m, int(n)) for m, n in counts.items()), key=lambda r: (-r[1], r[0]))
    assert [tuple(r) for r in out["rows"]] == expected
    assert fake_llm.requests() == []
    assert out["usage"]["total_tokens"] == 0 and out["model"] is None
    assert out["attempts"] == [{"sql": sql, "source": "caller", "error": None}]


async def test_sonata_dataset(api: httpx.AsyncClient, tmp_path: Path) -> None:
    path = tmp_path / "nodes.h5"
    truth = write_sonata(path, reorder=True)
    dataset_id = await uploaded_id(api, path.read_bytes(), "nodes.h5", population="cortex")
    sql = (
        "SELECT mtype, layer, count(*) AS n, round(sum(x), 3) AS sx FROM neurons "
        "GROUP BY ALL ORDER BY mtype"
    )
    out = (await analyze(api, {"dataset_id": dataset_id, "question": "per mtype", "sql": sql}))[
        "output"
    ]
    assert out["error"] is None, out
    expected: dict[str, list[Any]] = {}
    for mtype, layer, x in zip(truth["mtype"], truth["layer"], truth["x"], strict=True):
        row = expected.setdefault(mtype, [mtype, layer, 0, 0.0])
        row[2] += 1
        row[3] += x
    want = [[m, layer, n, round(sx, 3)] for m, layer, n, sx in sorted(expected.values())]
    assert_rows_close(out["rows"], want, tol=0.0011)
    other = await analyze(
        api, {"dataset_id": dataset_id, "question": "n", "population": "thalamus",
              "sql": "SELECT population, count(*) FROM neurons GROUP BY 1"},
    )  # fmt: skip
    assert other["output"]["rows"] == [["thalamus", 3]]
    resp = await api.post(
        "/api/tools/circuit_population_analysis/invoke",
        json={"arguments": {"dataset_id": dataset_id, "question": "q", "population": "nope"}},
    )
    assert resp.status_code == 422
    assert "cortex, thalamus" in json.dumps(resp.json())


UNSAFE = {
    "read_csv": ("SELECT * FROM read_csv('/etc/passwd')", "table functions such as READ_CSV"),
    "copy": ("COPY neurons TO '/tmp/corral-circuit-leak.csv'", "only SELECT is allowed, not COPY"),
    "attach": ("ATTACH '/tmp/corral-circuit.db' AS other", "only SELECT is allowed, not ATTACH"),
    "install": ("INSTALL httpfs", "only SELECT is allowed"),
    "set": ("SET enable_external_access = true", "only SELECT is allowed, not SET"),
    "two statements": ("SELECT 1; SELECT count(*) FROM neurons", "exactly one statement"),
    "file as table": ("SELECT * FROM '/etc/passwd'", "unknown table '/etc/passwd'"),
    "system table": ("SELECT * FROM duckdb_settings()", "table functions such as"),
}


@pytest.mark.parametrize("case", list(UNSAFE))
async def test_unsafe_sql_is_refused(api: httpx.AsyncClient, case: str) -> None:
    sql, message = UNSAFE[case]
    body = await analyze(api, {"dataset_id": SAMPLE, "question": case, "sql": sql})
    assert body["status"] == "done", body
    out = body["output"]
    assert out["error"]["type"] == "UnsafeSQL", out
    assert message in out["error"]["message"]
    assert "neurons" in out["error"]["message"]  # says what to do instead
    assert out["rows"] == [] and out["columns"] == []
    assert not Path("/tmp/corral-circuit-leak.csv").exists()
    assert not Path("/tmp/corral-circuit.db").exists()


async def test_a_column_named_delete_count_is_fine(api: httpx.AsyncClient) -> None:
    csv = b"cell,delete_count,update\n" + b"".join(
        f"{i},{i % 4},{i}\n".encode() for i in range(100)
    )
    dataset_id = await uploaded_id(api, csv, "counts.csv")
    sql = (
        'SELECT sum(delete_count) AS deletes, max("update") AS last FROM neurons '
        "WHERE delete_count > 0"
    )
    out = (await analyze(api, {"dataset_id": dataset_id, "question": "q", "sql": sql}))["output"]
    assert out["error"] is None, out
    assert out["rows"] == [[sum(i % 4 for i in range(100)), 99]]


async def test_population_filters_a_table_with_a_population_column(api: httpx.AsyncClient) -> None:
    csv = b"population,n\n" + b"".join(f"{'ab'[i % 2]},{i}\n".encode() for i in range(10))
    dataset_id = await uploaded_id(api, csv, "two.csv")
    args = {
        "dataset_id": dataset_id,
        "question": "q",
        "sql": "SELECT count(*), sum(n) FROM neurons",
    }
    assert (await analyze(api, args))["output"]["rows"] == [[10, 45]]
    assert (await analyze(api, {**args, "population": "b"}))["output"]["rows"] == [[5, 25]]
    on_sample = {"dataset_id": SAMPLE, "question": "q", "sql": "SELECT count(*) FROM neurons"}
    out = (await analyze(api, {**on_sample, "population": "nowhere"}))["output"]
    assert out["rows"] == [[0]] and out["dataset_rows"] == 0
    no_column = await uploaded_id(api, b"n\n1\n", "plain.csv")
    resp = await api.post(
        "/api/tools/circuit_population_analysis/invoke",
        json={"arguments": {**args, "dataset_id": no_column, "population": "b"}},
    )
    assert resp.status_code == 422 and "no `population` column" in json.dumps(resp.json())


async def test_bad_sql_is_repaired_once(api: httpx.AsyncClient, fake_llm: FakeOpenAI) -> None:
    fake_llm.script(
        "fake-primary",
        Reply(text=sql_reply("SELECT count(*) FROM neurons WHERE cell_layer = 'L5'"),
              prompt_tokens=500, completion_tokens=20),
        Reply(text=sql_reply("SELECT count(*) AS n FROM neurons WHERE layer = 'L5'", "fixed"),
              prompt_tokens=600, completion_tokens=25, cached_tokens=500),
    )  # fmt: skip
    out = (await analyze(api, {"dataset_id": SAMPLE, "question": "How many L5 cells?"}))["output"]
    assert out["error"] is None, out
    assert out["rows"] == [[sample.layer_counts()["L5"]]]
    assert [a["source"] for a in out["attempts"]] == ["model", "repair"]
    assert out["attempts"][0]["error"]["type"] == "SQLError"
    assert "cell_layer" in out["attempts"][0]["error"]["message"]
    assert out["explanation"] == "fixed"
    repair = fake_llm.requests()[1]
    assert "cell_layer" in repair.prompt and "That SQL failed" in repair.prompt
    assert repair.messages[-2]["role"] == "assistant"
    assert out["usage"] == {
        "prompt_tokens": 1100, "completion_tokens": 45, "cached_tokens": 500, "total_tokens": 1145,
    }  # fmt: skip
    assert out["llm_requests"] == 2


async def test_token_usage_is_reported_when_the_sql_fails(
    api: httpx.AsyncClient, fake_llm: FakeOpenAI
) -> None:
    fake_llm.script(
        "fake-backup",
        Reply(text=sql_reply("SELECT nope FROM neurons"), prompt_tokens=700, completion_tokens=30,
              cached_tokens=128),
        Reply(text=sql_reply("SELECT * FROM read_parquet('/etc/x.parquet')"), prompt_tokens=800,
              completion_tokens=40),
    )  # fmt: skip
    body = await analyze(api, {"dataset_id": SAMPLE, "question": "q", "model": "backup"})
    assert body["status"] == "done", body
    out = body["output"]
    assert out["error"]["type"] == "UnsafeSQL" and "READ_PARQUET" in out["error"]["message"]
    assert [a["error"]["type"] for a in out["attempts"]] == ["SQLError", "UnsafeSQL"]
    assert (out["model"], out["provider_model"]) == ("backup", "fake-backup")
    assert out["usage"] == {
        "prompt_tokens": 1500, "completion_tokens": 70, "cached_tokens": 128, "total_tokens": 1570,
    }  # fmt: skip
    assert out["rows"] == []


async def test_model_failure_still_reports_usage(
    api: httpx.AsyncClient, fake_llm: FakeOpenAI
) -> None:
    fake_llm.script(
        "fake-primary",
        Reply(text="SELECT count(*) FROM neurons", prompt_tokens=300, completion_tokens=9),
        Reply(text="still not json", prompt_tokens=310, completion_tokens=4),
    )  # fmt: skip
    out = (await analyze(api, {"dataset_id": SAMPLE, "question": "q"}))["output"]
    assert out["error"]["type"] == "InvalidModelAnswer", out
    assert out["usage"]["prompt_tokens"] == 610 and out["usage"]["completion_tokens"] == 13
    assert out["model"] == "primary" and out["attempts"] == []


async def test_json_schema_rejected_falls_back_to_json_mode(
    api: httpx.AsyncClient, fake_llm: FakeOpenAI
) -> None:
    fake_llm.script(
        "fake-primary",
        Reply.fail(400, "response_format json_schema is not supported"),
        Reply(text=sql_reply("SELECT count(*) FROM neurons")),
    )  # fmt: skip
    out = (await analyze(api, {"dataset_id": SAMPLE, "question": "how many?"}))["output"]
    assert out["error"] is None and out["rows"] == [[50_000]], out
    formats = [r.body["response_format"]["type"] for r in fake_llm.requests()]
    assert formats == ["json_schema", "json_object"]


async def test_large_result_goes_to_parquet(api: httpx.AsyncClient, live_app: LiveApp) -> None:
    sql = "SELECT node_id, layer, depth FROM neurons ORDER BY node_id"
    out = (
        await analyze(api, {"dataset_id": SAMPLE, "question": "all", "sql": sql, "max_rows": 1000})
    )["output"]
    assert out["error"] is None, out
    assert (out["row_count"], out["truncated"], len(out["rows"])) == (1000, True, 200)
    assert out["result_key"].startswith("dev-user/results/")
    async with httpx.AsyncClient(timeout=10) as browser:
        got = await browser.get(urljoin(live_app.url + "/", out["result_url"]))
    assert got.status_code == 200
    table = pq.read_table(io.BytesIO(got.content))
    assert table.num_rows == 1000 and table.column_names == ["node_id", "layer", "depth"]
    assert table.column("node_id").to_pylist() == list(range(1000))
    assert table.slice(0, 200).to_pylist() == [
        dict(zip(table.column_names, r, strict=True)) for r in out["rows"]
    ]
    small = (
        await analyze(api, {"dataset_id": SAMPLE, "question": "few", "sql": sql, "max_rows": 7})
    )["output"]
    assert (small["row_count"], small["truncated"], small["result_key"]) == (7, True, None)


async def test_another_users_dataset_is_404_from_invoke(api: httpx.AsyncClient) -> None:
    dataset_id = await uploaded_id(api, b"a,b\n1,2\n", "private.csv")
    resp = await api.post(
        "/api/tools/circuit_population_analysis/invoke",
        json={"arguments": {"dataset_id": dataset_id, "question": "q", "sql": "SELECT 1"}},
        headers=other_user_headers(),
    )
    assert resp.status_code == 404 and "not found" in resp.json()["detail"]
    mine = await analyze(
        api, {"dataset_id": dataset_id, "question": "q", "sql": "SELECT sum(b) FROM neurons"}
    )
    assert mine["output"]["rows"] == [[2]]


async def test_unknown_model_is_422_before_queueing(api: httpx.AsyncClient) -> None:
    resp = await api.post(
        "/api/tools/circuit_population_analysis/invoke",
        json={"arguments": {"dataset_id": SAMPLE, "question": "q", "model": "gpt-nope"}},
    )
    assert resp.status_code == 422 and "gpt-nope" in json.dumps(resp.json())


def run_on_circuit_q(redis_server: RedisServer, url: str, sql: str, fmt: str = "csv") -> Any:
    """Send ``circuit.analyze`` straight to circuit_q (any URL) and return its terminal event."""
    from celery import Celery

    client = Celery(broker=redis_server.url + "/0", set_as_current=False)
    client.conf.broker_transport_options = {"priority_steps": list(PRIORITY_STEPS)}
    task_input = CircuitAnalyzeInput(
        dataset_url=url, dataset_format=DatasetFormat(fmt), question="q", sql=sql
    )
    task_id = str(uuid.uuid4())
    try:
        client.send_task(
            CIRCUIT_ANALYZE.name, kwargs=message_kwargs(task_input, "dev-user"), task_id=task_id,
            queue="circuit_q", priority=PRIORITY_NORMAL,
        )  # fmt: skip
    finally:
        client.close()
    return wait_until(
        lambda: next((e for e in events(redis_server, task_id) if is_terminal(e)), None),
        30, "the task to end",
    )  # fmt: skip


def test_a_download_claiming_10_gb_is_cut_at_the_cap(
    live_app: LiveApp, redis_server: RedisServer
) -> None:
    """A loopback server that claims 10 GB: refused on its Content-Length."""
    with huge_download_server() as server:
        url = f"http://127.0.0.1:{server.server_address[1]}/huge.csv"
        last = run_on_circuit_q(redis_server, url, "SELECT 1")
        assert server.hits == 1  # type: ignore[attr-defined]
    assert last.type == "error", last
    assert last.error_type == "DatasetTooLarge"
    assert "10737418240 bytes" in last.message and "limit" in last.message


def test_a_failing_download_is_retried(live_app: LiveApp, redis_server: RedisServer) -> None:
    """503 is transient: the spec's retry policy runs the task again, which then succeeds."""
    with huge_download_server() as server:
        url = f"http://127.0.0.1:{server.server_address[1]}/flaky.csv"
        last = run_on_circuit_q(redis_server, url, "SELECT sum(a) + sum(b) AS s FROM neurons")
        assert server.hits == 2  # type: ignore[attr-defined]
    assert last.type == "done", last
    assert json.loads(last.result)["rows"] == [[10]]


def test_a_file_that_does_not_load_is_dataset_invalid(
    live_app: LiveApp, redis_server: RedisServer
) -> None:
    with huge_download_server() as server:
        url = f"http://127.0.0.1:{server.server_address[1]}/garbage.parquet"
        last = run_on_circuit_q(redis_server, url, "SELECT 1", fmt="parquet")
    assert last.type == "error" and last.error_type == "DatasetInvalid", last
    assert "cannot load the parquet dataset" in last.message


async def test_model_down_or_answer_without_sql(
    api: httpx.AsyncClient, fake_llm: FakeOpenAI
) -> None:
    down = await analyze(api, {"dataset_id": SAMPLE, "question": "q", "model": "offline"})
    assert down["output"]["error"]["type"] == "ModelError", down
    assert "no model could answer" in down["output"]["error"]["message"]
    assert down["output"]["model"] == "offline" and down["output"]["llm_requests"] == 3
    fake_llm.script("fake-primary", Reply.json({"query": "SELECT 1"}, prompt_tokens=50))
    out = (await analyze(api, {"dataset_id": SAMPLE, "question": "q"}))["output"]
    assert out["error"]["type"] == "InvalidModelAnswer" and '"sql"' in out["error"]["message"]
    assert out["usage"]["prompt_tokens"] == 50


# -- the pieces, in-process --------------------------------------------------------------------

GOOD_SQL = [
    "SELECT layer, count(*) AS delete_count FROM neurons GROUP BY layer ORDER BY delete_count",
    "WITH l5 AS (SELECT * FROM neurons WHERE layer = 'L5') SELECT count(*) FROM l5 "
    "UNION ALL SELECT count(*) FROM neurons",
    "SELECT layer, row_number() OVER (PARTITION BY layer ORDER BY depth) AS r FROM neurons",
    "FROM neurons SELECT layer",
    "SELECT * FROM neurons WHERE mtype IN (SELECT mtype FROM neurons WHERE layer = 'L1')",
    "SELECT * FROM (VALUES (1), (2)) AS t(x)",
    "SELECT unnest([1, 2, 3]) AS v",
    "select 1;",
    "SELECT 'COPY neurons TO x; DROP TABLE neurons' AS text_not_code",
]
BAD_SQL = [
    "SELECT * FROM information_schema.tables",
    "SELECT * FROM main.neurons",
    "WITH x AS (SELECT * FROM read_csv('/etc/passwd')) SELECT * FROM x",
    "SELECT (SELECT count(*) FROM glob('/etc/*'))",
    "SELECT * FROM neurons; DROP TABLE neurons",
    "CREATE TABLE t AS SELECT * FROM neurons",
    "INSERT INTO neurons SELECT * FROM neurons",
    "DELETE FROM neurons",
    "UPDATE neurons SET layer = 'x'",
    "PRAGMA database_list",
    "DESCRIBE neurons",
    "EXPORT DATABASE '/tmp/corral-export'",
    "LOAD httpfs",
    "CALL pragma_version()",
    "SELECT * FROM read_text('/etc/passwd')",
    "SELECT * FROM other_table",
    "",
]


@pytest.fixture
def loaded(tmp_path: Path) -> Any:
    """A DuckDB loaded like the task does it (sample data as CSV), then locked down."""
    from corral.task_schemas import DatasetFormat
    from corral.tasks.circuit.loading import open_loaded
    from corral.tasks.circuit.settings import CircuitSettings

    csv = tmp_path / "d.csv"
    sample.generate(rows=2000).to_pandas().to_csv(csv, index=False)
    spill = tmp_path / "spill"
    spill.mkdir()
    con, rows = open_loaded(CircuitSettings(), spill, csv, DatasetFormat.CSV, None)
    assert rows == 2000
    yield con
    con.close()


@pytest.mark.parametrize("sql", GOOD_SQL)
def test_guard_allows_plain_selects(loaded: Any, sql: str) -> None:
    from corral.tasks.circuit.runner import run_select
    from corral.tasks.circuit.sql_guard import check_select

    checked = check_select(sql, loaded)
    run_select(loaded, checked, max_rows=10, timeout_s=10)


@pytest.mark.parametrize("sql", BAD_SQL)
def test_guard_refuses_everything_else(loaded: Any, sql: str) -> None:
    from corral.tasks.circuit.sql_guard import BadSyntax, UnsafeSQL, check_select

    with pytest.raises((UnsafeSQL, BadSyntax)):
        check_select(sql, loaded)


def test_external_access_is_off_even_if_the_guard_is_bypassed(loaded: Any) -> None:
    import duckdb
    import pandas as pd

    from corral.tasks.circuit.runner import QueryFailed, run_select

    with pytest.raises(QueryFailed, match="Permission Error"):
        run_select(loaded, "SELECT * FROM read_csv('/etc/passwd')", max_rows=5, timeout_s=5)
    for statement, message in [
        ("COPY neurons TO '/tmp/corral-bypass.csv'", "disabled by configuration"),
        ("ATTACH '/tmp/corral-bypass.db' AS x", "disabled by configuration"),
        ("INSTALL httpfs", "disabled by configuration"),
        ("LOAD httpfs", "disabled"),
        ("SET enable_external_access = true", "configuration has been locked"),
        ("SET lock_configuration = false", "configuration has been locked"),
    ]:
        with pytest.raises(duckdb.Error, match=message):
            loaded.execute(statement)
    secret_frame = pd.DataFrame({"secret": ["worker memory"]})  # noqa: F841 - found by name?
    with pytest.raises(duckdb.CatalogException):
        loaded.execute("SELECT * FROM secret_frame")
    assert not Path("/tmp/corral-bypass.csv").exists()
    assert loaded.execute("SELECT count(*) FROM neurons").fetchone() == (2000,)


def test_time_limit_interrupts_and_the_connection_survives(loaded: Any) -> None:
    import time

    from corral.tasks.circuit.runner import QueryTimeout, run_select

    slow = (  # 8e9 row triples that statistics cannot rule out
        "SELECT count(*) FROM neurons a, neurons b, neurons c "
        "WHERE hash(a.node_id * 7919 + b.node_id * 31 + c.node_id) = 42"
    )
    started = time.monotonic()
    with pytest.raises(QueryTimeout, match=r"longer than 0\.3s"):
        run_select(loaded, slow, max_rows=10, timeout_s=0.3)
    assert time.monotonic() - started < 5
    result = run_select(loaded, "SELECT count(*) FROM neurons", max_rows=10, timeout_s=5)
    assert result.table.to_pylist() == [{"count_star()": 2000}]


def test_row_cap_reads_one_extra_row_to_flag_truncation(loaded: Any) -> None:
    from corral.tasks.circuit.runner import run_select

    capped = run_select(loaded, "SELECT node_id FROM neurons", max_rows=10, timeout_s=5)
    assert (capped.row_count, capped.truncated) == (10, True)
    exact = run_select(loaded, "SELECT node_id FROM neurons", max_rows=2000, timeout_s=5)
    assert (exact.row_count, exact.truncated) == (2000, False)


def _download(url: str, dest: Path, max_bytes: int = 1 << 20) -> int:
    from corral.tasks.circuit.download import download

    return download(
        url, dest, max_bytes=max_bytes, connect_timeout_s=2, read_timeout_s=5, total_timeout_s=10
    )


def test_endless_download_is_cut_at_the_cap(tmp_path: Path) -> None:
    from corral.tasks.circuit.download import DatasetTooLarge

    dest = tmp_path / "d.csv"
    with huge_download_server() as server, pytest.raises(DatasetTooLarge, match="stopped at"):
        _download(f"http://127.0.0.1:{server.server_address[1]}/endless", dest)
    assert dest.stat().st_size <= 1 << 20


def test_refused_and_unreachable_links(tmp_path: Path, live_app: LiveApp) -> None:
    from corral.tasks._base import TransientTaskError
    from corral.tasks.circuit.download import DatasetUnavailable
    from tests.support.procs import free_port

    forged = f"{live_app.url}/api/blobs/system/datasets/{SAMPLE}-v1?exp=1&sig=00"
    with pytest.raises(DatasetUnavailable, match="HTTP 403"):
        _download(forged, tmp_path / "a")
    with pytest.raises(TransientTaskError, match="download failed"):
        _download(f"http://127.0.0.1:{free_port()}/gone", tmp_path / "b")


def test_prompt_profile_exact_bounds_and_sampled_counts(loaded: Any) -> None:
    from corral.tasks.circuit.prompt import profile_table, question_messages
    from corral.tasks.circuit.settings import CircuitSettings

    df = sample.generate(rows=2000).to_pandas()
    full = profile_table(loaded, CircuitSettings())
    big = profile_table(loaded, CircuitSettings(prompt_full_scan_rows=100))
    assert (full.sampled, big.sampled) == (False, True)
    for profile in (full, big):
        depth = next(c for c in profile.columns if c.name == "depth")
        assert (depth.minimum, depth.maximum) == (df.depth.min(), df.depth.max())  # exact
    layer = next(c for c in full.columns if c.name == "layer")
    assert layer.values == sorted(df.layer.unique())
    prompt = question_messages(big, "q")[1]["content"]
    assert "from a 10 % sample of rows" in prompt
    assert "from a 10 % sample" not in question_messages(full, "q")[1]["content"]


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT a.*, b.* FROM neurons a, neurons b ORDER BY a.node_id * b.node_id DESC",
        "SELECT string_agg(a.layer || b.layer, ',') FROM neurons a, neurons b",
        "SELECT list(a.node_id) FROM neurons a CROSS JOIN neurons b",
    ],
)
def test_cross_join_of_the_sample_ends_with_a_typed_limit_error(tmp_path: Path, sql: str) -> None:
    """2.5e9 rows: DuckDB's memory/spill limits or the interrupt stop it, never the kernel."""
    import time

    import psutil

    from corral.task_schemas import DatasetFormat
    from corral.tasks.circuit.analysis import _error_of
    from corral.tasks.circuit.loading import open_loaded
    from corral.tasks.circuit.runner import QueryLimitExceeded, QueryTimeout, run_select
    from corral.tasks.circuit.settings import CircuitSettings

    csv = tmp_path / "d.csv"
    sample.generate().to_pandas().to_csv(csv, index=False)  # the whole sample, 50 000 rows
    spill = tmp_path / "spill"
    spill.mkdir()
    settings = CircuitSettings(memory_limit_mb=128, spill_limit_mb=64, threads=2)
    con, rows = open_loaded(settings, spill, csv, DatasetFormat.CSV, None)
    assert rows == 50_000
    me = psutil.Process()
    before = me.memory_info().rss
    started = time.monotonic()
    with pytest.raises((QueryLimitExceeded, QueryTimeout)) as caught:
        run_select(con, sql, max_rows=10, timeout_s=3)
    assert time.monotonic() - started < 10
    assert me.memory_info().rss - before < 400 << 20  # bounded by DuckDB, not by the OOM killer
    error = _error_of(caught.value)
    assert error.type in {"QueryLimitExceeded", "QueryTimeout"}
    if error.type == "QueryLimitExceeded":
        assert "of memory" in error.message and "LIMIT" in error.message
    assert con.execute("SELECT count(*) FROM neurons").fetchone() == (50_000,)  # still usable
    assert sum(f.stat().st_size for f in spill.rglob("*") if f.is_file()) <= 64 << 20
    con.close()
