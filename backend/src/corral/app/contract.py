"""The OpenAPI document as a contract: every operation lists every error status it can return.

Statuses that follow from how a route is built are derived from its dependencies, so a new
route is documented the moment it exists: a bearer token → 401, a rate-limit group → 429,
a path parameter → 404, any input → 422, a body → 413. Statuses that follow from a route's
logic (409, 503 …) are declared on the route with ``responses=problem_responses(...)``. Every
error response is ``application/problem+json`` with the one ``Problem`` schema.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, cast

from fastapi import FastAPI, routing
from fastapi.dependencies.models import Dependant
from fastapi.openapi.utils import _get_api_route_for_openapi, get_openapi
from fastapi.routing import APIRoute

from corral.app.problems import PROBLEM_JSON, Problem, problem_type

_PROBLEM_REF = {"$ref": "#/components/schemas/Problem"}


def _calls(dependant: Dependant) -> Iterator[Callable[..., Any]]:
    for dep in dependant.dependencies:
        if dep.call is not None:
            yield dep.call
        yield from _calls(dep)


def route_problem_statuses(route: APIRoute) -> set[int]:
    """The error statuses a route can answer with, from its shape and its declarations."""
    statuses = {int(code) for code in route.responses if str(code).isdigit() and int(code) >= 400}
    names = {getattr(call, "__qualname__", "") for call in _calls(route.dependant)}
    if "get_current_user" in names:
        statuses.add(401)
    if any(name.startswith("rate_limited.") for name in names):
        statuses.add(429)
    flat = route.dependant
    has_path = bool(flat.path_params) or any(d.path_params for d in _all(flat))
    has_query = any(d.query_params or d.header_params for d in _all(flat))
    has_body = route.body_field is not None
    if has_path:
        statuses.add(404)
    if has_path or has_query or has_body:
        statuses.add(422)
    if has_body:
        statuses.update((400, 413))  # 400: a body that is not parseable JSON
    return statuses


def _all(dependant: Dependant) -> Iterator[Dependant]:
    yield dependant
    for dep in dependant.dependencies:
        yield from _all(dep)


def _problem_response(status: int, description: str | None) -> dict[str, Any]:
    response: dict[str, Any] = {
        "description": description or _default_description(status),
        "content": {PROBLEM_JSON: {"schema": _PROBLEM_REF}},
    }
    if status in (429, 503):
        response["headers"] = {
            "Retry-After": {
                "description": "Seconds until a retry may succeed (when waiting helps).",
                "schema": {"type": "integer"},
            }
        }
    return response


def _default_description(status: int) -> str:
    return {
        400: "The body could not be parsed (not JSON, or not valid UTF-8)",
        401: "Missing or invalid bearer token (problem type /errors/unauthorized)",
        403: "Not allowed for this user",
        404: "No such resource for this user (problem type /errors/not-found)",
        409: "Conflicts with the resource's current state",
        413: "Body over the size limit, refused before parsing (/errors/payload-too-large)",
        415: "Unsupported media type",
        422: "Invalid input; `errors[]` names each bad value (/errors/validation-error)",
        429: "Rate limited or a daily budget used up; retry after `retry_after_s` "
        "(/errors/rate-limited, /errors/budget-exceeded)",
        503: "A dependency is unavailable or not configured",
    }.get(status, "Error")


def api_routes(app: FastAPI) -> list[APIRoute]:
    """Every documented operation with its full path. Included routers are resolved the way
    FastAPI's own OpenAPI generator does (route contexts that quack like ``APIRoute``)."""
    found: list[APIRoute] = []
    for context in routing.iter_route_contexts(app.routes):
        route = _get_api_route_for_openapi(context)
        if route is not None and route.include_in_schema:
            found.append(cast(APIRoute, route))
    return found


def build_openapi(app: FastAPI) -> dict[str, Any]:
    doc = get_openapi(
        title=app.title,
        version=app.version,
        description=app.description,
        routes=app.routes,
        tags=app.openapi_tags,
    )
    schemas = doc.setdefault("components", {}).setdefault("schemas", {})
    problem_schema = Problem.model_json_schema(ref_template="#/components/schemas/{model}")
    for name, sub in problem_schema.pop("$defs", {}).items():
        schemas[name] = sub
    schemas["Problem"] = problem_schema
    by_key = {
        (route.path_format, method.lower()): route
        for route in api_routes(app)
        for method in route.methods or ()
    }
    for path, item in doc.get("paths", {}).items():
        for method, operation in item.items():
            route = by_key.get((path, method))
            if route is None or not isinstance(operation, dict):
                continue
            responses = operation.setdefault("responses", {})
            for status in sorted(route_problem_statuses(route)):
                existing = responses.get(str(status), {})
                responses[str(status)] = _problem_response(status, existing.get("description"))
    for unused in ("HTTPValidationError", "ValidationError"):
        if unused in schemas and unused not in str(doc["paths"]):
            del schemas[unused]
    return doc


def install_contract(app: FastAPI) -> None:
    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = build_openapi(app)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


__all__ = ["build_openapi", "install_contract", "problem_type", "route_problem_statuses"]
