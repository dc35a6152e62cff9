"""Pool children talk to their worker's session host: one JSON line each way over a socket."""

from __future__ import annotations

import json
import socket
from typing import Any

from corral.tasks.sessions import lifecycle


class HostUnavailable(RuntimeError):
    """This worker has no session host (not python_q, no bwrap, or the host died)."""


def call_host(request: dict[str, Any], timeout_s: float | None = None) -> dict[str, Any]:
    path = lifecycle.socket_path()
    if path is None:
        raise HostUnavailable("this worker holds no sessions (the bwrap sandbox is required)")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
        conn.settimeout(timeout_s)
        try:
            conn.connect(str(path))
        except OSError as exc:
            raise HostUnavailable(f"the session host is not answering: {exc}") from exc
        with conn.makefile("rwb") as stream:
            stream.write(json.dumps(request).encode() + b"\n")
            stream.flush()
            line = stream.readline()
    if not line:
        raise HostUnavailable("the session host closed the connection without an answer")
    answer: dict[str, Any] = json.loads(line)
    return answer
