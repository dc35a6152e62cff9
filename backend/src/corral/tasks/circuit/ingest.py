"""``circuit.ingest``: an uploaded file, whatever its format, becomes one Parquet file.

1. Get the source: read in place from the local object store (no copy), or download it from
   S3 to a temp dir under the size cap.
2. Detect the format from the magic bytes (the declared one must agree).
3. Validate and convert once: a CSV is read by DuckDB with ``CSV_READ_OPTIONS`` (every value
   parsed) and written as Parquet; a SONATA file has every population written as rows of one
   table (``population`` column, attributes of all groups, dynamics parameters); a Parquet file
   is checked and kept as it is.
4. Describe it: DuckDB types, row count (of the chosen population for SONATA), first rows.

Errors of the file are typed (``INGEST_USER_ERRORS``) and say what to fix, e.g.
"population 'x' not in file; it has: cortex, thalamus". Analysis then always reads Parquet.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from corral.task_schemas import (
    CSV_READ_OPTIONS,
    PARQUET_CONTENT_TYPE,
    CircuitIngestInput,
    CircuitIngestOutput,
    DatasetFormat,
    ResultColumn,
)
from corral.tasks._base import TaskUserError
from corral.tasks.circuit import sonata
from corral.tasks.circuit.loading import DatasetInvalid, open_database, quote_ident, quote_literal
from corral.tasks.circuit.runner import jsonable
from corral.tasks.circuit.settings import CircuitSettings
from corral.tasks.object_store import (
    LocalObjectStore,
    ObjectNotFound,
    ObjectStore,
    ObjectTooLarge,
)

PARQUET_MAGIC = b"PAR1"
HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
STEPS = 4
_EXTENSIONS = {
    ".csv": DatasetFormat.CSV,
    ".parquet": DatasetFormat.PARQUET,
    ".pq": DatasetFormat.PARQUET,
    ".h5": DatasetFormat.SONATA,
    ".hdf5": DatasetFormat.SONATA,
    ".sonata": DatasetFormat.SONATA,
}
_PREVIEW_CHARS = 200

Progress = Callable[[float | None, float | None, str], None]


class UnknownPopulation(TaskUserError):
    error_type = "UnknownPopulation"


class DatasetTooLarge(TaskUserError):
    error_type = "DatasetTooLarge"


class DatasetMissing(TaskUserError):
    error_type = "DatasetMissing"


def detect_format(
    path: Path, filename: str | None, declared: DatasetFormat | None
) -> DatasetFormat:
    """The declared format checked against the file's magic bytes; else magic, then extension."""
    with path.open("rb") as handle:
        head = handle.read(8)
    if not head:
        raise DatasetInvalid("the file is empty")
    sniffed = (
        DatasetFormat.PARQUET
        if head[:4] == PARQUET_MAGIC
        else DatasetFormat.SONATA
        if head == HDF5_MAGIC
        else None
    )
    if declared is not None:
        if declared is DatasetFormat.PARQUET and sniffed is not DatasetFormat.PARQUET:
            raise DatasetInvalid("not a Parquet file: it does not start with the PAR1 marker")
        if declared is DatasetFormat.SONATA and sniffed is not DatasetFormat.SONATA:
            raise DatasetInvalid("not an HDF5 file: it does not start with the HDF5 signature")
        if declared is DatasetFormat.CSV and sniffed is not None:
            raise DatasetInvalid(f"this is a {sniffed.value} file, not CSV; send format={sniffed}")
        return declared
    if sniffed is not None:
        return sniffed
    return _EXTENSIONS.get(Path(filename or "").suffix.lower(), DatasetFormat.CSV)


def _first_line(exc: Exception) -> str:
    return str(exc).strip().split("\n\n", 1)[0][:1000]


