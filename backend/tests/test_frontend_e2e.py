"""The web UI, end to end and as built: Debian's Chromium (driven by playwright-core, never a
downloaded browser) against a real stack — Redis, one Celery worker per queue (python_q in the
bwrap sandbox), the app serving the freshly built frontend, and the scripted OpenAI-protocol
model. The scenarios live in ``frontend/e2e/run.mjs``; screenshots of every page go to
``test-output/screenshots/``. Also: the checked-in TypeScript API client matches the app.

Needs: node + npm (the build), ``chromium`` at /usr/bin/chromium (``apt-get install chromium``)
or ``CHROMIUM_PATH``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.assistant import assistant_app, dev_token
from tests.support.db import new_sqlite_database
from tests.support.fake_idp import FakeIdP
from tests.support.fake_openai import FakeOpenAI
from tests.support.frontend_stack import scripted_assistant
from tests.support.procs import Worker

REPO = Path(__file__).resolve().parents[2]
FRONTEND = REPO / "frontend"
SCREENSHOTS = REPO / "test-output" / "screenshots"
CHROMIUM = os.environ.get("CHROMIUM_PATH", "/usr/bin/chromium")


def _npm() -> str:
    npm = shutil.which("npm")
    if npm is None:
        raise RuntimeError("npm is not installed: the frontend needs Node.js 20.19+ and npm")
    return npm


def _run(cmd: list[str], timeout: float, env: dict[str, str] | None = None) -> str:
    done = subprocess.run(
        cmd, cwd=FRONTEND, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, f"{' '.join(cmd)} exited {done.returncode}:\n{output[-6000:]}"
    return output


@pytest.fixture(scope="module")
def node_modules() -> None:
    """``npm ci`` when the frontend's dependencies are not installed yet (a fresh clone)."""
    if not (FRONTEND / "node_modules" / ".package-lock.json").is_file():
        _run([_npm(), "ci", "--no-audit", "--no-fund"], timeout=600)


@pytest.fixture(scope="module")
def frontend_dist(node_modules: None, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The UI built exactly as ``make up`` builds it (type check + Vite), into a temp dir."""
    out = tmp_path_factory.mktemp("frontend-dist")
    _run([_npm(), "run", "build", "--", "--outDir", str(out), "--emptyOutDir"], timeout=300)
    assert (out / "index.html").is_file()
    return out


@pytest.fixture
def scripted_llm(fake_llm: FakeOpenAI) -> Iterator[FakeOpenAI]:
    fake_llm.respond_with(scripted_assistant)
    yield fake_llm


def test_api_client_is_current(node_modules: None) -> None:
    """`npm run api:check`: the generated client was regenerated after the API changed."""
    out = _run([_npm(), "run", "--silent", "api:check"], timeout=240)
    assert "current" in out


@pytest.mark.timeout(900)  # every page of the UI in a real browser, on a loaded CI machine
def test_browser_end_to_end(
    stack_env: dict[str, str],
    workers: dict[str, Worker],
    scripted_llm: FakeOpenAI,
    frontend_dist: Path,
    tmp_path: Path,
) -> None:
    if not Path(CHROMIUM).is_file():
        raise RuntimeError(f"no Chromium at {CHROMIUM}: apt-get install -y chromium")
    database = new_sqlite_database(tmp_path)
    idp = FakeIdP(client_id="corral-web", audience="corral-api", sub="oidc-1", name="Olive Sso")
    with (
        idp,
        assistant_app(stack_env, database, "sqlite", CORRAL_FRONTEND_DIR=str(frontend_dist)) as app,
        # the same UI and stack, in OIDC mode: single sign-on through the fake IdP
        assistant_app(
            stack_env,
            database,
            "sqlite",
            CORRAL_FRONTEND_DIR=str(frontend_dist),
            CORRAL_AUTH__MODE="oidc",
            CORRAL_AUTH__OIDC_ISSUER=idp.issuer,
            CORRAL_AUTH__OIDC_AUDIENCE=idp.audience,
            CORRAL_AUTH__OIDC_JWKS_URL=idp.jwks_url,
            CORRAL_AUTH__OIDC_CLIENT_ID=idp.client_id,
        ) as oidc_app,
        # the same UI before any model is configured: the chat's setup card
        assistant_app(
            stack_env, database, "sqlite", no_model=True, CORRAL_FRONTEND_DIR=str(frontend_dist)
        ) as no_model_app,
    ):
        env = {
            **os.environ,
            "CORRAL_E2E_URL": app.url,
            "CORRAL_E2E_TOKEN": dev_token("e2e-browser-user", app.secret),
            "CORRAL_E2E_OIDC_URL": oidc_app.url,
            "CORRAL_E2E_OIDC_NAME": idp.name,
            "CORRAL_E2E_NOMODEL_URL": no_model_app.url,
            "CORRAL_E2E_OUT": str(SCREENSHOTS),
            "CHROMIUM_PATH": CHROMIUM,
        }
        out = _run(["node", "e2e/run.mjs"], timeout=300, env=env)
    print(out)
    assert "0 failed" in out
    assert "ok    oidc-sign-in" in out
    assert [r["grant_type"] for r in idp.token_requests] == ["authorization_code"]
    for name in (
        "04-chat-plot-done",
        "06a-chat-from-landing",
        "06c-chat-reload-finished",
        "06d-chat-no-model",
        "07-chat-stopped",
        "08-code-runner",
        "11-datasets-sql-result",
        "15-pipeline-done",
        "16-tasks",
        "18-api-keys",
        "21-signed-in-with-oidc",
    ):
        assert (SCREENSHOTS / f"{name}.png").stat().st_size > 10_000, name
    assert scripted_llm.requests(), "the browser's turns reached the scripted model"
