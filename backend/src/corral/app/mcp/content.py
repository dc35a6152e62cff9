"""A tool's outcome as MCP content, and the resources a result links to.

- Figures: PNG as image content (base64, up to ``IMAGE_INLINE_MAX``) plus a resource link
  ``corral://tasks/{task_id}/figures/{n}`` for every figure (PNG and SVG).
- Tables (``columns`` + ``rows``, e.g. circuit analysis): the first ``TABLE_INLINE_ROWS`` rows
  inline; the rest as the resource ``.../table`` (CSV), and ``.../table.parquet`` when the
  worker stored the whole result as Parquet.
- Everything else as JSON text (also ``structuredContent``), capped at ``TEXT_MAX`` characters;
  past that the whole output is the resource ``.../result``.

Resources are read back through the task's owner check: another user's task is not found.
"""

from __future__ import annotations

import base64
import csv
import io
import json
import re
from dataclasses import dataclass
from typing import Any

import mcp_types as types
from mcp.shared.exceptions import MCPError

from corral.app.auth.service import User
from corral.app.services import Services
from corral.app.storage.store import InvalidKey, ObjectTooLarge, key_owner
from corral.app.streams import TaskDone, TaskFailed, long_poll_celery_result
from corral.app.task_runs import service as task_runs
from corral.app.tools.schemas import InvokeResponse

SCHEME = "corral"
IMAGE_INLINE_MAX = 5 * 1024 * 1024
RESOURCE_READ_MAX = 32 * 1024 * 1024
TABLE_INLINE_ROWS = 20
TEXT_MAX = 64 * 1024
PARQUET = "application/vnd.apache.parquet"

URI_RE = re.compile(
    r"^corral://tasks/(?P<task>[A-Za-z0-9_.:-]{1,128})/(?P<part>result|table|table\.parquet|"
    r"figures/(?P<n>[0-9]{1,4}))$"
)

TEMPLATES = [
    types.ResourceTemplate(
        name="task-result",
        uri_template="corral://tasks/{task_id}/result",
        description="A finished tool task's whole output as JSON.",
        mime_type="application/json",
    ),
    types.ResourceTemplate(
        name="task-figure",
        uri_template="corral://tasks/{task_id}/figures/{n}",
        description="Figure n (from 0) of a run_python result: PNG or SVG.",
    ),
    types.ResourceTemplate(
        name="task-table",
        uri_template="corral://tasks/{task_id}/table",
        description="The rows of a table result (circuit analysis) as CSV.",
        mime_type="text/csv",
    ),
    types.ResourceTemplate(
        name="task-table-parquet",
        uri_template="corral://tasks/{task_id}/table.parquet",
        description="A large table result as the Parquet file the worker stored.",
        mime_type=PARQUET,
    ),
]


def task_uri(task_id: str, part: str) -> str:
    return f"{SCHEME}://tasks/{task_id}/{part}"


def not_found(uri: str) -> MCPError:
    return MCPError(types.INVALID_PARAMS, f"resource not found: {uri}", {"uri": uri})


@dataclass
class _Built:
    content: list[types.ContentBlock]
    summary: Any


async def _figures(
    services: Services, task_id: str, figures: list[dict[str, Any]]
) -> list[types.ContentBlock]:
    blocks: list[types.ContentBlock] = []
    for n, figure in enumerate(figures):
        mime = str(figure.get("content_type") or "application/octet-stream")
        if mime == "image/png" and int(figure.get("size") or 0) <= IMAGE_INLINE_MAX:
            try:
                data = await services.storage.read(str(figure["key"]), max_bytes=IMAGE_INLINE_MAX)
            except (FileNotFoundError, ObjectTooLarge):
                data = None
            if data is not None:
                blocks.append(
                    types.ImageContent(data=base64.b64encode(data).decode(), mime_type=mime)
                )
        blocks.append(
            types.ResourceLink(
                uri=task_uri(task_id, f"figures/{n}"),
                name=str(figure.get("name") or f"figure-{n}"),
                mime_type=mime,
                size=int(figure["size"]) if figure.get("size") is not None else None,
            )
        )
    return blocks


def _table_links(task_id: str, output: dict[str, Any]) -> tuple[dict[str, Any], list[Any]]:
    rows = output.get("rows")
    if not isinstance(rows, list) or not isinstance(output.get("columns"), list):
        return output, []
    links: list[types.ContentBlock] = []
    if len(rows) > TABLE_INLINE_ROWS or output.get("result_key"):
        output = {**output, "rows": rows[:TABLE_INLINE_ROWS], "rows_inline": TABLE_INLINE_ROWS}
        links.append(
            types.ResourceLink(
                uri=task_uri(task_id, "table"),
                name="table.csv",
                mime_type="text/csv",
                description=f"{len(rows)} rows as CSV",
            )
        )
    if output.get("result_key"):
        links.append(
            types.ResourceLink(
                uri=task_uri(task_id, "table.parquet"),
                name="table.parquet",
                mime_type=PARQUET,
                description=f"the whole result ({output.get('row_count')} rows)",
            )
        )
    return output, links