def _source_path(store: ObjectStore, key: str, temp: Path, max_bytes: int) -> Path:
    if isinstance(store, LocalObjectStore):
        path = store.data_path(key)
        if not path.is_file():
            raise DatasetMissing(f"the uploaded file {key} is gone from the object store")
        if path.stat().st_size > max_bytes:
            raise DatasetTooLarge(f"the file is larger than the {max_bytes}-byte limit")
        return path
    dest = temp / "source"
    try:
        store.download_to(key, dest, max_bytes)
    except ObjectNotFound as exc:
        raise DatasetMissing(f"the uploaded file {key} is gone from the object store") from exc
    except ObjectTooLarge as exc:
        raise DatasetTooLarge(f"the file is larger than the {max_bytes}-byte limit") from exc
    return dest


def _csv_to_parquet(con: duckdb.DuckDBPyConnection, src: Path, out: Path) -> None:
    source = f"read_csv({quote_literal(str(src))}, {CSV_READ_OPTIONS})"
    try:
        described = con.execute(f"DESCRIBE SELECT * FROM {source}").fetchall()  # noqa: S608
        if not described:
            raise DatasetInvalid("malformed CSV: no columns")
        if len(described) == 1 and any(sep in str(described[0][0]) for sep in ",;\t|"):
            raise DatasetInvalid(
                "malformed CSV: no consistent delimiter (rows have different numbers of "
                "fields); check the header and every row"
            )
        # COPY parses every value of every row: a file accepted here loads everywhere.
        con.execute(
            f"COPY (SELECT * FROM {source}) TO {quote_literal(str(out))} "  # noqa: S608
            "(FORMAT parquet, COMPRESSION zstd)"
        )
    except duckdb.Error as exc:
        raise DatasetInvalid(f"malformed CSV: {_first_line(exc)}") from exc


def _check_parquet(con: duckdb.DuckDBPyConnection, path: Path) -> None:
    try:
        con.execute(f"SELECT count(*) FROM read_parquet({quote_literal(str(path))})").fetchone()  # noqa: S608
        if not con.execute(
            f"DESCRIBE SELECT * FROM read_parquet({quote_literal(str(path))})"  # noqa: S608
        ).fetchall():
            raise DatasetInvalid("unreadable Parquet file: no columns")
    except duckdb.Error as exc:
        raise DatasetInvalid(f"unreadable Parquet file: {_first_line(exc)}") from exc


def sonata_to_parquet(src: Path, out: Path, progress: Progress | None = None) -> list[str]:
    """Every population of a SONATA nodes file as rows of one Parquet file; returns their names.

    Populations are read one at a time; their columns are unified by name (a column a
    population lacks is null there)."""
    try:
        names = sonata.populations(src)
        tables: list[pa.Table] = []
        for i, name in enumerate(names):
            if progress is not None:
                progress(2, STEPS, f"reading population {name} ({i + 1}/{len(names)})")
            tables.append(sonata.read_population(src, name))
        table = pa.concat_tables(tables, promote_options="permissive")
    except sonata.SonataError as exc:
        raise DatasetInvalid(f"invalid SONATA nodes file: {exc}") from exc
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        raise DatasetInvalid(f"invalid SONATA nodes file: populations disagree: {exc}") from exc
    pq.write_table(table, out, compression="zstd")
    return names


def _columns(con: duckdb.DuckDBPyConnection, source: str) -> list[ResultColumn]:
    described = con.execute(f"DESCRIBE SELECT * FROM {source}").fetchall()  # noqa: S608
    return [ResultColumn(name=str(r[0]), type=str(r[1])) for r in described]


def _population_values(con: duckdb.DuckDBPyConnection, source: str) -> list[str]:
    rows = con.execute(
        f"SELECT DISTINCT CAST(population AS VARCHAR) FROM {source} ORDER BY 1 LIMIT 1001"  # noqa: S608
    ).fetchall()
    return [str(r[0]) for r in rows if r[0] is not None]


