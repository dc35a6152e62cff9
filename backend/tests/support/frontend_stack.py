"""The scripted assistant the browser tests talk to, and a CLI running a whole stack for the UI.

``scripted_assistant`` answers every model request from the prompt, so one ``FakeOpenAI`` can
serve the agent (tool calls), circuit analysis (structured SQL) and pipeline steps (text)::

    "plot ..."   -> run_python drawing a figure, then a markdown answer
    "slow ..."   -> run_python that ticks for a minute (for Stop)
    "steady ..." -> run_python that works ~5 s, then draws the figure (for a reload mid-turn)
    "layer ..."  -> circuit_population_analysis on the sample dataset
    anything else (no tools offered) -> a short markdown answer naming the prompt

Run the stack by hand (the UI at the printed URL, the dev token printed)::

    cd backend && uv run python -m tests.support.frontend_stack [--port 8099]
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import signal
import tempfile
import time
from pathlib import Path
from typing import Any

from tests.support.fake_openai import FakeOpenAI, RecordedRequest, Reply, ToolCall

PLOT_CODE = """import numpy as np
import matplotlib.pyplot as plt

t = np.linspace(0, 10, 400)
y = np.exp(-t / 3) * np.sin(2 * np.pi * t)
fig, ax = plt.subplots(figsize=(6, 3))
ax.plot(t, y, color="#4f46e5", lw=2)
ax.fill_between(t, y, alpha=.15, color="#4f46e5")
ax.set(title="Damped sine", xlabel="t (s)", ylabel="amplitude")
fig.tight_layout()
print("period: 1.0 s")
"""

SLOW_CODE = """import time
for i in range(120):
    print("tick", i, flush=True)
    time.sleep(0.5)
"""

STEADY_CODE = (
    "import time\nfor i in range(10):\n    print('step', i, flush=True)\n    time.sleep(0.5)\n"
    + PLOT_CODE
)

LAYER_SQL = "SELECT layer, count(*) AS neurons FROM neurons GROUP BY layer ORDER BY neurons DESC"


def _last_role(request: RecordedRequest) -> str:
    messages = request.messages
    return str(messages[-1].get("role")) if messages else ""


def scripted_assistant(request: RecordedRequest) -> Reply:
    """Decide the model's answer from what it was asked (see the module docstring)."""
    body: dict[str, Any] = request.body
    prompt = request.prompt.lower()
    if body.get("response_format", {}).get("type") == "json_schema":
        sql = {"sql": LAYER_SQL, "explanation": "Neurons counted per layer, largest first."}
        return Reply(text=json.dumps(sql), prompt_tokens=420, completion_tokens=40)
    if body.get("tools"):
        if _last_role(request) == "tool":
            return Reply(
                text="Done. The figure above shows the **damped sine**: its period is `1.0 s` and "
                "the envelope decays with τ = 3 s.\n\n- amplitude halves every ~2 s\n- see the "
                "tool card for the code",
                chunk_size=6,
                chunk_delay_s=0.01,
            )
        if "steady" in prompt:  # ~5 s of work, then a figure (a page reloads meanwhile)
            return Reply(tool_calls=[ToolCall("run_python", {"code": STEADY_CODE})])
        if "slow" in prompt:
            return Reply(tool_calls=[ToolCall("run_python", {"code": SLOW_CODE})])
        if "plot" in prompt or "histogram" in prompt:
            return Reply(
                text="I'll plot it in the sandbox.",
                tool_calls=[ToolCall("run_python", {"code": PLOT_CODE})],
            )
        if "layer" in prompt:
            args = {"dataset_id": "sample-cortical-column", "question": request.prompt}
            return Reply(tool_calls=[ToolCall("circuit_population_analysis", args)])
    return Reply(
        text=f"**Answer** to “{request.prompt[:60]}”: a scripted reply from the test model.",
        chunk_size=8,
        chunk_delay_s=0.005,
    )


def main(argv: list[str] | None = None) -> int:  # pragma: no cover - a developer's tool
    from corral.app.auth.service import issue_dev_token
    from corral.app.main import create_app
    from corral.app.settings import AppSettings
    from corral.task_schemas import ALL_QUEUES, Queue
    from tests.support.db import new_sqlite_database
    from tests.support.llm_env import LLM_API_KEY, llm_env
    from tests.support.procs import (
        UvicornThread,
        env_vars,
        free_port,
        start_redis,
        start_worker,
        wait_workers_ready,
    )
    from tests.support.sandbox import (
        as_sandbox_user,
        check_sandbox_host,
        ensure_sandbox_venv,
        python_worker_env,
        sandbox_env,
        shared_dir,
    )

    parser = argparse.ArgumentParser(description="Corral + scripted model, for the web UI.")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--frontend-dir", type=Path, default=None)
    args = parser.parse_args(argv)
    check_sandbox_host()
    ensure_sandbox_venv()
    port = args.port or free_port()
    redis = start_redis()
    fake = FakeOpenAI(api_key=LLM_API_KEY).start()
    fake.respond_with(scripted_assistant)
    objects = shared_dir("corral-ui-objects-")
    env = {
        **llm_env(fake),
        **sandbox_env(),
        "TASKS_REDIS__URL": redis.url,
        "CORRAL_REDIS__URL": redis.url,
        "CORRAL_AUTH__MODE": "dev",
        "CORRAL_AUTH__DEV_SECRET": secrets.token_hex(24),
        "TASKS_STORAGE__LOCAL_DIR": str(objects),
        "CORRAL_STORAGE__LOCAL_DIR": str(objects),
        "CORRAL_STORAGE__SIGNING_SECRET": secrets.token_hex(24),
        "CORRAL_DATASETS__WORKER_BASE_URL": f"http://127.0.0.1:{port}",
        "CORRAL_DATABASE__URL": new_sqlite_database(Path(tempfile.mkdtemp(prefix="corral-ui-db-"))),
    }
    if args.frontend_dir:
        env["CORRAL_FRONTEND_DIR"] = str(args.frontend_dir.resolve())
    workers = [
        start_worker((q.value,), {**env, **python_worker_env()}, wrap=as_sandbox_user())
        if q == Queue.PYTHON
        else start_worker((q.value,), env)
        for q in ALL_QUEUES
    ]
    try:
        wait_workers_ready(redis.url + "/0", workers)
        with env_vars(env):
            settings = AppSettings()  # type: ignore[call-arg]
        with UvicornThread(create_app(settings), port=port) as server:
            print(f"URL {server.url}", flush=True)
            print(f"TOKEN {issue_dev_token(settings.auth)}", flush=True)
            stop = False

            def on_term(*_: object) -> None:
                nonlocal stop
                stop = True

            signal.signal(signal.SIGTERM, on_term)
            while not stop:
                time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        for w in workers:
            w.stop()
        fake.stop()
        redis.stop()
    return 0


if __name__ == "__main__":  # pragma: no cover
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    raise SystemExit(main())
