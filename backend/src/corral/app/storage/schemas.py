"""Request and response bodies of the storage routes."""

from __future__ import annotations

from pydantic import BaseModel, Field


class UploadOut(BaseModel):
    key: str = Field(description="Object key `{user_id}/uploads/{uuid}`; pass it to tools.")
    size: int = Field(description="Bytes stored.")
    content_type: str