def ingest(
    params: CircuitIngestInput,
    store: ObjectStore,
    settings: CircuitSettings,
    progress: Progress,
) -> CircuitIngestOutput:
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="corral-ingest-") as tmp:
        temp = Path(tmp)
        progress(1, STEPS, "fetching the upload")
        src = _source_path(store, params.source_key, temp, params.max_bytes)
        fmt = detect_format(src, params.filename, params.declared_format)
        progress(2, STEPS, f"reading {src.stat().st_size} bytes of {fmt.value}")
        spill = temp / "spill"
        spill.mkdir()
        con = open_database(settings, spill)
        try:
            out = temp / "data.parquet"
            populations: list[str] = []
            if fmt is DatasetFormat.CSV:
                _csv_to_parquet(con, src, out)
            elif fmt is DatasetFormat.PARQUET:
                _check_parquet(con, src)
                out = src
            else:
                populations = sonata_to_parquet(src, out, progress)
            progress(3, STEPS, "describing")
            source = f"read_parquet({quote_literal(str(out))})"
            columns = _columns(con, source)
            population = params.population
            where = ""
            if fmt is DatasetFormat.SONATA:
                if population is None and len(populations) > 1:
                    raise UnknownPopulation(
                        "give the population to read; this file has: " + ", ".join(populations)
                    )
                population = population or populations[0]
                if population not in populations:
                    raise UnknownPopulation(
                        f"population {population!r} not in file; it has: " + ", ".join(populations)
                    )
            elif population is not None:
                if all(c.name != "population" for c in columns):
                    raise DatasetInvalid(
                        "population was given but this file has no `population` column"
                    )
                populations = _population_values(con, source)
                if population not in populations:
                    raise UnknownPopulation(
                        f"population {population!r} not in file; it has: "
                        + ", ".join(populations[:50])
                    )
            if population is not None:
                where = f" WHERE CAST(population AS VARCHAR) = {quote_literal(population)}"
            counted = con.execute(f"SELECT count(*) FROM {source}{where}").fetchone()  # noqa: S608
            order = f" ORDER BY {quote_ident('node_id')}" if fmt is DatasetFormat.SONATA else ""
            preview = con.execute(
                f"SELECT * FROM {source}{where}{order} LIMIT {int(params.preview_rows)}"  # noqa: S608
            ).fetchall()
        except duckdb.Error as exc:
            raise DatasetInvalid(f"cannot read the {fmt.value} file: {_first_line(exc)}") from exc
        finally:
            con.close()
        progress(4, STEPS, "storing the Parquet copy")
        if out == src:
            key, size = params.source_key, src.stat().st_size
        else:
            key = params.parquet_key
            size = store.put_file(key, out, PARQUET_CONTENT_TYPE).size
    return CircuitIngestOutput(
        format=fmt,
        parquet_key=key,
        parquet_size=size,
        row_count=int(counted[0]) if counted else 0,
        columns=columns,
        sample_rows=[[jsonable(v, _PREVIEW_CHARS) for v in row] for row in preview],
        populations=populations if fmt is DatasetFormat.SONATA else [],
        population=population,
        seconds=round(time.perf_counter() - started, 3),
    )


def describe_parquet(
    path: Path, settings: CircuitSettings, preview_rows: int
) -> tuple[int, list[ResultColumn], list[list[Any]]]:
    """Rows, columns and first rows of a Parquet file (the sample's record)."""
    with tempfile.TemporaryDirectory(prefix="corral-describe-") as tmp:
        con = open_database(settings, Path(tmp))
        try:
            source = f"read_parquet({quote_literal(str(path))})"
            counted = con.execute(f"SELECT count(*) FROM {source}").fetchone()  # noqa: S608
            columns = _columns(con, source)
            preview = con.execute(f"SELECT * FROM {source} LIMIT {int(preview_rows)}").fetchall()  # noqa: S608
        finally:
            con.close()
    rows = [[jsonable(v, _PREVIEW_CHARS) for v in row] for row in preview]
    return (int(counted[0]) if counted else 0), columns, rows
