"""Prepare the sandboxes ahead of time (image build, ``make``, first start).

    python -m corral.tasks.sandbox.prepare venv   # the bwrap backend's dedicated venv
    python -m corral.tasks.sandbox.prepare wasm   # compile the WASI CPython once, cache it (0700)
    python -m corral.tasks.sandbox.prepare all

Paths come from ``TASKS_SANDBOX__VENV_PATH`` and ``TASKS_SANDBOX__WASM_CACHE_DIR``. Run it as
the user the worker runs as (the wasm cache must be owned by that user). The venv is not the
app's: it holds only the guest's libraries, pinned in ``guest/requirements.txt``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path

from corral.tasks.sandbox.bwrap import GUEST_DIR, MPL_CACHE
from corral.tasks.sandbox.cli import _Env
from corral.tasks.sandbox.settings import SandboxSettings

REQUIREMENTS = GUEST_DIR.parent / "guest-requirements.txt"
REQUIREMENTS_STAMP = "corral-requirements.txt"


def _base_python() -> str:
    """Prefer the distribution's python3 (under /usr, already visible in the sandbox)."""
    for candidate in ("/usr/bin/python3.11", "/usr/bin/python3"):
        if os.access(candidate, os.X_OK):
            return candidate
    return os.path.realpath(getattr(sys, "_base_executable", sys.executable))


def prepare_venv(settings: SandboxSettings, python: str | None = None) -> Path:
    venv = settings.venv_path.resolve()
    python = python or _base_python()
    uv = shutil.which("uv")
    if uv:
        subprocess.run(
            [uv, "venv", "-q", "--allow-existing", "--python", python, str(venv)], check=True
        )
        subprocess.run([uv, "pip", "install", "-q", "--python", str(venv / "bin" / "python"),
                        "-r", str(REQUIREMENTS)], check=True)  # fmt: skip
    else:
        subprocess.run([python, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "-r",
                        str(REQUIREMENTS)], check=True)  # fmt: skip
    # Build matplotlib's font list once; the runner copies it into each run's /tmp.
    cache = venv / MPL_CACHE
    cache.mkdir(exist_ok=True)
    env = {"PATH": "/usr/bin:/bin", "MPLCONFIGDIR": str(cache), "MPLBACKEND": "Agg"}
    subprocess.run([str(venv / "bin" / "python"), "-c", "import matplotlib.pyplot"],
                   check=True, env=env)  # fmt: skip
    # What it was built from: ``venv_is_current`` compares it with today's requirements.
    shutil.copyfile(REQUIREMENTS, venv / REQUIREMENTS_STAMP)
    # Readable (not writable) by the unprivileged worker user.
    subprocess.run(["chmod", "-R", "a+rX,go-w", str(venv)], check=True)
    return venv


def venv_is_current(venv: Path) -> bool:
    """The venv exists and was built from the current ``guest-requirements.txt``."""
    stamp = venv / REQUIREMENTS_STAMP
    try:
        return stamp.read_bytes() == REQUIREMENTS.read_bytes()
    except OSError:
        return False


def prepare_wasm(settings: SandboxSettings) -> float:
    """Compile the module into the cache (about a minute and 2.5 GB the first time)."""
    from corral.tasks.sandbox.wasm import WasmSandbox

    return WasmSandbox(settings).warm()  # also builds matplotlib's font list once


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m corral.tasks.sandbox.prepare")
    parser.add_argument("what", choices=("venv", "wasm", "all"))
    parser.add_argument("--python", help="interpreter for the sandbox venv")
    args = parser.parse_args(argv)
    settings = _Env().sandbox
    if args.what in ("venv", "all"):
        print(f"sandbox venv ready at {prepare_venv(settings, args.python)}")
    if args.what in ("wasm", "all"):
        took = prepare_wasm(settings)
        print(f"wasm module compiled/cached in {settings.wasm_cache_dir} ({took:.1f}s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
