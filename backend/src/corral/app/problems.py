"""The one error model of the HTTP API: RFC 9457 problem details (``application/problem+json``).

Every error the API returns — request validation, auth, a missing resource, a rate limit, a
service that is down — is a ``Problem`` body with a stable ``type`` per error kind that clients
switch on (``/errors/<kind>``; listed in docs/api.md). Routes raise ``ProblemError`` (or
``HTTPException``, which maps to a kind by status); the handlers here render both.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from http import HTTPStatus
from typing import Any

import structlog
from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import JSONResponse

log = structlog.get_logger(__name__)

PROBLEM_JSON = "application/problem+json"
TYPE_PREFIX = "/errors/"

# The default kind of an error that names only its status.
KIND_BY_STATUS: dict[int, str] = {
    400: "bad-request",
    401: "unauthorized",
    403: "forbidden",
    404: "not-found",
    405: "method-not-allowed",
    409: "conflict",
    410: "gone",
    413: "payload-too-large",
    415: "unsupported-media-type",
    422: "validation-error",
    429: "rate-limited",
    500: "internal-error",
    502: "bad-gateway",
    503: "service-unavailable",
    504: "gateway-timeout",
}


class ValidationItem(BaseModel):
    """One invalid value: where it is, what is wrong, and the kind of check that failed."""

    loc: list[str | int] = Field(description="Path to the value, e.g. ['body', 'arguments']")
    msg: str
    type: str


class Problem(BaseModel):
    """RFC 9457 problem details; ``errors`` for validation, ``retry_after_s`` on 429/503."""

    type: str = Field(description="Stable URI reference per error kind, e.g. /errors/not-found")
    title: str
    status: int = Field(ge=400, le=599)
    detail: str = Field(description="What went wrong and what to do about it")
    instance: str | None = Field(default=None, description="The request path")
    errors: list[ValidationItem] | None = None
    retry_after_s: float | None = Field(
        default=None, description="When waiting helps: seconds until a retry may succeed"
    )

    model_config = {"extra": "allow"}


class ProblemError(Exception):
    """Raise from a route or service to answer with a problem of a named kind."""

    def __init__(
        self,
        status: int,
        kind: str,
        detail: str,
        *,
        title: str | None = None,
        retry_after_s: float | None = None,
        errors: Sequence[Mapping[str, Any]] | None = None,
        headers: Mapping[str, str] | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.kind = kind
        self.detail = detail
        self.title = title or kind.replace("-", " ").capitalize()
        self.retry_after_s = retry_after_s
        self.errors = list(errors) if errors is not None else None
        self.headers = dict(headers or {})
        self.extra = dict(extra or {})

    @property
    def error_name(self) -> str:
        """The kind as a tool-error type: ``budget-exceeded`` -> ``BudgetExceeded``."""
        return "".join(part.capitalize() for part in self.kind.split("-"))


def problem_type(kind: str) -> str:
    return TYPE_PREFIX + kind


def problem_response(
    request: Request | None,
    status: int,
    kind: str,
    detail: str,
    *,
    title: str | None = None,
    retry_after_s: float | None = None,
    errors: Iterable[Mapping[str, Any]] | None = None,
    headers: Mapping[str, str] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> JSONResponse:
    body: dict[str, Any] = {
        "type": problem_type(kind),
        "title": title or _title(status, kind),
        "status": status,
        "detail": detail,
    }
    if request is not None:
        body["instance"] = request.url.path
    if errors is not None:
        body["errors"] = [_validation_item(e) for e in errors]
    all_headers = dict(headers or {})
    if retry_after_s is not None:
        body["retry_after_s"] = round(retry_after_s, 3)
        all_headers.setdefault("Retry-After", str(max(1, math.ceil(retry_after_s))))
    if extra:
        body.update({k: v for k, v in extra.items() if k not in body})
    return JSONResponse(
        jsonable_encoder(body), status_code=status, headers=all_headers, media_type=PROBLEM_JSON
    )


def _title(status: int, kind: str) -> str:
    if KIND_BY_STATUS.get(status) == kind:
        try:
            return HTTPStatus(status).phrase
        except ValueError:
            pass
    return kind.replace("-", " ").capitalize()


def _validation_item(error: Mapping[str, Any]) -> dict[str, Any]:
    loc = error.get("loc") or []
    return {
        "loc": [p if isinstance(p, int) else str(p) for p in loc],
        "msg": str(error.get("msg", "invalid value")),
        "type": str(error.get("type", "value_error")),
    }


def _summarise(errors: Sequence[Mapping[str, Any]]) -> str:
    parts = []
    for error in errors[:3]:
        where = ".".join(str(p) for p in error.get("loc", ()))
        parts.append(f"{where}: {error.get('msg', 'invalid')}")
    more = f" (and {len(errors) - 3} more)" if len(errors) > 3 else ""
    return "; ".join(parts) + more


async def _on_problem(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ProblemError)
    return problem_response(
        request,
        exc.status,
        exc.kind,
        exc.detail,
        title=exc.title,
        retry_after_s=exc.retry_after_s,
        errors=exc.errors,
        headers=exc.headers,
        extra=exc.extra,
    )


async def _on_http_exception(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    status = exc.status_code
    kind = KIND_BY_STATUS.get(status, "http-error")
    headers = dict(exc.headers or {})
    detail = exc.detail
    errors: list[Mapping[str, Any]] | None = None
    if isinstance(detail, list):  # a list of pydantic-style errors
        errors = [d if isinstance(d, Mapping) else {"msg": str(d)} for d in detail]
        detail = _summarise(errors)
    elif not isinstance(detail, str):
        detail = str(detail)
    if status == 422 and errors is None:
        errors = [{"loc": [], "msg": detail, "type": "value_error"}]
    retry: float | None = None
    if "Retry-After" in headers:
        try:
            retry = float(headers["Retry-After"])
        except ValueError:
            retry = None
    return problem_response(
        request, status, kind, detail, errors=errors, headers=headers, retry_after_s=retry
    )


async def _on_validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = [dict(e) for e in exc.errors()]
    return problem_response(
        request,
        422,
        "validation-error",
        _summarise(errors) or "the request is not valid",
        errors=errors,
    )


async def _on_unhandled(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error", path=request.url.path)
    return problem_response(
        request, 500, "internal-error", "an unexpected error occurred; it has been logged"
    )


def install_problem_handlers(app: FastAPI) -> None:
    app.add_exception_handler(ProblemError, _on_problem)
    app.add_exception_handler(StarletteHTTPException, _on_http_exception)
    app.add_exception_handler(RequestValidationError, _on_validation_error)
    app.add_exception_handler(Exception, _on_unhandled)


def problem_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """``responses=`` for a route: the error statuses its logic can return. The contract
    (``corral.app.contract``) documents each with the ``Problem`` schema as problem+json."""
    return {status: {"description": _describe(status)} for status in statuses}


def _describe(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"
