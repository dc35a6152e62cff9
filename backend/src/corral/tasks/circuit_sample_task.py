"""``circuit.build_sample``: the shared sample dataset, generated on circuit_q (not in the app).

The bytes are the same every time (a fixed seed), so building it twice is harmless; the app
sends it at start-up when its record is missing, failed, or its file is gone.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from corral.task_schemas import (
    CIRCUIT_BUILD_SAMPLE,
    PARQUET_CONTENT_TYPE,
    SAMPLE_DATASET_KEY,
    CircuitIngestOutput,
    CircuitSampleInput,
    DatasetFormat,
)
from corral.tasks._base import TaskContext, corral_task
from corral.tasks.celery_app import settings
from corral.tasks.object_store import get_object_store


@corral_task(CIRCUIT_BUILD_SAMPLE)
def circuit_build_sample(ctx: TaskContext, params: CircuitSampleInput) -> CircuitIngestOutput:
    from corral.tasks.circuit import sample
    from corral.tasks.circuit.ingest import describe_parquet

    started = time.perf_counter()
    ctx.progress(1, 3, "generating the sample column")
    data = sample.parquet_bytes(sample.generate())
    with tempfile.TemporaryDirectory(prefix="corral-sample-") as tmp:
        path = Path(tmp) / "sample.parquet"
        path.write_bytes(data)
        ctx.progress(2, 3, "describing")
        rows, columns, preview = describe_parquet(path, settings.circuit, params.preview_rows)
        ctx.progress(3, 3, "storing")
        stored = get_object_store(settings.storage).put_file(
            SAMPLE_DATASET_KEY, path, PARQUET_CONTENT_TYPE
        )
    return CircuitIngestOutput(
        format=DatasetFormat.PARQUET,
        parquet_key=SAMPLE_DATASET_KEY,
        parquet_size=stored.size,
        row_count=rows,
        columns=columns,
        sample_rows=preview,
        description=sample.DESCRIPTION,
        seconds=round(time.perf_counter() - started, 3),
    )
