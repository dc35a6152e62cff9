"""What an uploaded file holds: format, columns and types, row count, sample rows.

Runs in a worker thread (never on the event loop) on the app's own temp copy of the upload, with
DuckDB reading that one path (no user SQL here) or h5py for SONATA. A CSV is read in full with
exactly the options the worker will use (``CSV_READ_OPTIONS``), so a file accepted here loads
there. Anything unreadable raises ``InvalidDataset`` whose message says what is wrong.
"""

from __future__ import annotations

import datetime as dt
import decimal
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa

from corral.app.datasets.schemas import DatasetColumn
from corral.app.datasets.sonata import SonataError, populations, read_population
from corral.task_schemas import CSV_READ_OPTIONS, DatasetFormat

PARQUET_MAGIC = b"PAR1"
HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
CONTENT_TYPES = {
    DatasetFormat.CSV: "text/csv",
    DatasetFormat.PARQUET: "application/vnd.apache.parquet",
    DatasetFormat.SONATA: "application/x-hdf5",
}
_EXTENSIONS = {
    ".csv": DatasetFormat.CSV,
    ".parquet": DatasetFormat.PARQUET,
    ".pq": DatasetFormat.PARQUET,
    ".h5": DatasetFormat.SONATA,
    ".hdf5": DatasetFormat.SONATA,
    ".sonata": DatasetFormat.SONATA,
}


class InvalidDataset(ValueError):
    """The file is not a readable dataset of its format; the message says what to fix."""


@dataclass
class Extracted:
    format: DatasetFormat
    row_count: int
    columns: list[DatasetColumn]
    sample_rows: list[list[Any]]
    populations: list[str] = field(default_factory=list)
    population: str | None = None


def _magic(path: Path) -> bytes:
    with path.open("rb") as handle:
        return handle.read(8)


def detect_format(
    path: Path, filename: str | None, declared: DatasetFormat | None
) -> DatasetFormat:
    """The declared format checked against the file's magic bytes; else magic, then extension."""
    head = _magic(path)
    if not head:
        raise InvalidDataset("the file is empty")
    sniffed = (
        DatasetFormat.PARQUET
        if head[:4] == PARQUET_MAGIC
        else DatasetFormat.SONATA
        if head == HDF5_MAGIC
        else None
    )
    if declared is not None:
        if declared is DatasetFormat.PARQUET and sniffed is not DatasetFormat.PARQUET:
            raise InvalidDataset("not a Parquet file: it does not start with the PAR1 marker")
        if declared is DatasetFormat.SONATA and sniffed is not DatasetFormat.SONATA:
            raise InvalidDataset("not an HDF5 file: it does not start with the HDF5 signature")
        if declared is DatasetFormat.CSV and sniffed is not None:
            raise InvalidDataset(f"this is a {sniffed.value} file, not CSV; send format={sniffed}")
        return declared
    if sniffed is not None:
        return sniffed
    suffix = Path(filename or "").suffix.lower()
    return _EXTENSIONS.get(suffix, DatasetFormat.CSV)


def extract(path: Path, fmt: DatasetFormat, population: str | None, preview_rows: int) -> Extracted:
    if fmt is DatasetFormat.SONATA:
        return _sonata(path, population, preview_rows)
    con = duckdb.connect(":memory:", config={"threads": 2, "memory_limit": "1GB"})
    try:
        return _tabular(con, path, fmt, preview_rows)
    finally:
        con.close()


def _quote(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _first_line(exc: Exception) -> str:
    return str(exc).strip().split("\n\n", 1)[0][:1000]


def _tabular(
    con: duckdb.DuckDBPyConnection, path: Path, fmt: DatasetFormat, preview_rows: int
) -> Extracted:
    if fmt is DatasetFormat.CSV:
        source = f"read_csv({_quote(str(path))}, {CSV_READ_OPTIONS})"
        what = "malformed CSV"
    else:
        source = f"read_parquet({_quote(str(path))})"
        what = "unreadable Parquet file"
    try:
        described = con.execute(f"DESCRIBE SELECT * FROM {source}").fetchall()  # noqa: S608
        columns = [DatasetColumn(name=str(r[0]), type=str(r[1])) for r in described]
        if not columns:
            raise InvalidDataset(f"{what}: no columns")
        if (
            fmt is DatasetFormat.CSV
            and len(columns) == 1
            and any(sep in columns[0].name for sep in (",", ";", "\t", "|"))
        ):
            raise InvalidDataset(
                f"{what}: no consistent delimiter (rows have different numbers of fields); "
                "check the header and every row"
            )
        checks = ""
        if fmt is DatasetFormat.CSV:
            # min() of every column makes DuckDB parse every value, not only count the rows.
            checks = "".join(f", min({_ident(c.name)})" for c in columns)
        row = con.execute(f"SELECT count(*){checks} FROM {source}").fetchone()  # noqa: S608
        sample = con.execute(f"SELECT * FROM {source} LIMIT {int(preview_rows)}").fetchall()  # noqa: S608
    except duckdb.Error as exc:
        raise InvalidDataset(f"{what}: {_first_line(exc)}") from exc
    return Extracted(
        format=fmt,
        row_count=int(row[0]) if row else 0,
        columns=columns,
        sample_rows=[[jsonable(v) for v in r] for r in sample],
    )


def _sonata(path: Path, population: str | None, preview_rows: int) -> Extracted:
    try:
        names = populations(path)
        table, count = read_population(path, population, limit=max(preview_rows, 1))
    except SonataError as exc:
        raise InvalidDataset(f"invalid SONATA nodes file: {exc}") from exc
    con = duckdb.connect(":memory:", config={"threads": 1})
    try:
        columns = arrow_columns(con, table)
    finally:
        con.close()
    rows = table.slice(0, preview_rows).to_pylist()
    return Extracted(
        format=DatasetFormat.SONATA,
        row_count=count,
        columns=columns,
        sample_rows=[[jsonable(v) for v in r.values()] for r in rows],
        populations=names,
        population=str(table.column("population")[0]) if count else population,
    )


def arrow_columns(con: duckdb.DuckDBPyConnection, table: pa.Table) -> list[DatasetColumn]:
    """The DuckDB types the worker will see for this Arrow table."""
    con.register("corral_preview", table)
    try:
        described = con.execute("DESCRIBE SELECT * FROM corral_preview").fetchall()
    finally:
        con.unregister("corral_preview")
    return [DatasetColumn(name=str(r[0]), type=str(r[1])) for r in described]


def jsonable(value: Any) -> Any:
    """Preview cells as JSON (the worker's ``runner.jsonable``, short strings, no NaN)."""
    if value is None or isinstance(value, bool | int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, str):
        return value if len(value) <= 200 else value[:200] + "…"
    if isinstance(value, decimal.Decimal):
        number = float(value)
        return number if math.isfinite(number) else None
    if isinstance(value, dt.datetime | dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    return jsonable(str(value))
