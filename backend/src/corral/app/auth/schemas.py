"""API models of the caller and their API keys."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class MeOut(BaseModel):
    id: str
    email: str | None
    name: str | None
    created_at: datetime
    auth: Literal["token", "api_key"]
    admin: bool = Field(
        default=False, description="May see the Operations page (CORRAL_ADMIN_USER_IDS)."
    )


class AuthConfigOut(BaseModel):
    """What the web UI needs to offer single sign-on; public, holds no secrets."""

    mode: Literal["dev", "oidc"]
    oidc_issuer: str | None = None
    oidc_client_id: str | None = None
    oidc_scopes: str


class ApiKeyCreate(BaseModel):
    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [{"name": "notebook"}]}
    )

    name: str = Field(min_length=1, max_length=100, description="What the key is for.")


class ApiKeyOut(BaseModel):
    id: str
    name: str
    prefix: str = Field(description="The key's first characters, to tell keys apart.")
    created_at: datetime
    last_used_at: datetime | None = None


class ApiKeyCreated(ApiKeyOut):
    key: str = Field(description="The key itself: shown this once, store it now.")
