"""``run_python`` end to end: HTTP, app, Redis, python_q worker (unprivileged), bwrap, store."""

from __future__ import annotations

import asyncio
import struct
import time
from typing import Any
from urllib.parse import urljoin

import httpx
import psutil

from tests.conftest import LiveApp
from tests.support.procs import Worker

PLOT_CODE = """
import numpy as np
import pandas as pd
import matplotlib.pyplot as plt

df = pd.DataFrame({"x": np.arange(10), "y": np.arange(10) ** 2})
print("rows:", len(df))
fig, ax = plt.subplots(figsize=(4, 3))
ax.plot(df.x, df.y)
int(df.y.sum())
"""


def png_size(data: bytes) -> tuple[int, int]:
    """Width and height from a PNG's IHDR chunk (after checking the signature)."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", data[:16]
    assert data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


async def invoke(
    api: httpx.AsyncClient, arguments: dict[str, object], timeout_s: float = 60
) -> dict[str, Any]:
    resp = await api.post(
        "/api/tools/run_python/invoke", json={"arguments": arguments, "timeout_s": timeout_s}
    )
    assert resp.status_code == 200, resp.text
    body: dict[str, Any] = resp.json()
    return body


async def test_tool_is_listed(api: httpx.AsyncClient) -> None:
    resp = await api.get("/api/tools")
    tools = {t["name"]: t for t in resp.json()}
    assert "run_python" in tools
    assert "code" in tools["run_python"]["parameters"]["properties"]


async def test_plot_comes_back_as_a_png_url(api: httpx.AsyncClient, live_app: LiveApp) -> None:
    body = await invoke(api, {"code": PLOT_CODE})
    assert body["status"] == "done", body
    out = body["output"]
    assert out["error"] is None, out
    assert out["stdout"] == "rows: 10\n"
    assert out["last_expr"] == "285"
    assert out["backend"] == "bwrap"
    assert len(out["figures"]) == 1
    figure = out["figures"][0]
    assert figure["content_type"] == "image/png"
    assert figure["key"].startswith("dev-user/plots/")
    async with httpx.AsyncClient(timeout=10, follow_redirects=True) as browser:  # no auth header
        got = await browser.get(urljoin(live_app.url + "/", figure["url"]))
    assert got.status_code == 200, got.text
    assert len(got.content) == figure["size"]
    assert png_size(got.content) == (400, 300)


async def test_svg_on_request_and_progress_events(api: httpx.AsyncClient) -> None:
    code = "import matplotlib.pyplot as plt\nplt.figure(); plt.plot([1, 2])\nprint('ok')"
    body = await invoke(api, {"code": code, "want_svg": True})
    assert body["status"] == "done", body
    types = sorted(f["content_type"] for f in body["output"]["figures"])
    assert types == ["image/png", "image/svg+xml"]
    detail = (await api.get(f"/api/tasks/{body['task_id']}")).json()
    messages = [e["data"].get("message") for e in detail["events"] if e["type"] == "progress"]
    assert "running code" in messages
    assert "uploading 2 figures" in messages
    assert any(e["type"] == "started" for e in detail["events"])


async def test_user_exception_is_a_normal_result(api: httpx.AsyncClient) -> None:
    body = await invoke(api, {"code": "x = 1\ny = 2\nraise ValueError(f'bad value {x + y}')\n"})
    assert body["status"] == "done", body
    assert body["output"]["error"] == {"type": "ValueError", "message": "bad value 3", "line": 3}


async def test_syntax_error_has_a_line(api: httpx.AsyncClient) -> None:
    body = await invoke(api, {"code": "x = 1\nif x\n  pass\n"})
    error = body["output"]["error"]
    assert error["type"] == "SyntaxError" and error["line"] == 2, error


async def test_input_file_from_the_store(api: httpx.AsyncClient) -> None:
    up = await api.post(
        "/api/storage", files={"file": ("data.csv", b"a,b\n1,2\n3,4\n", "text/csv")}
    )
    assert up.status_code in (200, 201), up.text
    key = up.json()["key"]
    code = "import pandas as pd\ndf = pd.read_csv('/input/data.csv')\nint(df.b.sum())"
    body = await invoke(api, {"code": code, "files": [{"key": key, "name": "data.csv"}]})
    assert body["output"]["error"] is None, body
    assert body["output"]["last_expr"] == "6"


async def test_someone_elses_file_is_refused(api: httpx.AsyncClient) -> None:
    resp = await api.post(
        "/api/tools/run_python/invoke",
        json={"arguments": {"code": "1", "files": ["someone-else/uploads/abc123"]}},
    )
    assert resp.status_code == 422, resp.text
    assert "not found" in resp.text
    for bad in ("ab", "../../etc/passwd", "dev-user/uploads/x y"):
        resp = await api.post(
            "/api/tools/run_python/invoke", json={"arguments": {"code": "1", "files": [bad]}}
        )
        assert resp.status_code == 422, (bad, resp.text)


async def test_bad_arguments_are_422(api: httpx.AsyncClient) -> None:
    resp = await api.post("/api/tools/run_python/invoke", json={"arguments": {"code": ""}})
    assert resp.status_code == 422
    resp = await api.post(
        "/api/tools/run_python/invoke", json={"arguments": {"code": "1", "timeout_s": 10_000}}
    )
    assert resp.status_code == 422 and "timeout_s" in resp.text


async def test_time_limit_then_worker_still_healthy(api: httpx.AsyncClient) -> None:
    body = await invoke(api, {"code": "while True:\n    pass\n", "timeout_s": 2})
    assert body["status"] == "done", body
    error = body["output"]["error"]
    assert error["type"] == "TimeLimitExceeded", error
    assert "2 s" in error["message"]
    again = await invoke(api, {"code": "print(1)"})
    assert again["output"]["stdout"] == "1\n"


def _sandboxes_under(worker: Worker) -> list[psutil.Process]:
    """bwrap processes (and their children) started by the python_q worker's pool."""
    try:
        root = psutil.Process(worker.proc.pid)
        procs = root.children(recursive=True)
    except psutil.NoSuchProcess:
        return []
    found = []
    for proc in procs:
        try:
            # Sessions' warm sandboxes (under the session host) are meant to stay alive.
            if proc.name() == "bwrap" and "/session/kernel.py" not in proc.cmdline():
                found.append(proc)
                found.extend(proc.children(recursive=True))
        except psutil.NoSuchProcess:
            continue
    return found


