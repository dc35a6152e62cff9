"""Session snapshots in the object store: the picklable globals and the cells that made them.

An object ``{owner}/session-snapshots/{session_id}-{seq}``: ``>Q`` header length, a JSON header
(seq, cells, unpicklable names, saved names), then the cloudpickle bytes made inside the
sandbox. The host never unpickles: only a kernel (in its sandbox) loads a snapshot, and only
one of its own owner's sessions.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from typing import Any

from corral.task_schemas.sessions import SESSION_SNAPSHOT_KIND, snapshot_key
from corral.tasks.object_store import Buffer, ObjectStore

HEAD = struct.Struct(">Q")
CONTENT_TYPE = "application/octet-stream"


@dataclass
class Snapshot:
    seq: int
    cells: list[str]
    blob: Buffer  # never copied on its way between the kernel and the store
    unpicklable: list[str] = field(default_factory=list)
    names: list[str] = field(default_factory=list)


def key_belongs(key: str, owner_id: str, session_id: str) -> bool:
    """Only snapshots of this owner's this session are ever loaded."""
    prefix = f"{owner_id}/{SESSION_SNAPSHOT_KIND}/{session_id}-"
    return key.startswith(prefix) and key[len(prefix) :].isdigit()


def encode(snapshot: Snapshot) -> list[Buffer]:
    """The object's parts: the header, then the blob as it lies."""
    header: dict[str, Any] = {
        "seq": snapshot.seq,
        "cells": snapshot.cells,
        "unpicklable": snapshot.unpicklable,
        "names": snapshot.names,
    }
    raw = json.dumps(header).encode()
    return [HEAD.pack(len(raw)) + raw, snapshot.blob]


def decode(data: bytearray | bytes) -> Snapshot:
    """The blob is a view into ``data``, not a copy."""
    (hlen,) = HEAD.unpack_from(data)
    header = json.loads(data[HEAD.size : HEAD.size + hlen])
    return Snapshot(
        seq=int(header["seq"]),
        cells=[str(c) for c in header.get("cells") or []],
        blob=memoryview(data)[HEAD.size + hlen :],
        unpicklable=[str(n) for n in header.get("unpicklable") or []],
        names=[str(n) for n in header.get("names") or []],
    )


def save(store: ObjectStore, owner_id: str, session_id: str, snapshot: Snapshot) -> str:
    key = snapshot_key(owner_id, session_id, snapshot.seq)
    store.put_parts(key, encode(snapshot), CONTENT_TYPE)
    return key


def load(store: ObjectStore, key: str, max_bytes: int) -> Snapshot:
    return decode(store.read_bytes(key, max_bytes))
