"""Bounded path and query parameters shared by the routers.

Every value from outside is bounded by the schema before it reaches SQL, Redis or a worker:
ids are short tokens, cursors and offsets fit in 64 bits, free text has a length cap.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Path, Query

# Ids the API hands out (UUIDs, hex tokens, tool names): letters, digits and . _ : -
ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$"
MAX_INT64 = 2**63 - 1

ResourceId = Annotated[
    str,
    Path(
        min_length=1,
        max_length=128,
        pattern=ID_PATTERN,
        description="An id returned by this API.",
        examples=["3f2b8c1e-8d2a-4c1e-9f7a-1b2c3d4e5f60"],
    ),
]
ToolName = Annotated[
    str,
    Path(
        min_length=1,
        max_length=64,
        pattern=r"^[a-z][a-z0-9_]{0,63}$",
        description="A tool name from GET /api/tools.",
        examples=["echo"],
    ),
]
ObjectKey = Annotated[
    str,
    Path(
        min_length=1,
        max_length=512,
        description="An object key returned by POST /api/storage: {user}/{kind}/{id}.",
        examples=["dev-user/uploads/3f2b8c1e8d2a4c1e9f7a1b2c3d4e5f60"],
    ),
]
EventCursor = Annotated[
    str | None,
    Query(
        max_length=48,
        pattern=r"^\d{1,20}-\d{1,20}$",
        description="Resume after this event id (a stream id like 1700000000000-0).",
    ),
]
PageLimit = Annotated[int, Query(ge=1, le=200, description="At most this many items.")]
