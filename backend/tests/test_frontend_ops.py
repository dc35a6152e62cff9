"""The Operations page in Chromium (``frontend/e2e/ops.mjs``): queues, workers and a live
failure with its trace id for an admin; nothing of it for other users. Same stack and build as
``test_frontend_e2e.py`` (Debian's Chromium through playwright-core)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.support.assistant import assistant_app, dev_token
from tests.support.db import new_sqlite_database
from tests.support.procs import Worker
from tests.test_frontend_e2e import (  # noqa: F401  (fixtures)
    CHROMIUM,
    SCREENSHOTS,
    _run,
    frontend_dist,
    node_modules,
)


@pytest.mark.timeout(600)
def test_operations_page_in_chromium(
    stack_env: dict[str, str],
    workers: dict[str, Worker],
    frontend_dist: Path,  # noqa: F811  (the fixture imported above)
    tmp_path: Path,
) -> None:
    if not Path(CHROMIUM).is_file():
        raise RuntimeError(f"no Chromium at {CHROMIUM}: apt-get install -y chromium")
    database = new_sqlite_database(tmp_path)
    with assistant_app(
        stack_env,
        database,
        "sqlite",
        CORRAL_FRONTEND_DIR=str(frontend_dist),
        CORRAL_ADMIN_USER_IDS='["ops-admin"]',
    ) as app:
        env = {
            **os.environ,
            "CORRAL_E2E_URL": app.url,
            "CORRAL_E2E_TOKEN": dev_token("ops-admin", app.secret),
            "CORRAL_E2E_USER_TOKEN": dev_token("ops-user", app.secret),
            "CORRAL_E2E_OUT": str(SCREENSHOTS),
            "CHROMIUM_PATH": CHROMIUM,
        }
        out = _run(["node", "e2e/ops.mjs"], timeout=240, env=env)
    print(out)
    assert "2 passed, 0 failed" in out
    assert (SCREENSHOTS / "30-operations.png").stat().st_size > 10_000
