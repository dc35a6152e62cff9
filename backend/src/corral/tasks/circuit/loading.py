"""An in-process DuckDB holding the dataset as table ``neurons``, then locked down.

Order matters: the file is loaded FIRST (``read_csv``/``read_parquet`` of our own temp file, or an
Arrow table for SONATA), THEN external access is disabled and the configuration locked, so no
later statement can read or write a file, load an extension or undo those settings.
"""

from __future__ import annotations

from pathlib import Path

import duckdb
import pyarrow as pa

from corral.task_schemas import CSV_READ_OPTIONS, NEURONS_TABLE, DatasetFormat
from corral.tasks._base import TaskUserError
from corral.tasks.circuit.settings import CircuitSettings
from corral.tasks.circuit.sonata import SonataError, read_population


class DatasetInvalid(TaskUserError):
    error_type = "DatasetInvalid"


def quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def quote_literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def open_database(settings: CircuitSettings, temp_dir: Path) -> duckdb.DuckDBPyConnection:
    """A private in-memory database with bounded memory, threads and spill space."""
    return duckdb.connect(
        ":memory:",
        config={
            "threads": settings.threads,
            "memory_limit": f"{settings.memory_limit_mb}MB",
            "temp_directory": str(temp_dir),
            "max_temp_directory_size": f"{settings.spill_limit_mb}MB",
            "autoinstall_known_extensions": False,
            "autoload_known_extensions": False,
            "allow_community_extensions": False,
        },
    )


def _source(path: Path, fmt: DatasetFormat) -> str:
    if fmt is DatasetFormat.CSV:
        return f"read_csv({quote_literal(str(path))}, {CSV_READ_OPTIONS})"
    return f"read_parquet({quote_literal(str(path))})"


def load_dataset(
    con: duckdb.DuckDBPyConnection, path: Path, fmt: DatasetFormat, population: str | None
) -> int:
    """Create ``neurons`` from the downloaded file; returns its row count."""
    table = quote_ident(NEURONS_TABLE)
    try:
        if fmt is DatasetFormat.SONATA:  # uploads arrive as Parquet; direct callers may not
            if population is None:
                raise DatasetInvalid("give the SONATA population to read")
            _create_from_arrow(con, table, read_population(path, population))
        else:
            source = _source(path, fmt)
            where = ""
            if population is not None:
                describe = f"DESCRIBE SELECT * FROM {source}"  # noqa: S608 - our own path, quoted
                columns = [row[0] for row in con.execute(describe).fetchall()]
                if "population" not in columns:
                    raise DatasetInvalid(
                        "population was given but this dataset has no `population` column"
                    )
                where = f" WHERE population = {quote_literal(population)}"
            con.execute(f"CREATE TABLE {table} AS SELECT * FROM {source}{where}")  # noqa: S608
    except SonataError as exc:
        raise DatasetInvalid(f"cannot read the SONATA file: {exc}") from exc
    except duckdb.Error as exc:
        raise DatasetInvalid(f"cannot load the {fmt.value} dataset: {exc}") from exc
    row = con.execute(f"SELECT count(*) FROM {table}").fetchone()  # noqa: S608
    return int(row[0]) if row else 0


def _create_from_arrow(con: duckdb.DuckDBPyConnection, table: str, arrow: pa.Table) -> None:
    con.register("corral_source", arrow)
    try:
        con.execute(f"CREATE TABLE {table} AS SELECT * FROM corral_source")  # noqa: S608
    finally:
        con.unregister("corral_source")


def lock_down(con: duckdb.DuckDBPyConnection) -> None:
    """No files, no extensions, no Python objects by name; then nothing can be changed back."""
    for statement in (
        "SET python_enable_replacements = false",
        "SET enable_external_access = false",
        "SET lock_configuration = true",
    ):
        con.execute(statement)


def open_loaded(
    settings: CircuitSettings,
    temp_dir: Path,
    path: Path,
    fmt: DatasetFormat,
    population: str | None,
) -> tuple[duckdb.DuckDBPyConnection, int]:
    """``open_database`` + ``load_dataset`` + ``lock_down``: the only way the task gets a DB."""
    con = open_database(settings, temp_dir)
    try:
        rows = load_dataset(con, path, fmt, population)
        lock_down(con)
    except BaseException:
        con.close()
        raise
    return con, rows
