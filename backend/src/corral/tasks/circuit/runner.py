"""Running one checked SELECT with a time limit and a row cap; JSON-ready rows.

The time limit is DuckDB's own ``interrupt()`` fired by a timer thread (the query stops inside
DuckDB, the connection stays usable); memory and spill limits are DuckDB's settings, and hitting
them is ``QueryLimitExceeded``, a typed result, never an OOM-kill of the worker. The cap reads
at most ``max_rows + 1`` rows from a streaming Arrow reader: the extra row says "truncated"
without materialising the rest.
"""

from __future__ import annotations

import base64
import datetime as dt
import decimal
import math
import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import duckdb
import pyarrow as pa

from corral.task_schemas import ResultColumn
from corral.telemetry import tracer

T = TypeVar("T")


class QueryTimeout(Exception):
    """The statement ran past its time limit and was interrupted."""


class QueryFailed(Exception):
    """DuckDB refused or failed the statement; the message is DuckDB's."""


class QueryLimitExceeded(Exception):
    """The statement needed more memory (and spill space) than the analysis allows. DuckDB
    stops it inside its own allocator (``memory_limit``, ``max_temp_directory_size``), so the
    worker's memory stays bounded and the connection stays usable."""


def _limit_message(con: duckdb.DuckDBPyConnection, exc: duckdb.Error) -> str:
    try:
        row = con.execute(
            "SELECT current_setting('memory_limit'), current_setting('max_temp_directory_size')"
        ).fetchone()
        memory, spill = row if row else ("?", "?")
    except duckdb.Error:
        memory, spill = "?", "?"
    first = str(exc).split("\n", 1)[0][:300]
    return (
        f"the query needed more than the analysis allows ({memory} of memory, {spill} of spill "
        f"space) and was stopped ({first}); filter, aggregate or add a LIMIT"
    )


@dataclass
class QueryResult:
    columns: list[ResultColumn]
    table: pa.Table
    truncated: bool

    @property
    def row_count(self) -> int:
        return int(self.table.num_rows)


@contextmanager
def time_limit(con: duckdb.DuckDBPyConnection, seconds: float) -> Iterator[None]:
    """Interrupt whatever ``con`` runs once ``seconds`` pass; ``QueryTimeout`` when it did."""
    fired = threading.Event()

    def interrupt() -> None:
        fired.set()
        con.interrupt()

    timer = threading.Timer(seconds, interrupt)
    timer.daemon = True
    timer.start()
    try:
        yield
    except duckdb.InterruptException as exc:
        raise QueryTimeout(f"the query ran longer than {seconds:g}s and was stopped") from exc
    except duckdb.Error as exc:
        if fired.is_set():
            raise QueryTimeout(f"the query ran longer than {seconds:g}s and was stopped") from exc
        raise
    finally:
        timer.cancel()


def run_select(
    con: duckdb.DuckDBPyConnection, sql: str, *, max_rows: int, timeout_s: float
) -> QueryResult:
    """Run ``sql`` (already checked by ``sql_guard``) and keep at most ``max_rows`` rows."""
    span = tracer().start_as_current_span(
        "duckdb query", attributes={"db.system": "duckdb", "db.statement": sql[:1000]}
    )
    try:
        with span, time_limit(con, timeout_s):
            relation = con.sql(sql)
            if relation is None:
                raise QueryFailed("the statement returned no result set")
            columns = [
                ResultColumn(name=name, type=str(kind))
                for name, kind in zip(relation.columns, relation.types, strict=True)
            ]
            reader = relation.to_arrow_reader(min(max_rows + 1, 65_536))
            batches: list[pa.RecordBatch] = []
            seen = 0
            try:
                for batch in reader:
                    batches.append(batch)
                    seen += batch.num_rows
                    if seen > max_rows:
                        break
            finally:
                reader.close()
            table = pa.Table.from_batches(batches, schema=reader.schema)
    except duckdb.OutOfMemoryException as exc:
        raise QueryLimitExceeded(_limit_message(con, exc)) from exc
    except duckdb.Error as exc:
        raise QueryFailed(str(exc)) from exc
    truncated = table.num_rows > max_rows
    return QueryResult(columns, table.slice(0, max_rows), truncated)


def run_internal(con: duckdb.DuckDBPyConnection, timeout_s: float, fn: Callable[[], T]) -> T:
    """Our own statements (stats, samples) under the same time limit."""
    with time_limit(con, timeout_s):
        return fn()


def jsonable(value: Any, max_chars: int) -> Any:
    """A value JSON can carry: NaN/inf become null, decimals floats, dates ISO strings."""
    if value is None or isinstance(value, bool | int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, str):
        return value if len(value) <= max_chars else value[:max_chars] + "…"
    if isinstance(value, decimal.Decimal):
        exponent = value.as_tuple().exponent
        if isinstance(exponent, int) and exponent >= 0:
            return int(value)  # HUGEINT sums, DECIMAL(p, 0)
        number = float(value)
        return number if math.isfinite(number) else None
    if isinstance(value, dt.datetime | dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, dt.timedelta):
        return value.total_seconds()
    if isinstance(value, bytes | bytearray | memoryview):
        return jsonable(base64.b64encode(bytes(value)).decode(), max_chars)
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, dict):
        return {str(k): jsonable(v, max_chars) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v, max_chars) for v in value]
    return jsonable(str(value), max_chars)


def table_rows(table: pa.Table, limit: int, max_chars: int) -> list[list[Any]]:
    """The first ``limit`` rows as lists of JSON values (column order kept)."""
    head = table.slice(0, limit)
    columns = [column.to_pylist() for column in head.columns]
    return [[jsonable(col[i], max_chars) for col in columns] for i in range(head.num_rows)]
