"""Choosing and self-testing a backend. ``auto``: bwrap when its self-test passes, else wasm."""

from __future__ import annotations

import structlog

from corral.tasks.sandbox import Sandbox, SandboxUnavailable
from corral.tasks.sandbox.settings import SandboxSettings

log = structlog.get_logger(__name__)


def build_backend(name: str, settings: SandboxSettings) -> Sandbox:
    """The backend object, unchecked (``self_test`` says whether it works here)."""
    if name == "bwrap":
        from corral.tasks.sandbox.bwrap import BwrapSandbox

        return BwrapSandbox(settings)
    if name == "wasm":
        from corral.tasks.sandbox.wasm import WasmSandbox

        return WasmSandbox(settings)
    raise ValueError(f"unknown sandbox backend {name!r}")


def select_backend(settings: SandboxSettings, *, self_test: bool = True) -> Sandbox:
    """The configured backend after its self-test; raises ``SandboxUnavailable`` if none works."""
    if settings.backend != "auto":
        backend = build_backend(settings.backend, settings)
        if self_test:
            backend.self_test()
        return backend
    try:
        bwrap = build_backend("bwrap", settings)
        bwrap.self_test()
        return bwrap
    except SandboxUnavailable as exc:
        log.warning("bwrap sandbox unavailable, falling back to wasm", reason=str(exc))
    wasm = build_backend("wasm", settings)
    if self_test:
        wasm.self_test()
    return wasm