def _alive(procs: list[psutil.Process]) -> list[psutil.Process]:
    out = []
    for proc in procs:
        try:
            if proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE:
                out.append(proc)
        except psutil.NoSuchProcess:
            continue
    return out


async def test_cancel_kills_the_sandbox_within_a_second(
    api: httpx.AsyncClient, workers: dict[str, Worker]
) -> None:
    worker = workers["python_q"]
    body = await invoke(api, {"code": "while True:\n    pass\n", "timeout_s": 60}, timeout_s=0.5)
    assert body["status"] == "timeout", body
    task_id = body["task_id"]
    deadline = time.monotonic() + 15
    sandboxes: list[psutil.Process] = []
    while time.monotonic() < deadline:
        sandboxes = _alive(_sandboxes_under(worker))
        if any("python" in p.name() for p in sandboxes):
            break
        await asyncio.sleep(0.05)
    assert any("python" in p.name() for p in sandboxes), "sandboxed python never started"

    cancelled_at = time.monotonic()
    resp = await api.post(f"/api/tasks/{task_id}/cancel")
    assert resp.status_code == 200, resp.text
    while _alive(sandboxes) and time.monotonic() - cancelled_at < 5:
        await asyncio.sleep(0.02)
    took = time.monotonic() - cancelled_at
    assert not _alive(sandboxes), f"still running after {took:.2f}s: {_alive(sandboxes)}"
    assert took < 1.0, f"sandbox took {took:.2f}s to die"

    again = await invoke(api, {"code": "print(2)"})  # the pool replaced its child
    assert again["output"]["stdout"] == "2\n"
