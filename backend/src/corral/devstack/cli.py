"""``python -m corral.devstack`` (``make up``): start, supervise and stop the embedded stack."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from corral.devstack import console
from corral.devstack.models import configure as configure_models
from corral.devstack.setup import (
    QUEUES,
    REPO_ROOT,
    _dev_token,
    build_env,
    dev_secret,
    find_redis_server,
    free_port,
    migrate,
    prepare_python_sandbox,
)
from corral.devstack.supervisor import Supervisor


class Stop(Exception):
    """SIGINT or SIGTERM arrived: stop everything."""


def install_stop_signals() -> None:
    """Both signals handled explicitly: a stack started in the background inherits SIGINT as
    ignored (Python then installs no KeyboardInterrupt handler); it must still stop on it."""

    def on_signal(signum: int, _frame: object) -> None:
        raise Stop(signal.Signals(signum).name)

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)


def wait_ready(url: str, supervisor: Supervisor, timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        supervisor.tick()
        try:
            with urllib.request.urlopen(f"{url}/api/readyz", timeout=3) as resp:  # noqa: S310
                body: dict[str, Any] = json.loads(resp.read())
                return body
        except OSError as exc:
            last = str(exc)
        time.sleep(0.5)
    raise RuntimeError(f"the stack was not ready within {timeout:.0f}s: {last}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run the whole Corral stack locally.")
    parser.add_argument("--data-dir", type=Path, default=REPO_ROOT / ".corral")
    parser.add_argument("--port", type=int, default=int(os.environ.get("CORRAL_PORT", "8078")))
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--ready-timeout", type=float, default=120)
    args = parser.parse_args(argv)

    data_dir: Path = args.data_dir.resolve()
    for sub in ("redis", "objects", "logs"):
        (data_dir / sub).mkdir(parents=True, exist_ok=True)
    supervisor = Supervisor(data_dir / "logs", REPO_ROOT)
    install_stop_signals()
    try:
        run(args, data_dir, supervisor)
    except (Stop, KeyboardInterrupt) as stop:
        console.say(f"\nstopping ({stop or 'SIGINT'})…")
        return 0
    except RuntimeError as exc:
        console.error(str(exc))
        return 1
    finally:
        supervisor.stop()
    return 0


def run(args: argparse.Namespace, data_dir: Path, supervisor: Supervisor) -> None:
    redis_port = free_port()
    supervisor.spawn(
        "redis",
        [
            find_redis_server(),
            "--port",
            str(redis_port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(data_dir / "redis"),
            "--appendonly",
            "yes",
            "--appendfsync",
            "everysec",
            "--save",
            "",
        ],
        dict(os.environ),
        "redis",
        death_signal=signal.SIGTERM,  # flushes its append-only file
        stops_last=True,
    )
    redis_url = f"redis://127.0.0.1:{redis_port}"
    env = build_env(data_dir, redis_url, dev_secret(data_dir))
    console.say(configure_models(env))  # OPENAI_API_KEY or a local Ollama, when none is set
    # Workers download datasets from the app's signed local-store URLs.
    env.setdefault("CORRAL_DATASETS__WORKER_BASE_URL", f"http://127.0.0.1:{args.port}")
    py = sys.executable
    python_env = dict(env)
    python_prefix = prepare_python_sandbox(data_dir, python_env)
    env["TASKS_SANDBOX__VENV_PATH"] = python_env["TASKS_SANDBOX__VENV_PATH"]
    for queue in QUEUES:
        is_python = queue == "python_q"
        supervisor.spawn(
            f"worker {queue}",
            [
                *(python_prefix if is_python else []),
                py,
                "-m",
                "celery",
                "-A",
                "corral.tasks.main",
                "worker",
                "-Q",
                queue,
                "-n",
                f"{queue}@%h",
                "-c",
                str(args.concurrency),
                "-l",
                "INFO",
            ],
            python_env if is_python else env,
            f"worker-{queue}",
        )
    migrate(env)  # while the workers start; the app needs the schema, they do not
    supervisor.spawn(
        "app",
        [
            py,
            "-m",
            "uvicorn",
            "--factory",
            "corral.app.main:create_app",
            "--host",
            "127.0.0.1",
            "--port",
            str(args.port),
        ],
        env,
        "app",
    )
    url = f"http://127.0.0.1:{args.port}"
    ready = wait_ready(url, supervisor, args.ready_timeout)
    # Housekeeping only: started once the stack serves, off the start-up's critical path.
    supervisor.spawn(
        "beat",
        [
            py,
            "-m",
            "celery",
            "-A",
            "corral.tasks.main",
            "beat",
            "-s",
            str(data_dir / "celerybeat-schedule"),
            "-l",
            "INFO",
        ],
        env,
        "beat",
    )
    console.banner(url, ready, _dev_token(env), str(data_dir / "logs"))
    while True:
        supervisor.tick()
        time.sleep(0.5)
