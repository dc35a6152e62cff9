"""Python tool benchmark: warm ``print(1)`` and a matplotlib PNG, per sandbox backend.

    cd backend && uv run python ../bench/python_tool.py [--runs 20] [--backends bwrap,wasm]

Measures, each over ``--runs`` warm runs (p50/p95):
- sandbox only: ``Sandbox.run`` in-process, against a baseline of the same code in a plain
  ``subprocess`` python (the sandbox venv's interpreter, no isolation), measured in the same run;
- end to end: ``POST /api/tools/run_python/invoke`` → Redis → python_q worker → sandbox →
  object store → result, against the ``echo`` tool on the same worker (the path without Python);
- 4 concurrent plots (batches of 4 invokes at once; the worker has 2 processes on 2 cores);
- bwrap's isolation layers: print(1) with seccomp and/or cgroups switched off, interleaved in
  the same run (``--layers-only`` runs just these sandbox rows, no stack).
Targets (bwrap): end-to-end print(1) <= 60 ms, plot <= 1 s, seccomp <= 2 ms added per run.

As root, bwrap runs as the unprivileged user from backend/scripts/sandbox_host_setup.sh.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

BACKEND_DIR = Path(__file__).resolve().parents[1] / "backend"
sys.path.insert(0, str(BACKEND_DIR))

PRINT = "print(1)"
PLOT = (
    "import matplotlib.pyplot as plt\n"
    "fig, ax = plt.subplots(figsize=(4, 3))\n"
    "ax.plot([1, 3, 2, 4])\n"
)
PLAIN_PLOT = PLOT + "fig.savefig('/tmp/corral-bench-plot.png', dpi=100)\n"


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


# -- sandbox only (runs in a child process: as the sandbox user for bwrap) ---------------------


def child_sandbox_only(backend: str, runs: int) -> dict[str, list[float]]:
    from corral.tasks.sandbox.selection import build_backend
    from corral.tasks.sandbox.settings import SandboxSettings

    venv = Path(os.environ["TASKS_SANDBOX__VENV_PATH"])
    settings = SandboxSettings(
        backend=backend,
        venv_path=venv,
        wasm_cache_dir=Path(os.environ.get("TASKS_SANDBOX__WASM_CACHE_DIR", "~")).expanduser(),
    )
    sandbox = build_backend(backend, settings)
    warm = getattr(sandbox, "warm", None)
    if callable(warm):
        warm()
    out: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory() as d:
        base = Path(d)
        for case, code in (("print(1)", PRINT), ("plot", PLOT)):
            times = []
            for i in range(runs + 1):  # the first one is a warm-up
                inp, outp = base / f"{case}-{i}-in", base / f"{case}-{i}-out"
                inp.mkdir()
                outp.mkdir()
                t = time.perf_counter()
                result = sandbox.run(code, input_dir=inp, output_dir=outp, limits=settings.limits)
                took = time.perf_counter() - t
                if result.error is not None:
                    raise SystemExit(f"{backend} {case}: {result.error}")
                if i:
                    times.append(took)
            out[f"sandbox {case}"] = times
        python = str(venv / "bin" / "python")
        env = {"PATH": "/usr/bin:/bin", "MPLBACKEND": "Agg", "MPLCONFIGDIR": str(base / "mpl")}
        for case, code in (("print(1)", PRINT), ("plot", PLAIN_PLOT)):
            times = []
            for i in range(runs + 1):
                t = time.perf_counter()
                subprocess.run([python, "-c", code], check=True, env=env, capture_output=True)
                if i:
                    times.append(time.perf_counter() - t)
            out[f"plain {case}"] = times
        if backend == "bwrap":
            out.update(layer_costs(settings, base, runs))
    return out


LAYER_VARIANTS = (  # (label, seccomp on, cgroups on)
    ("all layers", True, True),
    ("seccomp off", False, True),
    ("cgroups off", True, False),
    ("seccomp and cgroups off", False, False),
)


def layer_costs(settings: Any, base: Path, runs: int) -> dict[str, list[float]]:
    """print(1) with each isolation layer switched off, interleaved run by run so load drift
    hits every variant alike. Switching seccomp off exists only here (``seccomp=False``): the
    worker's self-test refuses a sandbox without the filter."""
    from corral.tasks.sandbox.bwrap import BwrapSandbox

    no_cgroups = settings.model_copy(
        update={"cgroup": settings.cgroup.model_copy(update={"mode": "off"})}
    )
    boxes = {
        label: BwrapSandbox(settings if cgroups else no_cgroups, seccomp=seccomp)
        for label, seccomp, cgroups in LAYER_VARIANTS
    }
    mode = boxes["all layers"].cgroup_host().mode
    out: dict[str, list[float]] = {
        f"{kind} {label}": [] for label in boxes for kind in ("layers", "cpu")
    }
    order = list(boxes.items())
    for i in range(3 * runs + 1):  # more runs: the differences are small
        order = order[1:] + order[:1]  # rotate, so no variant always runs first or last
        for j, (label, box) in enumerate(order):
            inp, outp = base / f"layers-{i}-{j}-in", base / f"layers-{i}-{j}-out"
            inp.mkdir()
            outp.mkdir()
            cpu = resource.getrusage(resource.RUSAGE_CHILDREN)
            t = time.perf_counter()
            result = box.run(PRINT, input_dir=inp, output_dir=outp, limits=settings.limits)
            took = time.perf_counter() - t
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            if result.error is not None:
                raise SystemExit(f"bwrap {label}: {result.error}")
            if i:
                out[f"layers {label}"].append(took)
                used = after.ru_utime + after.ru_stime - cpu.ru_utime - cpu.ru_stime
                out[f"cpu {label}"].append(used)
    out["cgroup mode"] = [0.0 if mode == "none" else (2.0 if mode == "v2" else 1.0)]
    return out