async def tool_result(services: Services, response: InvokeResponse) -> types.CallToolResult:
    """An invoke's outcome as a ``CallToolResult`` (``isError`` unless it is ``done``)."""
    task_id = response.task_id
    if response.status != "done":
        error = response.error
        kind, message = (error.type, error.message) if error else (response.status, "")
        text = f"{response.status}: {kind}: {message} (task {task_id})"
        if response.status == "timeout":
            text += f"; read {task_uri(task_id, 'result')} later for the outcome"
        return types.CallToolResult(
            content=[types.TextContent(text=text)],
            structured_content=response.model_dump(mode="json"),
            is_error=True,
        )
    output = response.output
    blocks: list[types.ContentBlock] = []
    if isinstance(output, dict):
        if isinstance(output.get("figures"), list):
            blocks += await _figures(services, task_id, output["figures"])
        output, links = _table_links(task_id, output)
        blocks += links
    summary = {"task_id": task_id, "status": "done", "output": output}
    text = json.dumps(summary, default=str)
    if len(text) > TEXT_MAX:
        blocks.append(
            types.ResourceLink(
                uri=task_uri(task_id, "result"),
                name="result.json",
                mime_type="application/json",
                description="the whole output",
            )
        )
        summary = {
            "task_id": task_id,
            "status": "done",
            "truncated": True,
            "output_preview": text[: TEXT_MAX // 2],
            "result_uri": task_uri(task_id, "result"),
        }
        text = json.dumps(summary)
    return types.CallToolResult(
        content=[types.TextContent(text=text), *blocks], structured_content=summary
    )


def _csv(output: dict[str, Any]) -> str:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow([c.get("name") if isinstance(c, dict) else c for c in output["columns"]])
    for row in output.get("rows") or []:
        writer.writerow(
            [json.dumps(v) if isinstance(v, dict | list) else v for v in row]
            if isinstance(row, list)
            else [row]
        )
    return out.getvalue()


async def _read_key(services: Services, user: User, uri: str, key: Any) -> bytes:
    try:
        if key_owner(str(key)) != user.id:
            raise not_found(uri)
        return await services.storage.read(str(key), max_bytes=RESOURCE_READ_MAX)
    except (InvalidKey, FileNotFoundError) as exc:
        raise not_found(uri) from exc
    except ObjectTooLarge as exc:
        raise MCPError(types.INVALID_PARAMS, f"{uri} is too large to read over MCP: {exc}") from exc


async def read_resource(services: Services, user: User, uri: str) -> types.ReadResourceResult:
    match = URI_RE.match(uri)
    if match is None:
        raise not_found(uri)
    task_id, part = match["task"], match["part"]
    try:
        await task_runs.get_owned(services, task_id, user.id)
    except task_runs.TaskNotFound as exc:
        raise not_found(uri) from exc
    outcome = await long_poll_celery_result(
        task_id, timeout_s=0.05, hub=services.hub, backend=services.results
    )
    if isinstance(outcome, TaskFailed):
        raise MCPError(
            types.INVALID_PARAMS, f"task {task_id} failed: {outcome.error_type}: {outcome.message}"
        )
    if not isinstance(outcome, TaskDone):
        raise MCPError(types.INVALID_PARAMS, f"task {task_id} has no result (yet)")
    output = outcome.output
    if part == "result":
        text = json.dumps(output, default=str)
        return types.ReadResourceResult(
            contents=[types.TextResourceContents(uri=uri, mime_type="application/json", text=text)]
        )
    if not isinstance(output, dict):
        raise not_found(uri)
    if match["n"] is not None:
        figures = output.get("figures") or []
        n = int(match["n"])
        if n >= len(figures):
            raise not_found(uri)
        data = await _read_key(services, user, uri, figures[n].get("key"))
        mime = str(figures[n].get("content_type") or "application/octet-stream")
        return types.ReadResourceResult(
            contents=[
                types.BlobResourceContents(
                    uri=uri, mime_type=mime, blob=base64.b64encode(data).decode()
                )
            ]
        )
    if part == "table" and isinstance(output.get("columns"), list):
        return types.ReadResourceResult(
            contents=[types.TextResourceContents(uri=uri, mime_type="text/csv", text=_csv(output))]
        )
    if part == "table.parquet" and output.get("result_key"):
        data = await _read_key(services, user, uri, output["result_key"])
        return types.ReadResourceResult(
            contents=[
                types.BlobResourceContents(
                    uri=uri, mime_type=PARQUET, blob=base64.b64encode(data).decode()
                )
            ]
        )
    raise not_found(uri)


async def recent_results(services: Services, user: User, limit: int = 20) -> list[types.Resource]:
    """The results of the caller's latest finished tool tasks, newest first."""
    runs = await task_runs.list_runs(services, user.id, state="done", limit=limit)
    return [
        types.Resource(
            uri=task_uri(run.task_id, "result"),
            name=f"{run.tool} {run.task_id}",
            description=f"output of {run.tool} ({run.task_name}), finished {run.finished_at}",
            mime_type="application/json",
        )
        for run in runs
        if run.tool
    ]
