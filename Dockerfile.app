# The web process: FastAPI + the built frontend. Only the `app` extra (no worker code deps).
FROM node:20-bookworm-slim AS frontend
WORKDIR /frontend
COPY frontend/ ./
RUN if [ -f package.json ]; then npm ci && npm run build; else mkdir -p dist && cp -r ./* dist/ 2>/dev/null || true; fi

FROM python:3.11-slim-bookworm
COPY --from=ghcr.io/astral-sh/uv:0.9 /uv /usr/local/bin/uv
ENV UV_COMPILE_BYTECODE=1 UV_LINK_MODE=copy UV_PYTHON_DOWNLOADS=never \
    PATH="/opt/corral/.venv/bin:$PATH" CORRAL_FRONTEND_DIR=/opt/corral/frontend
WORKDIR /opt/corral
COPY backend/pyproject.toml backend/uv.lock ./
RUN uv sync --frozen --no-install-project --extra app
COPY backend/src ./src
COPY backend/alembic.ini ./alembic.ini
COPY backend/alembic ./alembic
RUN uv sync --frozen --extra app
COPY --from=frontend /frontend/dist ./frontend
RUN useradd --system --uid 10001 --home-dir /nonexistent corral
USER corral
EXPOSE 8078
CMD ["uvicorn", "--factory", "corral.app.main:create_app", "--host", "0.0.0.0", "--port", "8078"]
