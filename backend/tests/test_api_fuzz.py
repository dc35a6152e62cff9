"""Schemathesis over the whole API against the real app process of the test stack.

Real Redis, real Celery workers, the scripted OpenAI-protocol model (so chat, pipelines and
generate run their logic), rate limits raised (``stack_env``). Phases examples, coverage,
fuzzing and stateful (create → read → delete → read again), time-boxed by
``CORRAL_FUZZ_SECONDS`` (default 180 s; ``make fuzz`` runs longer). Zero failures, no baseline.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import LiveApp
from tests.support.fake_openai import FakeOpenAI
from tests.support.frontend_stack import scripted_assistant

CHECKS = ",".join(
    [
        "not_a_server_error",
        "status_code_conformance",
        "content_type_conformance",
        "response_schema_conformance",
        "negative_data_rejection",
        "use_after_free",
        "ensure_resource_availability",
    ]
)


# Multipart upload fields are text on the wire: a "boolean" name arrives as the string "true",
# a valid name. Type mutations of those fields cannot be told apart from valid input, so the two
# upload operations run without that one check (file size, format and content are still
# validated, and every other check runs on them).
UPLOADS = ("POST /api/datasets", "POST /api/storage")
UPLOAD_SECONDS = 30


def _schemathesis(
    live_app: LiveApp, backend_dir: Path, report: Path, seconds: int, checks: str, *select: str
) -> tuple[int, str]:
    cmd = [
        sys.executable,
        "-m",
        "schemathesis.cli",
        "run",
        f"{live_app.url}/openapi.json",
        "-H",
        f"Authorization: Bearer {live_app.token}",
        "--checks",
        checks,
        "--phases",
        "examples,coverage,fuzzing,stateful",
        "--max-time",
        str(seconds),
        # Above the longest wait a request may ask for (timeout_s <= 600): a slow answer is not
        # a failure, a hang past the API's own bound is.
        "--request-timeout",
        "660",
        # One worker: CPython 3.11.7's ast.parse is not thread-safe ("AST constructor
        # recursion depth mismatch" inside hypothesis when schemathesis runs threads).
        "--workers",
        "1",
        "--no-shrink",
        "--output-truncate",
        "true",
        "--report-dir",
        str(report),
        "--seed",
        os.environ.get("CORRAL_FUZZ_SEED", "20261203"),
        *select,
    ]
    run = subprocess.run(
        cmd,
        cwd=backend_dir,  # schemathesis.toml lives here
        capture_output=True,
        text=True,
        timeout=seconds + 1200,
        check=False,
    )
    return run.returncode, run.stdout + run.stderr


@pytest.mark.slow
@pytest.mark.run_last
@pytest.mark.timeout(1800)
def test_schemathesis_finds_nothing(
    live_app: LiveApp, fake_llm: FakeOpenAI, backend_dir: Path, tmp_path: Path
) -> None:
    fake_llm.respond_with(scripted_assistant)
    seconds = int(os.environ.get("CORRAL_FUZZ_SECONDS", "180"))
    excluded = [arg for name in UPLOADS for arg in ("--exclude-name", name)]
    code, out = _schemathesis(
        live_app, backend_dir, tmp_path / "api", seconds - UPLOAD_SECONDS, CHECKS, *excluded
    )
    assert code == 0, f"schemathesis found problems:\n{out[-12000:]}"
    upload_checks = ",".join(c for c in CHECKS.split(",") if c != "negative_data_rejection")
    included = [arg for name in UPLOADS for arg in ("--include-name", name)]
    code, out = _schemathesis(
        live_app, backend_dir, tmp_path / "uploads", UPLOAD_SECONDS, upload_checks, *included
    )
    assert code == 0, f"schemathesis found problems in uploads:\n{out[-12000:]}"
    _still_serves_waits(live_app)


def _still_serves_waits(live_app: LiveApp) -> None:
    """A slow answer is no schemathesis failure, so check the process is still whole: a wait
    ends as soon as its task does and a finished task's event stream ends. (The fuzzer once
    killed the process's stream hub with one cursor; every wait then ran to its deadline.)"""
    headers = {"Authorization": f"Bearer {live_app.token}"}
    with httpx.Client(base_url=live_app.url, headers=headers, timeout=30) as client:
        started = time.monotonic()
        resp = client.post(
            "/api/tools/echo/invoke", json={"arguments": {"payload": "alive"}, "timeout_s": 20}
        )
        assert resp.status_code == 200 and resp.json()["status"] == "done", resp.text
        assert time.monotonic() - started < 10, "a wait ran towards its deadline"
        events = client.get(f"/api/tasks/{resp.json()['task_id']}/events", timeout=10)
        assert "event: done" in events.text, events.text[-2000:]
