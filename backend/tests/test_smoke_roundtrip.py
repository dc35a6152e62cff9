from __future__ import annotations

import httpx


async def test_echo_roundtrip_over_http(api: httpx.AsyncClient) -> None:
    resp = await api.post(
        "/api/tools/echo/invoke", json={"arguments": {"payload": {"x": 1}}, "timeout_s": 20}
    )
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["status"] == "done"
    assert body["output"]["payload"] == {"x": 1}
