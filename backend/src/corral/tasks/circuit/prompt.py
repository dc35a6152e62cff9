"""What the model is told: the schema of ``neurons``, a few column statistics and sample rows.

Statistics make the SQL right more often than the schema alone: the model sees that ``layer``
holds ``'L1'..'L6'`` (not integers) and that ``y`` spans 0..2082 (micrometres). They are computed
with our own statements on the locked-down connection, under the query time limit.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import duckdb

from corral.task_schemas import NEURONS_TABLE
from corral.tasks.circuit.loading import quote_ident
from corral.tasks.circuit.runner import jsonable, run_internal
from corral.tasks.circuit.settings import CircuitSettings

ANSWER_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "sql": {"type": "string", "description": "One DuckDB SELECT over the table neurons."},
        "explanation": {"type": "string", "description": "What the query computes, briefly."},
    },
    "required": ["sql", "explanation"],
    "additionalProperties": False,
}
JSON_SCHEMA_FORMAT: dict[str, Any] = {
    "type": "json_schema",
    "json_schema": {"name": "sql_answer", "strict": True, "schema": ANSWER_SCHEMA},
}
JSON_OBJECT_FORMAT: dict[str, Any] = {"type": "json_object"}

SYSTEM_PROMPT = f"""You turn a scientist's question about a neuron population into one DuckDB SQL \
query. The data is the table {NEURONS_TABLE} (one row per neuron).
Rules:
- Write exactly one read-only SELECT statement over {NEURONS_TABLE} (WITH ... SELECT, UNION, \
window functions and subqueries are fine).
- Use no other table, no table functions (read_csv, read_parquet, glob, ...), no files and no \
COPY, ATTACH, INSTALL, LOAD, SET, PRAGMA, CREATE, INSERT, UPDATE or DELETE: they are rejected.
- Use the column names exactly as listed; double-quote names that need it.
- Name result columns clearly, order rows meaningfully, round long decimals, and aggregate \
rather than list thousands of rows when the question allows.
Reply with only a JSON object: {{"sql": "<the query>", "explanation": "<one or two sentences on \
what it computes>"}}."""

_NUMERIC_PREFIXES = (
    "TINYINT", "SMALLINT", "INTEGER", "BIGINT", "HUGEINT", "UTINYINT", "USMALLINT", "UINTEGER",
    "UBIGINT", "UHUGEINT", "FLOAT", "DOUBLE", "DECIMAL", "DATE", "TIMESTAMP", "TIME",
)  # fmt: skip
_TEXT_TYPES = ("VARCHAR", "BOOLEAN")


@dataclass
class ColumnProfile:
    name: str
    type: str
    distinct: int | None = None
    minimum: Any = None
    maximum: Any = None
    values: list[Any] | None = None

    def describe(self) -> str:
        parts = [f"- {self.name}: {self.type}"]
        facts: list[str] = []
        if self.values is not None:
            shown = ", ".join(json.dumps(v) for v in self.values)
            facts.append(f"{len(self.values)} distinct values: {shown}")
        else:
            if self.minimum is not None or self.maximum is not None:
                facts.append(f"min {self.minimum}, max {self.maximum}")
            if self.distinct is not None:
                facts.append(f"~{self.distinct} distinct")
        if facts:
            parts.append(" (" + "; ".join(facts) + ")")
        return "".join(parts)


@dataclass
class TableProfile:
    rows: int
    columns: list[ColumnProfile]
    sample: list[dict[str, Any]] = field(default_factory=list)
    sampled: bool = False


def _one_row(con: duckdb.DuckDBPyConnection, timeout: float, sql: str) -> list[Any]:
    row = run_internal(con, timeout, lambda: con.execute(sql).fetchone())
    return list(row or [])


def profile_table(con: duckdb.DuckDBPyConnection, settings: CircuitSettings) -> TableProfile:
    """Types, exact min/max, approximate distinct counts, small value lists, first rows.

    Hashing every value is the expensive part, so above ``prompt_full_scan_rows`` rows the
    distinct counts and value lists come from a 10 % sample of row blocks (said in the prompt).
    """
    table = quote_ident(NEURONS_TABLE)
    timeout = settings.query_timeout_s
    described_rows = run_internal(con, timeout, lambda: con.execute(f"DESCRIBE {table}").fetchall())
    columns = [ColumnProfile(str(r[0]), str(r[1])) for r in described_rows]
    rows = int((_one_row(con, timeout, f"SELECT count(*) FROM {table}") or [0])[0])  # noqa: S608
    sampled = rows > settings.prompt_full_scan_rows
    described = columns[: settings.prompt_stats_columns]
    numeric = [c for c in described if c.type.startswith(_NUMERIC_PREFIXES)]
    text = [c for c in described if c.type in _TEXT_TYPES]
    if rows and numeric:
        bounds = ", ".join(
            f"min({quote_ident(c.name)}), max({quote_ident(c.name)})" for c in numeric
        )
        values = _one_row(con, timeout, f"SELECT {bounds} FROM {table}")  # noqa: S608
        for i, c in enumerate(numeric):
            c.minimum, c.maximum = jsonable(values[2 * i], 40), jsonable(values[2 * i + 1], 40)
    source = f"{table} USING SAMPLE 10 PERCENT (system)" if sampled else table
    if rows and (numeric or text):
        counts = ", ".join(f"approx_count_distinct({quote_ident(c.name)})" for c in numeric + text)
        values = _one_row(con, timeout, f"SELECT {counts} FROM {source}")  # noqa: S608
        for c, distinct in zip(numeric + text, values, strict=False):
            c.distinct = distinct
        cap = settings.prompt_max_categories
        few = [c for c in text if c.distinct is not None and c.distinct <= cap]
        if few:
            lists = ", ".join(f"list_sort(list(DISTINCT {quote_ident(c.name)}))" for c in few)
            listed_values = _one_row(con, timeout, f"SELECT {lists} FROM {source}")  # noqa: S608
            for c, listed in zip(few, listed_values, strict=False):
                if listed is not None and len(listed) <= cap:
                    c.values = [jsonable(v, 60) for v in listed]
    sample: list[dict[str, Any]] = []
    if settings.prompt_sample_rows:
        sample_sql = f"SELECT * FROM {table} LIMIT {settings.prompt_sample_rows}"  # noqa: S608
        names = [c.name for c in columns]
        sample = [
            {n: jsonable(v, 80) for n, v in zip(names, row, strict=True)}
            for row in run_internal(con, timeout, lambda: con.execute(sample_sql).fetchall())
        ]
    return TableProfile(rows=rows, columns=columns, sample=sample, sampled=sampled)


def question_messages(profile: TableProfile, question: str) -> list[dict[str, str]]:
    lines = [
        f"Table {NEURONS_TABLE}: {profile.rows} rows, {len(profile.columns)} columns.",
        "Columns:"
        + (
            " (distinct counts and value lists from a 10 % sample of rows)"
            if profile.sampled
            else ""
        ),
        *(c.describe() for c in profile.columns),
    ]
    if profile.sample:
        lines += ["", f"First {len(profile.sample)} rows (JSON):"]
        lines += [json.dumps(row, ensure_ascii=False) for row in profile.sample]
    lines += ["", f"Question: {question}"]
    return [
        {"role": "system", "content": SYSTEM_PROMPT},
        {"role": "user", "content": "\n".join(lines)},
    ]


def repair_messages(answer_text: str, sql: str, error: str) -> list[dict[str, str]]:
    """Appended after the model's answer: what went wrong with its SQL, and a request to fix it."""
    return [
        {"role": "assistant", "content": answer_text},
        {
            "role": "user",
            "content": (
                f"That SQL failed.\nSQL:\n{sql}\nError:\n{error[:2000]}\n"
                "Fix the query and reply again with only the JSON object "
                '{"sql": "...", "explanation": "..."}.'
            ),
        },
    ]
