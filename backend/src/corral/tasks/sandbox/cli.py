"""Run code in a sandbox from the command line (debugging, tests, self-tests): JSON out.

    python -m corral.tasks.sandbox.cli run --backend bwrap --input DIR --output DIR < code.py
    python -m corral.tasks.sandbox.cli selftest --backend auto

Settings come from ``TASKS_SANDBOX__*`` like the worker's. Exit status: 0 ran (even if the
user's code failed), 2 sandbox unavailable, 3 sandbox failure.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path
from typing import Any

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from corral.tasks.sandbox import SandboxFailure, SandboxUnavailable
from corral.tasks.sandbox.selection import build_backend, select_backend
from corral.tasks.sandbox.settings import SandboxLimits, SandboxSettings


class _Env(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="TASKS_", env_nested_delimiter="__", extra="ignore"
    )

    sandbox: SandboxSettings = Field(default_factory=SandboxSettings)


def _jsonable(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    return value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m corral.tasks.sandbox.cli")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run stdin's code")
    run.add_argument("--backend", choices=("bwrap", "wasm", "auto"))
    run.add_argument("--input", type=Path, required=True)
    run.add_argument("--output", type=Path, required=True)
    run.add_argument("--limits", default="{}", help="JSON of SandboxLimits overrides")
    run.add_argument("--formats", default="png")
    test = sub.add_parser("selftest", help="self-test the backend; print which one works")
    test.add_argument("--backend", choices=("bwrap", "wasm", "auto"))
    args = parser.parse_args(argv)

    settings = _Env().sandbox
    if args.backend:
        settings = settings.model_copy(update={"backend": args.backend})
    try:
        if args.command == "selftest":
            backend = select_backend(settings)
            describe = getattr(backend, "capabilities", None)
            caps = describe() if callable(describe) else {}
            print(json.dumps({"backend": backend.name, "ok": True, "capabilities": caps}))
            return 0
        backend = select_backend(settings, self_test=False)
        if settings.backend == "auto":  # auto already self-tested bwrap; keep its choice
            backend = build_backend(backend.name, settings)
        limits = SandboxLimits.model_validate(
            settings.limits.model_dump() | json.loads(args.limits)
        )
        result = backend.run(
            sys.stdin.read(),
            input_dir=args.input,
            output_dir=args.output,
            limits=limits,
            figure_formats=tuple(args.formats.split(",")),
        )
    except SandboxUnavailable as exc:
        print(json.dumps({"unavailable": str(exc)}))
        return 2
    except SandboxFailure as exc:
        print(json.dumps({"failure": str(exc)}))
        return 3
    print(json.dumps({"backend": backend.name, **_jsonable(dataclasses.asdict(result))}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
