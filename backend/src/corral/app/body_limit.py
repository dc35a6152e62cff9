"""A cap on request bodies, enforced before anything parses them.

A declared ``Content-Length`` over the cap is answered 413 without reading a byte; a chunked
body is read up to the cap and refused as soon as it passes it. Upload routes (multipart files)
have caps of their own and are named in ``exempt``.
"""

from __future__ import annotations

from collections.abc import Callable, Collection

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from corral.app.problems import problem_response

_METHODS_WITH_BODY = frozenset({"POST", "PUT", "PATCH", "DELETE"})


class BodyLimitMiddleware:
    def __init__(
        self,
        app: ASGIApp,
        *,
        max_bytes: Callable[[], int],
        exempt: Collection[tuple[str, str]] = (),
    ) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.exempt = frozenset(exempt)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in _METHODS_WITH_BODY:
            await self.app(scope, receive, send)
            return
        path = scope["path"].rstrip("/") or "/"
        if (scope["method"], path) in self.exempt:
            await self.app(scope, receive, send)
            return
        limit = self.max_bytes()
        declared = _content_length(scope)
        if declared is not None:
            if declared > limit:
                await self._refuse(scope, receive, send, limit, f"declares {declared} bytes")
                return
            await self.app(scope, receive, send)
            return
        # No Content-Length (chunked): buffer up to the cap, then replay.
        chunks: list[bytes] = []
        size = 0
        more = True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body = message.get("body", b"")
            size += len(body)
            if size > limit:
                await self._refuse(scope, receive, send, limit, f"is over {limit} bytes")
                return
            chunks.append(body)
            more = message.get("more_body", False)
        buffered = b"".join(chunks)
        sent = False

        async def replay() -> Message:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": buffered, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _refuse(
        self, scope: Scope, receive: Receive, send: Send, limit: int, what: str
    ) -> None:
        response = problem_response(
            None,
            413,
            "payload-too-large",
            f"the request body {what}; the limit for this endpoint is {limit} bytes "
            f"({limit // 1024} KiB, setting CORRAL_MAX_JSON_BODY_BYTES). Send large inputs as "
            "files (POST /api/storage or /api/datasets) and pass their keys instead.",
            extra={"instance": scope["path"], "limit_bytes": limit},
            headers={"Connection": "close"},
        )
        await response(scope, receive, send)


def _content_length(scope: Scope) -> int | None:
    for name, value in scope["headers"]:
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None
