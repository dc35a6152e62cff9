"""Pool children talk to their worker's session host: one JSON line each way over a socket."""

from __future__ import annotations

import json
import socket
import time
from typing import Any

from corral.tasks.sessions import lifecycle


class HostUnavailable(RuntimeError):
    """This worker has no session host (not python_q, no bwrap, or the host died)."""


CONNECT_WAIT_S = 15.0  # the worker restarts a dead host within a few seconds


def _connect(path: str, timeout_s: float | None) -> socket.socket:
    """Connect, waiting while the host is being restarted (socket missing or refusing)."""
    deadline = time.monotonic() + CONNECT_WAIT_S
    while True:
        conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        conn.settimeout(timeout_s)
        try:
            conn.connect(path)
            return conn
        except OSError as exc:
            conn.close()
            if time.monotonic() > deadline:
                raise HostUnavailable(f"the session host is not answering: {exc}") from exc
            time.sleep(0.1)


def call_host(request: dict[str, Any], timeout_s: float | None = None) -> dict[str, Any]:
    path = lifecycle.socket_path()
    if path is None:
        raise HostUnavailable("this worker holds no sessions (the bwrap sandbox is required)")
    with _connect(str(path), timeout_s) as conn, conn.makefile("rwb") as stream:
        stream.write(json.dumps(request).encode() + b"\n")
        stream.flush()
        line = stream.readline()
    if not line:
        raise HostUnavailable("the session host closed the connection without an answer")
    answer: dict[str, Any] = json.loads(line)
    return answer
