"""``/api/artifacts``: objects the caller's tasks produced, with fresh short-lived URLs."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, HTTPException, Query, status
from pydantic import BaseModel
from sqlalchemy import select

from corral.app.db.models import Artifact
from corral.app.deps import CurrentUser, ServicesDep, SessionDep
from corral.app.params import ID_PATTERN, ResourceId
from corral.app.services import Services

router = APIRouter(prefix="/artifacts", tags=["artifacts"])


class ArtifactOut(BaseModel):
    id: str
    key: str
    name: str | None
    kind: str
    content_type: str | None
    size: int | None
    thread_id: str | None
    task_id: str | None
    created_at: datetime
    url: str


async def _out(services: Services, row: Artifact) -> ArtifactOut:
    url = await services.storage.presign_get(row.key, services.settings.storage.url_ttl_s)
    return ArtifactOut(
        id=row.id,
        key=row.key,
        name=row.name,
        kind=row.kind,
        content_type=row.content_type,
        size=row.size,
        thread_id=row.thread_id,
        task_id=row.task_run_id,
        created_at=row.created_at,
        url=url,
    )


@router.get("", response_model=list[ArtifactOut])
async def list_artifacts(
    user: CurrentUser,
    services: ServicesDep,
    session: SessionDep,
    thread_id: Annotated[
        str | None, Query(max_length=128, pattern=ID_PATTERN, description="Only this thread.")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
) -> list[ArtifactOut]:
    """Files your tools produced (figures, tables), newest first; filter by `thread_id`."""
    query = select(Artifact).where(Artifact.owner_id == user.id)
    if thread_id is not None:
        query = query.where(Artifact.thread_id == thread_id)
    rows = await session.scalars(query.order_by(Artifact.created_at.desc()).limit(limit))
    return [await _out(services, r) for r in rows]


@router.get("/{artifact_id}", response_model=ArtifactOut)
async def get_artifact(
    artifact_id: ResourceId, user: CurrentUser, services: ServicesDep, session: SessionDep
) -> ArtifactOut:
    """One artifact with a fresh short-lived download URL."""
    row = await session.get(Artifact, artifact_id)
    if row is None or row.owner_id != user.id:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"artifact {artifact_id} not found")
    return await _out(services, row)
