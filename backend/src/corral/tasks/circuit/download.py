"""Streaming the dataset from its presigned URL to a temp file, with a size cap and deadlines.

The server's ``Content-Length`` is checked first (a file claiming 10 GB is refused before a byte
is read), then every byte is counted, because a server may send no length or lie about it.
Redirects are not followed: the app hands out a direct URL.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

import httpx

from corral.tasks._base import TaskUserError, TransientTaskError

_CHUNK = 1 << 20


class DatasetTooLarge(TaskUserError):
    error_type = "DatasetTooLarge"


class DatasetUnavailable(TaskUserError):
    """The link was refused (expired, deleted) or the transfer could not finish in time."""

    error_type = "DatasetUnavailable"


def _where(url: str) -> str:
    """Scheme, host and path only: the query string of a presigned URL is a credential."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}{parts.path}"


def download(
    url: str,
    dest: Path,
    *,
    max_bytes: int,
    connect_timeout_s: float,
    read_timeout_s: float,
    total_timeout_s: float,
) -> int:
    """Write the body of ``url`` to ``dest``; returns its size. Never more than ``max_bytes``."""
    if urlsplit(url).scheme not in {"http", "https"}:
        raise DatasetUnavailable(f"dataset URL must be http(s), not {_where(url)}")
    timeout = httpx.Timeout(
        connect=connect_timeout_s, read=read_timeout_s, write=read_timeout_s, pool=connect_timeout_s
    )
    deadline = time.monotonic() + total_timeout_s
    size = 0
    try:
        with _client().stream("GET", url, timeout=timeout) as response:
            _check_status(response, url)
            declared = _declared_length(response)
            if declared is not None and declared > max_bytes:
                raise DatasetTooLarge(
                    f"the dataset is {declared} bytes (Content-Length), over the "
                    f"{max_bytes}-byte limit of this worker"
                )
            with dest.open("wb") as out:
                for chunk in response.iter_bytes(_CHUNK):
                    size += len(chunk)
                    if size > max_bytes:
                        raise DatasetTooLarge(
                            f"the dataset is larger than the {max_bytes}-byte limit of this "
                            f"worker; the download was stopped at {size} bytes"
                        )
                    out.write(chunk)
                    if time.monotonic() > deadline:
                        raise DatasetUnavailable(
                            f"the dataset download took longer than {total_timeout_s:g}s "
                            f"(got {size} bytes); try again later"
                        )
    except httpx.TimeoutException as exc:
        raise TransientTaskError(f"dataset download timed out ({_where(url)})") from exc
    except httpx.TransportError as exc:
        raise TransientTaskError(
            f"dataset download failed ({_where(url)}): {type(exc).__name__}"
        ) from exc
    return size


_clients: dict[int, httpx.Client] = {}
_clients_lock = threading.Lock()


def _client() -> httpx.Client:
    """One client per process (building one costs tens of ms: TLS context, pools)."""
    with _clients_lock:
        client = _clients.get(os.getpid())
        if client is None:
            client = httpx.Client(follow_redirects=False)
            _clients[os.getpid()] = client
        return client


def _check_status(response: httpx.Response, url: str) -> None:
    status = response.status_code
    if status == 200:
        return
    if status == 429 or status >= 500:
        raise TransientTaskError(f"dataset server answered HTTP {status} ({_where(url)})")
    raise DatasetUnavailable(
        f"the dataset link was refused (HTTP {status}): it may have expired or the dataset was "
        "deleted; run the analysis again"
    )


def _declared_length(response: httpx.Response) -> int | None:
    value = response.headers.get("content-length")
    if value is None or response.headers.get("content-encoding"):
        return None  # compressed: the header counts compressed bytes; the loop counts the rest
    try:
        return int(value)
    except ValueError:
        return None
