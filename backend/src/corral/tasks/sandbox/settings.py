"""Sandbox settings: ``TASKS_SANDBOX__BACKEND`` and friends (nested under ``TasksSettings``)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

BackendName = Literal["bwrap", "wasm", "auto"]


class SandboxLimits(BaseModel):
    """Hard limits of one run. Every field has a ceiling so a typo cannot disable a limit."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    wall_s: float = Field(default=30.0, gt=0, le=600, description="Wall clock, then killed.")
    cpu_s: int = Field(default=30, ge=1, le=600, description="CPU seconds (RLIMIT_CPU / fuel).")
    memory_mb: int = Field(default=1024, ge=64, le=16_384, description="Address space / memory.")
    max_processes: int = Field(default=64, ge=1, le=1024, description="RLIMIT_NPROC (bwrap).")
    max_open_files: int = Field(default=256, ge=16, le=4096, description="RLIMIT_NOFILE.")
    max_file_mb: int = Field(default=64, ge=1, le=4096, description="Largest file it may write.")
    stdout_max_bytes: int = Field(
        default=1_000_000, ge=1024, le=64_000_000, description="Kept per stream; rest dropped."
    )
    output_max_mb: int = Field(default=64, ge=1, le=4096, description="All output files together.")
    tmpfs_mb: int = Field(default=256, ge=8, le=8192, description="Size of /tmp and /output.")
    max_output_files: int = Field(default=32, ge=1, le=1000, description="Files collected.")

    def capped_by(self, caps: SandboxLimits) -> SandboxLimits:
        """Each field clamped to ``caps`` (per-call overrides never exceed the operator's caps)."""
        values = {
            name: min(getattr(self, name), getattr(caps, name)) for name in type(self).model_fields
        }
        return SandboxLimits.model_validate(values)


class CgroupSettings(BaseModel):
    """Per-run cgroups of the bwrap backend (``cgroups.py``); rlimits apply either way."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    mode: Literal["auto", "v2", "v1", "off"] = Field(
        default="auto",
        description="auto: v2 if delegated, else v1 if delegated, else rlimits only. v2/v1: "
        "required (the self-test fails without it). off: rlimits only.",
    )
    parent: str = Field(
        default="",
        max_length=500,
        pattern=r"^[A-Za-z0-9._/-]*$",
        description="Delegated parent cgroup: absolute (`/corral`, from the hierarchy's root) "
        "or relative to the worker's own cgroup. Empty: v2 the worker's own cgroup, v1 `corral` "
        "under it in each of the memory, pids and cpu hierarchies.",
    )
    cpus: float = Field(default=1.0, gt=0, le=256, description="CPU quota of one run, in cores.")


class SandboxSettings(BaseModel):
    """Which backend runs untrusted code and where its parts live."""

    model_config = ConfigDict(extra="forbid")

    backend: BackendName = Field(
        default="auto", description="bwrap, wasm, or auto (bwrap if its self-test passes)."
    )
    limits: SandboxLimits = Field(
        default_factory=SandboxLimits, description="Limits of a run that asks for nothing else."
    )
    max_limits: SandboxLimits = Field(
        default_factory=lambda: SandboxLimits(
            wall_s=120,
            cpu_s=120,
            memory_mb=2048,
            max_file_mb=256,
            output_max_mb=256,
            tmpfs_mb=1024,
            stdout_max_bytes=4_000_000,
        ),
        description="Ceilings for per-call overrides.",
    )
    venv_path: Path = Field(
        default=Path(".corral/sandbox-venv"),
        description="The bwrap backend's dedicated venv (python -m corral.tasks.sandbox.prepare).",
    )
    bwrap_path: str = Field(default="bwrap", description="bubblewrap binary (PATH lookup).")
    wasm_cache_dir: Path = Field(
        default_factory=lambda: Path.home() / ".cache" / "corral" / "wasm",
        description="Compiled wasm modules (.cwasm), a 0700 directory owned by the worker user.",
    )
    cgroup: CgroupSettings = Field(
        default_factory=CgroupSettings, description="Whole-sandbox limits through cgroups."
    )
    work_dir: Path | None = Field(
        default=None, description="Parent of per-run directories; default: the system temp dir."
    )
    input_max_mb: int = Field(default=100, ge=1, le=10_000, description="Each input file.")
    self_test_timeout_s: float = Field(
        default=300.0, gt=0, le=1800, description="Worker start self-test (wasm's first compile)."
    )

    @model_validator(mode="after")
    def _defaults_within_caps(self) -> SandboxSettings:
        over = [
            name
            for name in SandboxLimits.model_fields
            if getattr(self.limits, name) > getattr(self.max_limits, name)
        ]
        if over:
            raise ValueError(f"sandbox.limits exceed sandbox.max_limits for: {', '.join(over)}")
        return self
