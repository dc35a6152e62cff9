"""The ``circuit.analyze`` algorithm: download, load, ask, check, run, (repair once), return.

Failures of the download or of the file itself end the task with a typed error (no tokens were
spent yet). Everything after the model is involved ends in a normal output whose ``error`` says
what went wrong, so the token usage always reaches the caller.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import duckdb
import pyarrow.parquet as pq
import structlog

from corral.config import LLMSettings, StorageSettings
from corral.task_schemas import (
    AnalysisError,
    AnalysisTimings,
    CircuitAnalyzeInput,
    CircuitAnalyzeOutput,
    DatasetFormat,
    SQLAttempt,
)
from corral.tasks.circuit.download import download
from corral.tasks.circuit.loading import open_loaded
from corral.tasks.circuit.model import Answer, ModelFailed, SQLWriter
from corral.tasks.circuit.prompt import profile_table, question_messages, repair_messages
from corral.tasks.circuit.runner import (
    QueryFailed,
    QueryLimitExceeded,
    QueryResult,
    QueryTimeout,
    run_select,
    table_rows,
)
from corral.tasks.circuit.settings import CircuitSettings
from corral.tasks.circuit.sql_guard import BadSyntax, UnsafeSQL, check_select
from corral.tasks.object_store import get_object_store, new_key

log = structlog.get_logger(__name__)

PARQUET_TYPE = "application/vnd.apache.parquet"
STEPS = 4
_SUFFIX = {
    DatasetFormat.CSV: ".csv",
    DatasetFormat.PARQUET: ".parquet",
    DatasetFormat.SONATA: ".h5",
}

Progress = Callable[[float | None, float | None, str], None]


@dataclass
class Deps:
    """What the algorithm needs from the worker (settings, who asked, how to report)."""

    circuit: CircuitSettings
    llm: LLMSettings
    storage: StorageSettings
    owner_id: str
    progress: Progress


@dataclass
class _Run:
    deps: Deps
    params: CircuitAnalyzeInput
    timings: AnalysisTimings = field(default_factory=AnalysisTimings)
    attempts: list[SQLAttempt] = field(default_factory=list)
    writer: SQLWriter | None = None
    explanation: str | None = None

    def run(self) -> CircuitAnalyzeOutput:
        started = time.perf_counter()
        settings = self.deps.circuit
        with tempfile.TemporaryDirectory(prefix="corral-circuit-") as tmp:
            temp_dir = Path(tmp)
            path = temp_dir / f"dataset{_SUFFIX[self.params.dataset_format]}"
            self.deps.progress(1, STEPS, "downloading dataset")
            t = time.perf_counter()
            size = download(
                self.params.dataset_url,
                path,
                max_bytes=settings.max_download_bytes,
                connect_timeout_s=settings.download_connect_timeout_s,
                read_timeout_s=settings.download_read_timeout_s,
                total_timeout_s=settings.download_timeout_s,
            )
            self.timings.download_s = time.perf_counter() - t
            self.deps.progress(2, STEPS, f"loading {size} bytes into DuckDB")
            t = time.perf_counter()
            spill = temp_dir / "spill"
            spill.mkdir()
            con, dataset_rows = open_loaded(
                settings, spill, path, self.params.dataset_format, self.params.population
            )
            path.unlink()  # the table holds the data now; free the disk early
            self.timings.load_s = time.perf_counter() - t
            try:
                output = self._answer(con, temp_dir)
            finally:
                con.close()
        output.dataset_rows = dataset_rows
        self.timings.total_s = time.perf_counter() - started
        output.timings = AnalysisTimings.model_validate(
            {k: round(v, 4) for k, v in self.timings.model_dump().items()}
        )
        return output

    # -- question to table -----------------------------------------------------------------------

    def _answer(self, con: duckdb.DuckDBPyConnection, temp_dir: Path) -> CircuitAnalyzeOutput:
        params = self.params
        if params.sql is not None:
            self.deps.progress(4, STEPS, "running query")
            return self._finish(con, temp_dir, params.sql, "caller", repairs_left=0)
        self.deps.progress(3, STEPS, "asking model")
        self.writer = SQLWriter(
            self.deps.llm,
            params.model,
            self.deps.owner_id,
            lambda message, data: self.deps.progress(None, None, message),
            self.deps.circuit.model_max_tokens,
        )
        t = time.perf_counter()
        try:
            profile = profile_table(con, self.deps.circuit)
        except QueryTimeout as exc:
            return self._failed(AnalysisError(type="QueryTimeout", message=str(exc)), None)
        finally:
            self.timings.profile_s = time.perf_counter() - t
        messages = question_messages(profile, params.question)
        t = time.perf_counter()
        try:
            answer = self.writer.ask(messages)
        except ModelFailed as exc:
            return self._failed(exc.error, None)
        finally:
            self.timings.model_s += time.perf_counter() - t
        self.explanation = answer.explanation
        self.deps.progress(4, STEPS, "running query")
        return self._finish(con, temp_dir, answer.sql, "model", repairs_left=1, answer=answer,
                            messages=messages)  # fmt: skip

    def _finish(
        self,
        con: duckdb.DuckDBPyConnection,
        temp_dir: Path,
        sql: str,
        source: Literal["caller", "model", "repair"],
        *,
        repairs_left: int,
        answer: Answer | None = None,
        messages: list[dict[str, str]] | None = None,
    ) -> CircuitAnalyzeOutput:
        while True:
            attempt = SQLAttempt(sql=sql, source=source)
            self.attempts.append(attempt)
            t = time.perf_counter()
            result: QueryResult | None = None
            try:
                result = self._run_checked(con, sql)
            except (UnsafeSQL, BadSyntax, QueryFailed, QueryTimeout, QueryLimitExceeded) as exc:
                attempt.error = _error_of(exc)
            finally:
                self.timings.query_s += time.perf_counter() - t
            if result is not None:
                return self._table(result, sql, temp_dir)
            assert attempt.error is not None
            if not repairs_left or answer is None or messages is None or self.writer is None:
                return self._failed(attempt.error, sql)
            if attempt.error.type in ("QueryTimeout", "QueryLimitExceeded"):
                return self._failed(attempt.error, sql)
            repairs_left -= 1
            self.deps.progress(None, None, "asking model to repair the SQL")
            messages = [*messages, *repair_messages(answer.text, sql, attempt.error.message)]
            t = time.perf_counter()
            try:
                answer = self.writer.ask(messages)
            except ModelFailed as exc:
                return self._failed(exc.error, sql)
            finally:
                self.timings.model_s += time.perf_counter() - t
            self.explanation = answer.explanation
            sql, source = answer.sql, "repair"
            self.deps.progress(None, None, "running repaired query")

    def _run_checked(self, con: duckdb.DuckDBPyConnection, sql: str) -> QueryResult:
        checked = check_select(sql, con)
        cap = min(self.params.max_rows, self.deps.circuit.max_rows)
        return run_select(con, checked, max_rows=cap, timeout_s=self.deps.circuit.query_timeout_s)

    def _table(self, result: QueryResult, sql: str, temp_dir: Path) -> CircuitAnalyzeOutput:
        settings = self.deps.circuit
        result_key = None
        if result.row_count > settings.inline_rows:
            self.deps.progress(None, None, f"uploading {result.row_count} rows as Parquet")
            t = time.perf_counter()
            result_key = self._upload(result, temp_dir)
            self.timings.upload_s = time.perf_counter() - t
        return CircuitAnalyzeOutput(
            question=self.params.question,
            sql=sql,
            explanation=self.explanation,
            columns=result.columns,
            rows=table_rows(result.table, settings.inline_rows, settings.inline_cell_chars),
            row_count=result.row_count,
            truncated=result.truncated,
            result_key=result_key,
            attempts=self.attempts,
            **self._usage(),
        )

    def _upload(self, result: QueryResult, temp_dir: Path) -> str:
        path = temp_dir / "result.parquet"
        pq.write_table(result.table, path, compression="zstd")
        key = new_key(self.deps.owner_id, "results")
        get_object_store(self.deps.storage).put_file(key, path, PARQUET_TYPE)
        return key

    def _failed(self, error: AnalysisError, sql: str | None) -> CircuitAnalyzeOutput:
        log.info("analysis failed", error_type=error.type)
        return CircuitAnalyzeOutput(
            question=self.params.question,
            sql=sql,
            explanation=self.explanation,
            error=error,
            attempts=self.attempts,
            **self._usage(),
        )

    def _usage(self) -> dict[str, Any]:
        return self.writer.report() if self.writer is not None else {}


def _error_of(exc: Exception) -> AnalysisError:
    if isinstance(exc, UnsafeSQL):
        return AnalysisError(type="UnsafeSQL", message=str(exc))
    if isinstance(exc, QueryTimeout):
        return AnalysisError(type="QueryTimeout", message=str(exc))
    if isinstance(exc, QueryLimitExceeded):
        return AnalysisError(type="QueryLimitExceeded", message=str(exc))
    return AnalysisError(type="SQLError", message=str(exc))


def run_analysis(params: CircuitAnalyzeInput, deps: Deps) -> CircuitAnalyzeOutput:
    return _Run(deps, params).run()
