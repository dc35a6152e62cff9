"""Bounded path and query parameters shared by the routers.

Every value from outside is bounded by the schema before it reaches SQL, Redis or a worker:
ids are short tokens, cursors and offsets fit in 64 bits, free text has a length cap.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Path, Query
from pydantic import WithJsonSchema

from corral.app.storage.store import KEY_RE

# Ids the API hands out (UUIDs, hex tokens, tool names): letters, digits and . _ : -
ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$"
MAX_INT64 = 2**63 - 1
# A Redis stream id: milliseconds (13 digits last until the year 2286) and a sequence number
# (19 digits stay below 2^64, as Redis requires).
STREAM_ID_PATTERN = r"^[0-9]{1,13}-[0-9]{1,19}$"  # not \d: it takes any Unicode digit
# An optional cursor is left out, never sent as null: documented as a plain string, so neither
# generated clients nor fuzzers send the header `Last-Event-ID: null`.
STREAM_ID_SCHEMA = WithJsonSchema({"type": "string", "maxLength": 48, "pattern": STREAM_ID_PATTERN})

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
        # Documented, and checked by the store with a message that says what is wrong.
        json_schema_extra={"pattern": f"^{KEY_RE.pattern}$"},
        examples=["dev-user/uploads/3f2b8c1e8d2a4c1e9f7a1b2c3d4e5f60"],
    ),
]
EventCursor = Annotated[
    str | None,
    Query(
        max_length=48,
        pattern=STREAM_ID_PATTERN,
        description="Resume after this event id (a stream id like 1700000000000-0).",
    ),
    STREAM_ID_SCHEMA,
]
PageLimit = Annotated[int, Query(ge=1, le=200, description="At most this many items.")]
