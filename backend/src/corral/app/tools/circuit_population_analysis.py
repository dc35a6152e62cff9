"""The ``circuit_population_analysis`` tool: a question about a dataset answered on circuit_q.

Before anything is queued: the dataset must be the caller's (or the shared sample; anything else
is 404, like a missing one), the population must exist in it, and the model must be configured.
The dataset must be ``ready`` (409 ``dataset-not-ready`` while a worker still reads it, or when
that failed). The worker gets a presigned URL of the dataset's Parquet copy, valid for the
task's whole queue life plus its time limits.
``present`` turns a large result's object key into a download URL.
"""

from __future__ import annotations

from typing import Any

from fastapi import HTTPException, status
from pydantic import BaseModel, ConfigDict, Field

from corral.app.datasets import service as datasets
from corral.app.llm.service import UnknownModels, check_models
from corral.app.problems import ProblemError
from corral.app.records.retention import PURGED_KIND
from corral.app.tools.registry import Tool, ToolCall, register_tool
from corral.app.tools.service import BadArguments
from corral.task_schemas import (
    CIRCUIT_ANALYZE,
    NEURONS_TABLE,
    CircuitAnalyzeInput,
    DatasetFormat,
    Queue,
)

TOOL = "circuit_population_analysis"


class CircuitAnalysisArguments(BaseModel):
    model_config = ConfigDict(extra="forbid")

    dataset_id: str = Field(
        min_length=1,
        max_length=64,
        description="From GET /api/datasets (`sample-cortical-column` is the shared sample).",
    )
    question: str = Field(min_length=1, max_length=4000, description="In plain language.")
    sql: str | None = Field(
        default=None,
        min_length=1,
        max_length=20_000,
        description=f"Run this one SELECT over the table `{NEURONS_TABLE}` instead of asking "
        "the model.",
    )
    population: str | None = Field(
        default=None,
        min_length=1,
        max_length=200,
        description="SONATA: which node population (default: the one chosen at upload); "
        "CSV/Parquet: keep only rows whose `population` column equals it.",
    )
    model: str | None = Field(default=None, description="Configured model name; default model.")
    max_rows: int = Field(default=1000, ge=1, le=100_000, description="Row cap of the result.")


def _bad(field: str, msg: str, kind: str) -> BadArguments:
    return BadArguments(TOOL, [{"loc": [field], "msg": msg, "type": kind}])


async def _build_input(
    args: CircuitAnalysisArguments, call: ToolCall
) -> tuple[BaseModel, Queue | None]:
    services = call.services
    try:
        record = await datasets.get_ready(services, call.user, args.dataset_id)
    except datasets.DatasetPurged as exc:
        raise ProblemError(410, PURGED_KIND, str(exc), title="Purged") from exc
    except datasets.DatasetNotFound as exc:
        raise HTTPException(status.HTTP_404_NOT_FOUND, str(exc)) from exc
    except datasets.DatasetNotReady as exc:
        raise ProblemError(409, "dataset-not-ready", str(exc)) from exc
    population = args.population
    if record.format is DatasetFormat.SONATA:
        population = population or record.population
        if population not in record.populations:
            raise _bad(
                "population",
                f"no population {population!r} in {record.name}; it has: "
                + ", ".join(record.populations),
                "unknown_population",
            )
    elif population is not None and all(c.name != "population" for c in record.columns):
        raise _bad(
            "population",
            f"{record.name} has no `population` column to filter on; leave population out",
            "no_population_column",
        )
    if args.sql is None:
        try:
            check_models(services.settings.llm, [args.model])
        except UnknownModels as exc:
            raise _bad("model", str(exc), "unknown_model") from exc
    try:
        url = await datasets.worker_url(
            services, record, datasets.worker_url_ttl_s(CIRCUIT_ANALYZE)
        )
    except datasets.WorkerURLUnavailable as exc:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, str(exc)) from exc
    task_input = CircuitAnalyzeInput(
        dataset_url=url,
        dataset_format=DatasetFormat.PARQUET,  # every dataset is read as its Parquet copy
        population=population,
        question=args.question,
        sql=args.sql,
        model=args.model,
        max_rows=args.max_rows,
    )
    return task_input, None


async def _present(output: Any, call: ToolCall) -> Any:
    if not isinstance(output, dict) or not output.get("result_key"):
        return output
    ttl = call.services.settings.datasets.result_url_ttl_s
    url = await call.services.storage.presign_get(output["result_key"], expires_s=ttl)
    return {**output, "result_url": url}


register_tool(
    Tool(
        name=TOOL,
        description="Answer a question about a neuron population dataset (CSV, Parquet or "
        f"SONATA nodes; the table `{NEURONS_TABLE}`): the model writes one read-only DuckDB "
        "SELECT, run with a time limit and a row cap. Returns columns with types, rows, the "
        "SQL, truncation and token usage; large results as a Parquet download URL.",
        arguments=CircuitAnalysisArguments,
        task=CIRCUIT_ANALYZE,
        build_input=_build_input,
        present=_present,
    )
)
