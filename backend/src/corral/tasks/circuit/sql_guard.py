"""Is this SQL one read-only SELECT over ``neurons``? Decided by parsing, never by keywords.

Two parsers must agree. DuckDB's own parser (the one that will run the text) says how many
statements there are and of which type: exactly one, of type SELECT. sqlglot then walks the tree:
the root is a SELECT or a set operation (UNION, INTERSECT, EXCEPT; WITH ... in front is fine),
no node anywhere is a command (COPY, ATTACH, SET, ...), and every table read is ``neurons`` or a
CTE of the query itself: table functions (``read_csv(...)``, ``glob(...)``), quoted file paths
and qualified names (``information_schema.tables``) are refused. A column called
``delete_count`` is just a column.

This is the first fence; the connection itself has external access disabled and its
configuration locked (see ``loading.lock_down``), so a file read that slipped past still fails.
"""

from __future__ import annotations

import duckdb
import sqlglot
from sqlglot import exp
from sqlglot.errors import ParseError

from corral.task_schemas import NEURONS_TABLE


class UnsafeSQL(ValueError):
    """Not a single read-only SELECT over the dataset; the message says what to change."""


class BadSyntax(ValueError):
    """DuckDB cannot parse it (a plain SQL error, worth a repair round)."""


_ROOTS: tuple[type[exp.Expression], ...] = (exp.Select, exp.Union, exp.Intersect, exp.Except)
_FORBIDDEN_NAMES = (
    "Alter", "Analyze", "Attach", "Cache", "Command", "Commit", "Copy", "Create", "Delete",
    "Describe", "Detach", "Drop", "Export", "Insert", "Install", "Into", "Kill", "LoadData",
    "Merge", "Pragma", "Refresh", "Rollback", "Set", "Summarize", "Transaction", "Uncache",
    "Update", "Use",
)  # fmt: skip
_FORBIDDEN: tuple[type[exp.Expression], ...] = tuple(
    cls for name in _FORBIDDEN_NAMES if isinstance(cls := getattr(exp, name, None), type)
)
_RULE = (
    f"write one read-only SELECT (WITH ... SELECT and UNION are fine) over the table "
    f"{NEURONS_TABLE}"
)


def check_select(sql: str, con: duckdb.DuckDBPyConnection) -> str:
    """Return ``sql`` stripped if it is one read-only SELECT over ``neurons``; raise otherwise."""
    text = sql.strip()
    if not text:
        raise UnsafeSQL(f"the SQL is empty; {_RULE}")
    _check_with_duckdb(text, con)
    _check_with_sqlglot(text)
    return text


def _check_with_duckdb(text: str, con: duckdb.DuckDBPyConnection) -> None:
    try:
        statements = con.extract_statements(text)
    except duckdb.ParserException as exc:
        raise BadSyntax(str(exc)) from exc
    if len(statements) != 1:
        raise UnsafeSQL(f"exactly one statement is allowed, got {len(statements)}; {_RULE}")
    kind = statements[0].type
    if kind != duckdb.StatementType.SELECT:
        name = str(kind).rsplit(".", 1)[-1]
        raise UnsafeSQL(f"only SELECT is allowed, not {name}; {_RULE}")


def _check_with_sqlglot(text: str) -> None:
    try:
        trees = [t for t in sqlglot.parse(text, dialect="duckdb") if t is not None]
    except ParseError as exc:
        raise UnsafeSQL(
            f"this SQL could not be verified as a plain SELECT ({exc.errors[0]['description']}"
            f"); {_RULE} using common SQL syntax"
            if exc.errors
            else f"this SQL could not be verified as a plain SELECT; {_RULE}"
        ) from exc
    if len(trees) != 1:
        raise UnsafeSQL(f"exactly one statement is allowed, got {len(trees)}; {_RULE}")
    tree = trees[0]
    if not isinstance(tree, _ROOTS):
        raise UnsafeSQL(f"only SELECT is allowed, not {tree.key.upper()}; {_RULE}")
    for node in tree.walk():
        if isinstance(node, _FORBIDDEN):
            raise UnsafeSQL(f"{node.key.upper()} is not allowed inside a query; {_RULE}")
        if isinstance(node, exp.Select) and node.args.get("into") is not None:
            raise UnsafeSQL(f"SELECT ... INTO is not allowed; {_RULE}")
    ctes = {cte.alias_or_name.lower() for cte in tree.find_all(exp.CTE)}
    for table in tree.find_all(exp.Table):
        _check_table(table, ctes)


def _check_table(table: exp.Table, ctes: set[str]) -> None:
    source = table.this
    if not isinstance(source, exp.Identifier):
        shown = source.sql(dialect="duckdb")[:80] if source is not None else table.sql()[:80]
        raise UnsafeSQL(
            f"table functions such as {shown} are not allowed (no files, globs or system "
            f"tables); read the data from the table {NEURONS_TABLE}"
        )
    if table.args.get("db") is not None or table.args.get("catalog") is not None:
        raise UnsafeSQL(
            f"qualified table name {table.sql(dialect='duckdb')[:80]} is not allowed; "
            f"the only table is {NEURONS_TABLE}"
        )
    name = source.name
    if name.lower() != NEURONS_TABLE and name.lower() not in ctes:
        raise UnsafeSQL(
            f"unknown table {name[:80]!r}: the only table is {NEURONS_TABLE} (and CTEs defined "
            "in the query)"
        )
