"""Docker files can't be built here (no engine), so they are checked by reading them."""

from __future__ import annotations

import importlib
import re
import tomllib
from pathlib import Path
from typing import Any

import yaml

from corral.task_schemas import ALL_QUEUES

REPO = Path(__file__).resolve().parents[2]


def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    return data


def test_compose_has_every_part() -> None:
    services = compose()["services"]
    assert {"redis", "postgres", "minio", "app", "flower"} <= set(services)
    assert "--appendonly" in services["redis"]["command"]
    assert "8078:8078" in services["app"]["ports"]


def test_one_worker_service_per_registry_queue() -> None:
    services = compose()["services"]
    consumed: list[str] = []
    for name, svc in services.items():
        command = svc.get("command") or []
        if "worker" not in command:
            continue
        assert command[:4] == ["celery", "-A", "corral.tasks.main", "worker"], name
        queues = command[command.index("-Q") + 1].split(",")
        assert len(queues) == 1, f"{name} must consume exactly one queue"
        consumed += queues
        assert svc["build"]["dockerfile"] == "Dockerfile.tasks"
    assert sorted(consumed) == sorted(q.value for q in ALL_QUEUES)


def test_commands_name_real_modules() -> None:
    for name, svc in compose()["services"].items():
        command = svc.get("command") or []
        if "-A" in command:
            module = command[command.index("-A") + 1]
            assert hasattr(importlib.import_module(module), "app"), name
    app_cmd = (REPO / "Dockerfile.app").read_text()
    factory = re.search(r'"--factory", "([\w.]+):(\w+)"', app_cmd)
    assert factory, "Dockerfile.app must start uvicorn with --factory module:function"
    assert callable(getattr(importlib.import_module(factory.group(1)), factory.group(2)))


def test_env_files_have_examples_and_ports_agree() -> None:
    for name, svc in compose()["services"].items():
        for env_file in svc.get("env_file", []):
            assert (REPO / f"{env_file}.example").is_file(), f"{name}: {env_file}.example missing"
    app_port = compose()["services"]["app"]["ports"][0].split(":")[1]
    assert f"EXPOSE {app_port}" in (REPO / "Dockerfile.app").read_text()
    assert f'"--port", "{app_port}"' in (REPO / "Dockerfile.app").read_text()
    makefile_default = (REPO / "backend/src/corral/devstack/cli.py").read_text()
    assert f'"{app_port}"' in makefile_default


def test_images_run_as_non_root_with_disjoint_extras() -> None:
    extras = {}
    for name in ("Dockerfile.app", "Dockerfile.tasks"):
        text = (REPO / name).read_text()
        assert re.search(r"^USER (?!root)\w+", text, re.M), f"{name} must drop root"
        assert "uv sync --frozen" in text
        extras[name] = set(re.findall(r"--extra (\w+)", text))
    assert extras["Dockerfile.app"] == {"app"} and extras["Dockerfile.tasks"] == {"tasks"}
    project = tomllib.loads((REPO / "backend/pyproject.toml").read_text())["project"]
    opt = project["optional-dependencies"]
    names = {k: {re.split(r"[<>=\[ ]", d)[0].lower() for d in v} for k, v in opt.items()}
    # Only the Celery client library is shared: the web stack never lands in the worker image.
    assert "fastapi" not in names["tasks"] and "uvicorn" not in names["tasks"]


def test_env_examples_leave_secrets_empty() -> None:
    for name in (".env.app.example", ".env.tasks.example"):
        for line in (REPO / name).read_text().splitlines():
            if re.match(r"^\w*(SECRET|PASSWORD)\w*=", line):
                assert line.split("=", 1)[1] == "", f"{name}: {line} must not ship a value"


def test_observability_profile_mounts_files_that_exist() -> None:
    services = compose()["services"]
    profile = {n for n, s in services.items() if "observability" in s.get("profiles", [])}
    assert profile == {"otel-collector", "jaeger", "prometheus", "grafana"}
    for name in profile:
        for volume in services[name].get("volumes", []):
            source = volume.split(":")[0]
            assert (REPO / source).exists(), (name, source)
    # Without the profile nothing of it starts.
    assert all("profiles" not in s for n, s in services.items() if n not in profile)
