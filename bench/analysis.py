"""Circuit analysis benchmark: a group-by question end to end, split into its steps.

    cd backend && uv run python ../bench/analysis.py [--runs 5] [--big-rows 5000000]

Runs a real stack (redis-server, one circuit_q worker, the app on uvicorn, the scripted
OpenAI-protocol server answering instantly) and asks "how many excitatory cells per layer, and
their mean depth?" through ``POST /api/tools/circuit_population_analysis/invoke``:
- over the shared 50,000-neuron sample;
- over the same kind of population with ``--big-rows`` neurons, generated locally and uploaded
  as Parquet.
Each end-to-end time is split with the worker's own timings (download, load, prompt profile,
model, query) plus the rest (queueing, Celery, HTTP). Baselines measured in the same run on the
same Parquet file: in-process DuckDB (read_parquet + the query, no service around it) and
pandas (read_parquet + groupby).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

BACKEND_DIR = Path(__file__).resolve().parents[1] / "backend"
sys.path.insert(0, str(BACKEND_DIR))

QUESTION = "How many excitatory cells per layer, and their mean depth?"
SQL = (
    "SELECT layer, count(*) AS excitatory_cells, round(avg(depth), 2) AS mean_depth_um "
    "FROM neurons WHERE synapse_class = 'EXC' GROUP BY layer ORDER BY layer"
)
STEPS = ("download_s", "load_s", "profile_s", "model_s", "query_s")


def median_ms(values: list[float]) -> float:
    return statistics.median(values) * 1000


def baselines(path: Path, runs: int) -> dict[str, list[float]]:
    import duckdb
    import pandas as pd

    duck, panda = [], []
    for _ in range(runs):
        t = time.perf_counter()
        con = duckdb.connect()
        con.execute(f"CREATE TABLE neurons AS SELECT * FROM read_parquet('{path}')")
        con.execute(SQL).fetchall()
        con.close()
        duck.append(time.perf_counter() - t)
        t = time.perf_counter()
        df = pd.read_parquet(path)
        exc = df[df.synapse_class == "EXC"]
        exc.groupby("layer").depth.agg(["size", "mean"]).round(2)
        panda.append(time.perf_counter() - t)
    return {"duckdb in-process": duck, "pandas": panda}


async def end_to_end(url: str, headers: dict[str, str], dataset_id: str, runs: int) -> Any:
    import httpx

    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=600) as client:
        walls, timings = [], []
        for i in range(runs + 1):  # the first is a warm-up
            t = time.perf_counter()
            resp = await client.post(
                "/api/tools/circuit_population_analysis/invoke",
                json={"arguments": {"dataset_id": dataset_id, "question": QUESTION},
                      "timeout_s": 600},
            )  # fmt: skip
            wall = time.perf_counter() - t
            body = resp.json()
            if resp.status_code != 200 or body.get("status") != "done":
                raise SystemExit(f"invoke failed: {resp.status_code} {body}")
            if body["output"]["error"]:
                raise SystemExit(f"analysis failed: {body['output']['error']}")
            if i:
                walls.append(wall)
                timings.append(body["output"]["timings"])
        return walls, timings, body["output"]


async def upload(url: str, headers: dict[str, str], content: bytes, name: str) -> str:
    import httpx

    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=600) as client:
        resp = await client.post(
            "/api/datasets", files={"file": (name, content, "application/octet-stream")}
        )
    if resp.status_code != 201:
        raise SystemExit(f"upload failed: {resp.status_code} {resp.text[:500]}")
    return str(resp.json()["id"])


def wait_ready(url: str, headers: dict[str, str], dataset_id: str, timeout_s: float = 300) -> None:
    """The sample is built (and an upload read) by a circuit_q task: wait for `ready`."""
    import httpx

    deadline = time.monotonic() + timeout_s
    status = "?"
    while time.monotonic() < deadline:
        resp = httpx.get(f"{url}/api/datasets/{dataset_id}", headers=headers, timeout=10)
        ok = resp.status_code == 200
        status = resp.json().get("status", "?") if ok else str(resp.status_code)
        if status == "ready":
            return
        if status == "failed":
            raise SystemExit(f"dataset {dataset_id} failed: {resp.text[:500]}")
        time.sleep(0.2)
    raise SystemExit(f"dataset {dataset_id} not ready after {timeout_s:.0f} s (last: {status})")


def run(runs: int, big_rows: int) -> None:
    from corral.app.auth.service import issue_dev_token
    from corral.app.main import create_app
    from corral.app.settings import AppSettings
    from corral.tasks.circuit import sample
    from tests.support.fake_openai import FakeOpenAI, Reply
    from tests.support.llm_env import LLM_API_KEY, llm_env
    from tests.support.procs import (
        UvicornThread,
        env_vars,
        free_port,
        start_redis,
        start_worker,
        wait_workers_ready,
    )

    work = Path(tempfile.mkdtemp(prefix="corral-bench-analysis-"))
    big = work / "big.parquet"
    small = work / "sample.parquet"
    small.write_bytes(sample.parquet_bytes(sample.generate()))
    t = time.perf_counter()
    big.write_bytes(sample.parquet_bytes(sample.generate(rows=big_rows, seed=7)))
    print(f"generated {big_rows} rows ({big.stat().st_size / 1e6:.0f} MB Parquet) "
          f"in {time.perf_counter() - t:.1f}s", file=sys.stderr)  # fmt: skip

    redis = start_redis()
    secret = os.urandom(24).hex()
    port = free_port()
    with FakeOpenAI(api_key=LLM_API_KEY) as fake:
        answer = json.dumps({"sql": SQL, "explanation": "per-layer counts and mean depth"})
        fake.respond_with(lambda request: Reply(text=answer))
        env = {
            **llm_env(fake),
            "TASKS_REDIS__URL": redis.url,
            "CORRAL_REDIS__URL": redis.url,
            "CORRAL_AUTH__MODE": "dev",
            "CORRAL_AUTH__DEV_SECRET": "bench-" + secret,
            "CORRAL_STORAGE__SIGNING_SECRET": "bench-storage-" + secret,
            "TASKS_STORAGE__LOCAL_DIR": str(work / "objects"),
            "CORRAL_STORAGE__LOCAL_DIR": str(work / "objects"),
            "CORRAL_DATASETS__WORKER_BASE_URL": f"http://127.0.0.1:{port}",
            "CORRAL_DATASETS__MAX_UPLOAD_BYTES": str(4 * 1024**3),
        }
        try:  # the app's database (present once the SQL issue lands)
            from tests.support.db import new_sqlite_database

            env["CORRAL_DATABASE__URL"] = new_sqlite_database(work)
        except ImportError:
            pass
        worker = start_worker(("circuit_q",), env, name="bench-circuit@bench")
        try:
            wait_workers_ready(redis.url + "/0", [worker], timeout=120)
            with env_vars(env):
                settings = AppSettings()  # type: ignore[call-arg]
            with UvicornThread(create_app(settings), port=port) as server:
                headers = {"Authorization": f"Bearer {issue_dev_token(settings.auth)}"}
                big_id = asyncio.run(upload(server.url, headers, big.read_bytes(), "big.parquet"))
                for dataset_id in (sample.SAMPLE_ID, big_id):  # built/read by circuit_q first
                    wait_ready(server.url, headers, dataset_id)
                results = {}
                for label, dataset_id, path, n in (
                    (f"{sample.SAMPLE_ROWS:,} rows (sample)", sample.SAMPLE_ID, small, runs),
                    (f"{big_rows:,} rows (local)", big_id, big, max(2, runs // 2)),
                ):
                    walls, timings, output = asyncio.run(
                        end_to_end(server.url, headers, dataset_id, n)
                    )
                    results[label] = (walls, timings, baselines(path, n), output)
        finally:
            worker.stop()
            redis.stop()
            shutil.rmtree(work, ignore_errors=True)
    print(table(results))


def table(results: dict[str, Any]) -> str:
    lines = [
        "| rows | end to end ms | download | load | profile | model | query | other "
        "| DuckDB in-process ms | pandas ms | e2e vs DuckDB in-process |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    first_wall = None
    for label, (walls, timings, base, _) in results.items():
        wall = median_ms(walls)
        steps = {k: median_ms([t[k] for t in timings]) for k in STEPS}
        other = wall - sum(steps.values())
        duck, panda = median_ms(base["duckdb in-process"]), median_ms(base["pandas"])
        lines.append(
            f"| {label} | {wall:.0f} | " + " | ".join(f"{steps[k]:.0f}" for k in STEPS)
            + f" | {other:.0f} | {duck:.0f} | {panda:.0f} | {wall / duck:.1f}x |"
        )  # fmt: skip
        first_wall = first_wall or wall
    last = list(results)[-1]
    lines.append("")
    lines.append(
        f"Scaling: {last} end to end is {median_ms(results[last][0]) / first_wall:.1f}x the "
        "sample's. Step columns are medians of the worker's own timings (ms); `other` is "
        "queueing, Celery, Redis and HTTP."
    )
    rows = results[next(iter(results))][3]["rows"]
    lines.append(f"Answer over the sample: {rows}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--big-rows", type=int, default=5_000_000)
    args = parser.parse_args()
    run(args.runs, args.big_rows)


if __name__ == "__main__":
    import _machine

    _machine.announce(__file__)
    main()
