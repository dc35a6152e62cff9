"""Real databases for tests: a migrated SQLite file, and PostgreSQL.

PostgreSQL comes from ``CORRAL_TEST_POSTGRES_URL`` (any database on it; tests create their own
databases there) or, without it, a private server started here from the Debian ``postgresql``
package: ``initdb`` + ``pg_ctl`` on a free loopback port in a temp dir. PostgreSQL refuses to
run as root, so as root the server runs as the ``postgres`` user (made by the package). It
never skips: a machine without PostgreSQL fails with the fix.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from sqlalchemy.engine import make_url

from tests.support.procs import BACKEND_DIR, free_port, wait_until

T = TypeVar("T")
PG_HINT = "install PostgreSQL (apt-get install postgresql) or set CORRAL_TEST_POSTGRES_URL"


def alembic_config(url: str):  # type: ignore[no-untyped-def]
    from alembic.config import Config

    config = Config(str(BACKEND_DIR / "alembic.ini"))
    config.set_main_option("script_location", str(BACKEND_DIR / "alembic"))
    config.attributes["url"] = url
    config.attributes["configure_logging"] = False
    return config


def off_loop(fn: Callable[[], T]) -> T:
    """Run ``fn`` (which may call ``asyncio.run``) in a thread when an event loop is running."""
    import asyncio
    import concurrent.futures

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return fn()
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(fn).result()


def migrate(url: str) -> None:
    """``alembic upgrade head`` in-process (env.py runs its own event loop)."""
    from alembic import command

    off_loop(lambda: command.upgrade(alembic_config(url), "head"))


def sqlite_url(path: Path) -> str:
    return f"sqlite+aiosqlite:///{path}"


def new_sqlite_database(directory: Path, migrated: bool = True) -> str:
    url = sqlite_url(directory / f"corral-{uuid.uuid4().hex[:8]}.db")
    if migrated:
        migrate(url)
    return url


def _pg_bin(name: str) -> str:
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), reverse=True)
    if not candidates:
        raise RuntimeError(f"PostgreSQL's {name} not found; {PG_HINT}")
    return candidates[0]


@dataclass
class PostgresServer:
    url: str  # postgresql+asyncpg://user@127.0.0.1:port/postgres
    data_dir: Path | None = None
    run_as: list[str] | None = None

    def admin_dsn(self) -> str:
        return self.url.replace("postgresql+asyncpg://", "postgresql://", 1)

    def create_database(self, migrated: bool = True) -> str:
        """A fresh database on this server; returns its asyncpg URL."""
        import asyncio

        import asyncpg

        name = f"corral_test_{uuid.uuid4().hex[:10]}"

        async def create() -> None:
            conn = await asyncpg.connect(self.admin_dsn(), timeout=10)
            try:
                await conn.execute(f'CREATE DATABASE "{name}"')
            finally:
                await conn.close()

        off_loop(lambda: asyncio.run(create()))
        url = make_url(self.url).set(database=name).render_as_string(hide_password=False)
        if migrated:
            migrate(url)
        return url

    def stop(self) -> None:
        if self.data_dir is None:
            return
        subprocess.run(
            [
                *(self.run_as or []),
                _pg_bin("pg_ctl"),
                "-D",
                str(self.data_dir),
                "-m",
                "immediate",
                "-w",
                "stop",
            ],
            check=False,
            capture_output=True,
            timeout=60,
        )
        shutil.rmtree(self.data_dir.parent, ignore_errors=True)


def start_postgres() -> PostgresServer:
    initdb, pg_ctl = _pg_bin("initdb"), _pg_bin("pg_ctl")
    root = Path(tempfile.mkdtemp(prefix="corral-test-pg-"))
    data = root / "data"
    run_as: list[str] = []
    if os.geteuid() == 0:
        try:
            user = pwd.getpwnam("postgres")
        except KeyError:
            raise RuntimeError(f"no 'postgres' user to run PostgreSQL as; {PG_HINT}") from None
        os.chown(root, user.pw_uid, user.pw_gid)
        run_as = ["setpriv", f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}", "--init-groups"]
    port = free_port()
    env = {**os.environ, "LC_ALL": "C.UTF-8"}
    subprocess.run(
        [
            *run_as,
            initdb,
            "-D",
            str(data),
            "-U",
            "postgres",
            "-A",
            "trust",
            "-E",
            "UTF8",
            "--no-sync",
        ],
        check=True,
        capture_output=True,
        timeout=120,
        env=env,
    )
    options = (
        f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off "
        "-c synchronous_commit=off -c full_page_writes=off -c max_connections=200"
    )
    started = subprocess.run(
        [
            *run_as,
            pg_ctl,
            "-D",
            str(data),
            "-o",
            options,
            "-l",
            str(root / "log"),
            "-w",
            "-t",
            "60",
            "start",
        ],
        capture_output=True,
        timeout=90,
        env=env,
    )
    if started.returncode != 0:
        log = (root / "log").read_text(errors="replace") if (root / "log").exists() else ""
        raise RuntimeError(f"PostgreSQL did not start: {started.stderr.decode()}\n{log}")
    url = f"postgresql+asyncpg://postgres@127.0.0.1:{port}/postgres"
    server = PostgresServer(url, data, run_as)
    wait_until(lambda: _can_connect(server), 30, "PostgreSQL to accept connections")
    return server


def _can_connect(server: PostgresServer) -> bool:
    import asyncio

    import asyncpg

    async def ping() -> bool:
        conn = await asyncpg.connect(server.admin_dsn(), timeout=5)
        await conn.close()
        return True

    return off_loop(lambda: asyncio.run(ping()))


@contextmanager
def postgres_server() -> Iterator[PostgresServer]:
    given = os.environ.get("CORRAL_TEST_POSTGRES_URL")
    if given:
        url = make_url(given).set(drivername="postgresql+asyncpg")
        yield PostgresServer(url.render_as_string(hide_password=False))
        return
    server = start_postgres()
    try:
        yield server
    finally:
        server.stop()
