"""The FastAPI application: ``uvicorn --factory corral.app.main:create_app``."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import APIRouter, FastAPI
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response
from starlette.types import Scope

from corral.app.artifacts.router import router as artifacts_router
from corral.app.auth.router import router as auth_router
from corral.app.body_limit import BodyLimitMiddleware
from corral.app.chat.router import router as chat_router
from corral.app.contract import install_contract
from corral.app.datasets.router import router as datasets_router
from corral.app.health.router import router as health_router
from corral.app.llm.models_router import router as llm_models_router
from corral.app.llm.router import router as llm_router
from corral.app.mcp import CorralMcp
from corral.app.observability.router import metrics_router
from corral.app.observability.router import router as ops_router
from corral.app.observability.tracing import install_tracing, instrument_database
from corral.app.pipelines.router import router as pipelines_router
from corral.app.problems import install_problem_handlers
from corral.app.ratelimit.router import router as ratelimit_router
from corral.app.services import Services
from corral.app.sessions.router import router as sessions_router
from corral.app.settings import AppSettings
from corral.app.storage.router import router as storage_router
from corral.app.task_runs.router import router as tasks_router
from corral.app.threads.router import router as threads_router
from corral.app.tools.router import router as tools_router
from corral.app.turns.router import router as turns_router
from corral.app.usage.router import router as usage_router

REPO_ROOT = Path(__file__).resolve().parents[4]


def _frontend_dir(settings: AppSettings) -> Path | None:
    """The built frontend (``npm run build`` → ``frontend/dist``), if there is one."""
    if settings.frontend_dir is not None:
        return settings.frontend_dir
    dist = REPO_ROOT / "frontend" / "dist"
    return dist if (dist / "index.html").is_file() else None


class SpaFiles(StaticFiles):
    """The built UI; unknown non-API paths (e.g. ``/auth/callback``) get ``index.html``."""

    async def get_response(self, path: str, scope: Scope) -> Response:
        try:
            return await super().get_response(path, scope)
        except StarletteHTTPException as exc:
            if exc.status_code != 404 or path == "api" or path.startswith("api/"):
                raise
            return await super().get_response("index.html", scope)


NOT_BUILT_PAGE = """<!doctype html><html><head><meta charset="utf-8"><title>Corral</title></head>
<body style="font-family: system-ui; max-width: 40rem; margin: 3rem auto">
<h1>Corral</h1><p>The API is running, but the web frontend has not been built.</p>
<p>Run <code>make up</code> (it builds it), or <code>cd frontend &amp;&amp; npm ci &amp;&amp;
npm run build</code>. The API is documented at <a href="/docs">/docs</a>.</p></body></html>"""


API_DESCRIPTION = """Heavy agent tools (sandboxed Python, analyses, model pipelines) run on
workers; progress streams live. Authenticate with `Authorization: Bearer <token>` (the dev token
`make up` prints, an OIDC access token, or an API key `ck_...`).

Every error is RFC 9457 problem details (`application/problem+json`) with a stable `type` per
error kind (`/errors/not-found`, `/errors/rate-limited`, `/errors/no-model-configured` …), listed
in docs/api.md. JSON bodies are capped (413 before parsing); uploads have their own caps."""

# Multipart upload routes: capped by their own settings while streaming, not by the JSON cap.
UPLOAD_ROUTES = (("POST", "/api/storage"), ("POST", "/api/datasets"))


def create_app(settings: AppSettings | None = None) -> FastAPI:
    settings = settings or AppSettings()
    mcp = CorralMcp()  # MCP over streamable HTTP at /mcp (docs/mcp.md)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        services = await Services.start(settings)
        instrument_database(services.db.engine)  # SQL statements as spans
        app.state.services = services
        try:
            await services.start_background()
            async with mcp.run():
                yield
        finally:
            await services.aclose()

    app = FastAPI(
        title="Corral",
        version="0.1.0",
        description=API_DESCRIPTION,
        lifespan=lifespan,
    )
    install_problem_handlers(app)
    app.add_middleware(
        BodyLimitMiddleware,
        max_bytes=lambda: settings.max_json_body_bytes,
        exempt=UPLOAD_ROUTES,
    )
    api = APIRouter(prefix="/api")
    api.include_router(health_router)
    api.include_router(tools_router)
    api.include_router(tasks_router)
    api.include_router(storage_router)
    api.include_router(llm_router)
    api.include_router(llm_models_router)
    api.include_router(pipelines_router)
    api.include_router(datasets_router)
    api.include_router(auth_router)
    api.include_router(threads_router)
    api.include_router(chat_router)
    api.include_router(turns_router)
    api.include_router(artifacts_router)
    api.include_router(usage_router)
    api.include_router(sessions_router)
    api.include_router(ratelimit_router)
    api.include_router(ops_router)
    app.include_router(api)
    app.include_router(metrics_router)
    install_tracing(app, settings.telemetry)
    install_contract(app)
    app.router.routes.append(mcp.route("/mcp"))  # plain ASGI: not in /openapi.json

    frontend = _frontend_dir(settings)
    if frontend is not None:
        app.mount("/", SpaFiles(directory=frontend, html=True), name="frontend")
    else:

        @app.get("/", include_in_schema=False)
        async def frontend_not_built() -> HTMLResponse:
            return HTMLResponse(NOT_BUILT_PAGE)

    return app
