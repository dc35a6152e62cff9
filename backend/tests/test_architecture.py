"""The app and the workers never import each other; the check is shown to catch a violation."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from tests.support.procs import BACKEND_DIR

LINT = [sys.executable, "-m", "importlinter.cli"]


def _lint(cwd: Path) -> subprocess.CompletedProcess[str]:
    lint = shutil.which("lint-imports", path=str(Path(sys.executable).parent))
    assert lint, "import-linter is a dev dependency"
    return subprocess.run(
        [lint, "--no-cache"],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        env={"PYTHONPATH": str(cwd / "src"), "PATH": str(Path(sys.executable).parent)},
    )


def test_contracts_hold() -> None:
    result = _lint(BACKEND_DIR)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 kept, 0 broken" in result.stdout


def test_contracts_catch_a_violation(tmp_path: Path) -> None:
    shutil.copytree(
        BACKEND_DIR / "src", tmp_path / "src", ignore=shutil.ignore_patterns("__pycache__")
    )
    shutil.copy(BACKEND_DIR / "pyproject.toml", tmp_path / "pyproject.toml")
    (tmp_path / "src/corral/tasks/sneaky.py").write_text("from corral.app import settings\n")
    result = _lint(tmp_path)
    assert result.returncode != 0
    assert "corral.tasks.sneaky -> corral.app.settings" in result.stdout
    assert "BROKEN" in result.stdout