def sandbox_only(backend: str, runs: int, env: dict[str, str], as_user: list[str]) -> Any:
    cmd = [*as_user, sys.executable, __file__, "--child", backend, "--runs", str(runs)]
    proc = subprocess.run(
        cmd, env={**os.environ, **env}, capture_output=True, text=True, cwd=BACKEND_DIR,
        check=False,
    )  # fmt: skip
    if proc.returncode != 0:
        raise SystemExit(f"sandbox-only {backend} failed:\n{proc.stdout}\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# -- end to end ------------------------------------------------------------------------------


async def invoke(client: Any, tool: str, arguments: dict[str, Any]) -> float:
    t = time.perf_counter()
    resp = await client.post(
        f"/api/tools/{tool}/invoke", json={"arguments": arguments, "timeout_s": 120}
    )
    took = time.perf_counter() - t
    body = resp.json()
    if resp.status_code != 200 or body.get("status") != "done":
        raise SystemExit(f"{tool} failed: {resp.status_code} {body}")
    output = body["output"]
    if tool == "run_python" and output.get("error"):
        raise SystemExit(f"run_python error: {output['error']}")
    return took


async def end_to_end(url: str, headers: dict[str, str], runs: int) -> dict[str, list[float]]:
    import httpx

    out: dict[str, list[float]] = {}
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=180) as client:
        for name, tool, args in (
            ("echo", "echo", {"payload": 1, "queue": "python_q"}),
            ("print(1)", "run_python", {"code": PRINT}),
            ("plot", "run_python", {"code": PLOT}),
        ):
            await invoke(client, tool, args)  # warm-up
            out[f"e2e {name}"] = [await invoke(client, tool, args) for _ in range(runs)]
        batches = []
        for _ in range(max(3, runs // 4)):
            t = time.perf_counter()
            await asyncio.gather(*(invoke(client, "run_python", {"code": PLOT}) for _ in range(4)))
            batches.append(time.perf_counter() - t)
        out["e2e 4 concurrent plots (batch)"] = batches
    return out


def run_stack(backend: str, runs: int, base_env: dict[str, str], as_user: list[str]) -> Any:
    from tests.support.db import new_sqlite_database
    from tests.support.procs import (
        UvicornThread,
        env_vars,
        start_redis,
        start_worker,
        wait_workers_ready,
    )
    from tests.support.sandbox import python_worker_env, shared_dir

    redis = start_redis()
    objects = shared_dir("corral-bench-objects-")
    database_url = new_sqlite_database(Path(tempfile.mkdtemp(prefix="corral-bench-db-")))
    secret = os.urandom(24).hex()
    env = {
        **base_env,
        "TASKS_REDIS__URL": redis.url,
        "CORRAL_REDIS__URL": redis.url,
        "CORRAL_AUTH__MODE": "dev",
        "CORRAL_AUTH__DEV_SECRET": "bench-" + secret,
        "CORRAL_STORAGE__SIGNING_SECRET": "bench-storage-" + secret,
        "TASKS_STORAGE__LOCAL_DIR": str(objects),
        "CORRAL_STORAGE__LOCAL_DIR": str(objects),
        "TASKS_SANDBOX__BACKEND": backend,
        "CORRAL_DATABASE__URL": database_url,
        "CORRAL_RATE_LIMITS__TOOLS": "100000/minute",  # the bench is one user on purpose
    }
    worker_env = {**env, **python_worker_env()} if backend == "bwrap" else env
    worker = start_worker(
        ("python_q",), worker_env, name=f"bench-{backend}@bench",
        wrap=as_user if backend == "bwrap" else None,
    )  # fmt: skip
    try:
        wait_workers_ready(redis.url + "/0", [worker], timeout=600)
        from corral.app.auth.service import issue_dev_token
        from corral.app.main import create_app
        from corral.app.settings import AppSettings

        with env_vars(env):
            settings = AppSettings()
        with UvicornThread(create_app(settings)) as server:
            headers = {"Authorization": f"Bearer {issue_dev_token(settings.auth)}"}
            return asyncio.run(end_to_end(server.url, headers, runs))
    finally:
        worker.stop()
        redis.stop()


def table(rows: list[tuple[str, str, list[float], float | None]]) -> str:
    lines = [
        "| path | backend | p50 ms | p95 ms | p50 vs baseline |",
        "| --- | --- | ---: | ---: | ---: |",
    ]
    for name, backend, values, base in rows:
        p50 = pct(values, 0.5) * 1000
        p95 = pct(values, 0.95) * 1000
        ratio = f"{p50 / (base * 1000):.2f}x" if base else "baseline"
        lines.append(f"| {name} | {backend} | {p50:.1f} | {p95:.1f} | {ratio} |")
    return "\n".join(lines)


def layer_table(only: dict[str, list[float]]) -> str:
    """Each layer's cost: p50/p95, and the median of paired differences (same round, so the
    machine's load drift cancels) against the run with both layers off."""
    mode = {0.0: "none", 1.0: "v1", 2.0: "v2"}[only["cgroup mode"][0]]
    base = only["layers seccomp and cgroups off"]
    base_cpu = only["cpu seccomp and cgroups off"]
    lines = [
        f"bwrap print(1) by layer (cgroups here: {mode}; {len(base)} interleaved rounds)",
        "| variant | wall p50 ms | wall p95 ms | wall added (paired median) ms "
        "| CPU p50 ms | CPU added (paired median) ms |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for label, _, _ in reversed(LAYER_VARIANTS):
        values, cpu = only[f"layers {label}"], only[f"cpu {label}"]
        diffs = [v - b for v, b in zip(values, base, strict=True)]
        cpu_diffs = [v - b for v, b in zip(cpu, base_cpu, strict=True)]
        lines.append(
            f"| {label} | {pct(values, 0.5) * 1000:.1f} | {pct(values, 0.95) * 1000:.1f} "
            f"| {pct(diffs, 0.5) * 1000:+.2f} | {pct(cpu, 0.5) * 1000:.1f} "
            f"| {pct(cpu_diffs, 0.5) * 1000:+.2f} |"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--backends", default="bwrap,wasm")
    parser.add_argument(
        "--layers-only", action="store_true", help="bwrap sandbox-only rows, no stack"
    )
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child_sandbox_only(args.child, args.runs)))
        return 0

    from tests.support.sandbox import (
        SANDBOX_VENV,
        WASM_CACHE,
        as_sandbox_user,
        ensure_sandbox_venv,
        sandbox_user_home,
    )

    ensure_sandbox_venv()
    base_env = {
        "TASKS_SANDBOX__VENV_PATH": str(SANDBOX_VENV),
        "TASKS_SANDBOX__WASM_CACHE_DIR": str(WASM_CACHE),
    }
    rows: list[tuple[str, str, list[float], float | None]] = []
    layers = ""
    for backend in args.backends.split(","):
        as_user = as_sandbox_user() if backend == "bwrap" else []
        env = {**base_env, "HOME": sandbox_user_home()} if backend == "bwrap" else base_env
        only = sandbox_only(backend, args.runs, env, as_user)
        if backend == "bwrap":
            layers = layer_table(only)
        if args.layers_only:
            continue
        e2e = run_stack(backend, args.runs, base_env, as_user)
        plain_print, plain_plot = pct(only["plain print(1)"], 0.5), pct(only["plain plot"], 0.5)
        echo = pct(e2e["e2e echo"], 0.5)
        plot = pct(e2e["e2e plot"], 0.5)
        rows += [
            ("plain subprocess print(1)", "none", only["plain print(1)"], None),
            ("sandbox only print(1)", backend, only["sandbox print(1)"], plain_print),
            ("plain subprocess plot", "none", only["plain plot"], None),
            ("sandbox only plot", backend, only["sandbox plot"], plain_plot),
            ("e2e echo tool (no sandbox)", backend, e2e["e2e echo"], None),
            ("e2e print(1)", backend, e2e["e2e print(1)"], echo),
            ("e2e plot (+upload)", backend, e2e["e2e plot"], echo),
            ("e2e 4 concurrent plots, batch", backend, e2e["e2e 4 concurrent plots (batch)"],
             plot),
        ]  # fmt: skip
    print(f"runs per row: {args.runs} (concurrent: batches of 4); machine: {os.cpu_count()} cores")
    if rows:
        print(table(rows))
    if layers:
        print(layers)
    return 0


if __name__ == "__main__":
    import _machine

    if "--child" not in sys.argv:  # the child's stdout is one JSON line for the parent
        _machine.announce(__file__)
    sys.exit(main())
