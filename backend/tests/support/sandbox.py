"""Test plumbing for the python_q sandbox: the unprivileged user, the sandbox venv, shared dirs.

The bwrap backend refuses to run as root, so when tests run as root the python_q worker (and
direct sandbox runs) go through ``setpriv`` as ``CORRAL_TEST_SANDBOX_USER`` (default corral,
made by ``backend/scripts/sandbox_host_setup.sh``). As a normal user nothing changes hands.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import pwd
import secrets
import shutil
import subprocess
import tempfile
from pathlib import Path

from tests.support.procs import BACKEND_DIR

SANDBOX_USER = os.environ.get("CORRAL_TEST_SANDBOX_USER", "corral")
SANDBOX_VENV = Path(
    os.environ.get("CORRAL_TEST_SANDBOX_VENV", BACKEND_DIR / ".corral" / "sandbox-venv")
)
WASM_CACHE = Path(
    os.environ.get("CORRAL_TEST_WASM_CACHE", Path.home() / ".cache" / "corral" / "wasm")
)
FAKE_S3_SECRET = "fake-s3-secret-" + secrets.token_hex(12)
SETUP_HINT = "run `sudo backend/scripts/sandbox_host_setup.sh` once on this machine"


def is_root() -> bool:
    return os.geteuid() == 0


def sandbox_user_home() -> str:
    return pwd.getpwnam(SANDBOX_USER).pw_dir if is_root() else str(Path.home())


def check_sandbox_host() -> None:
    """Fail (never skip) with the fix when the host cannot run the bwrap sandbox."""
    if shutil.which("bwrap") is None:
        raise RuntimeError(f"bubblewrap is not installed; {SETUP_HINT}")
    if is_root():
        try:
            pwd.getpwnam(SANDBOX_USER)
        except KeyError:
            raise RuntimeError(f"no user {SANDBOX_USER!r} for the sandbox; {SETUP_HINT}") from None


def as_sandbox_user() -> list[str]:
    """Command prefix that drops root to the sandbox user (empty when not root)."""
    if not is_root():
        return []
    return ["setpriv", f"--reuid={SANDBOX_USER}", f"--regid={SANDBOX_USER}", "--init-groups"]


def ensure_sandbox_venv() -> Path:
    """The bwrap backend's venv, made with the production prepare step when missing."""
    from corral.tasks.sandbox.prepare import prepare_venv, venv_is_current
    from corral.tasks.sandbox.settings import SandboxSettings

    if (
        not (SANDBOX_VENV / "bin" / "python").exists()
        or not (SANDBOX_VENV / "mpl-cache").is_dir()
        or not venv_is_current(SANDBOX_VENV)
    ):
        prepare_venv(SandboxSettings(venv_path=SANDBOX_VENV))
    return SANDBOX_VENV


def shared_dir(prefix: str) -> Path:
    """A temp dir both root and the sandbox user can write, also in subdirs made later (ACL)."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    if is_root():
        path.chmod(0o755)
        rule = f"u:{SANDBOX_USER}:rwX"
        subprocess.run(["setfacl", "-m", f"{rule},d:{rule}", str(path)], check=True)
    return path


def sandbox_env() -> dict[str, str]:
    """Settings every worker may read; only python_q's uses them."""
    return {
        "TASKS_SANDBOX__BACKEND": "bwrap",
        "TASKS_SANDBOX__VENV_PATH": str(SANDBOX_VENV),
    }


def python_worker_env() -> dict[str, str]:
    """Extra env of the python_q worker: its home, and secrets that must not reach the sandbox."""
    return {
        "HOME": sandbox_user_home(),
        "AWS_SECRET_ACCESS_KEY": FAKE_S3_SECRET,
        "TASKS_STORAGE__S3__SECRET_ACCESS_KEY": FAKE_S3_SECRET,
    }


def delegate_cgroup(name: str) -> dict[str, str]:
    """As root: make a cgroup subtree ``name`` under this process's own cgroup, owned by the
    sandbox user (v2 when cgroup2 offers memory+pids here, else v1 memory/pids/cpu), and return
    the worker settings that use it. Removed at exit. Raises when it cannot (callers skip only
    when not root, saying why)."""
    from corral.tasks.sandbox import cgroups

    if not is_root():
        raise PermissionError("creating a cgroup subtree needs root")
    user = pwd.getpwnam(SANDBOX_USER)
    mounts = cgroups._mounts(Path("/proc/self/mountinfo"))
    own = cgroups._own_paths(Path("/proc/self/cgroup"))
    for mode in ("v2", "v1"):
        dirs: list[Path] = []
        for mount, root, fstype, options in mounts:
            wanted = set(options.split(",")) & set(cgroups.V1_CONTROLLERS)
            if mode == "v2" and fstype == "cgroup2":
                dirs.append(cgroups._resolve(mount, root, own.get("", "/"), name))
            elif mode == "v1" and fstype == "cgroup" and wanted:
                controller = sorted(wanted)[0]
                dirs.append(cgroups._resolve(mount, root, own.get(controller, "/"), name))
        made: list[Path] = []
        try:
            if mode == "v2":
                available = set(cgroups._read(dirs[0].parent / "cgroup.controllers").split())
                if not dirs or not {"memory", "pids"} <= available:
                    continue
                enable = " ".join(f"+{c}" for c in ("memory", "pids", "cpu") if c in available)
                (dirs[0].parent / "cgroup.subtree_control").write_text(enable)
            for path in dirs:
                path.mkdir(exist_ok=True)
                made.append(path)
                for entry in [path, *path.iterdir()]:
                    os.chown(entry, user.pw_uid, user.pw_gid)
        except (OSError, IndexError):
            _remove_cgroups(made)
            continue
        atexit.register(_remove_cgroups, made)
        return {"TASKS_SANDBOX__CGROUP__MODE": mode, "TASKS_SANDBOX__CGROUP__PARENT": name}
    raise RuntimeError("no cgroup v2 or v1 memory/pids controllers to delegate here")


def _remove_cgroups(paths: list[Path]) -> None:
    for path in paths:
        for child in sorted(path.glob("*/"), reverse=True):
            with contextlib.suppress(OSError):
                child.rmdir()
        with contextlib.suppress(OSError):
            path.rmdir()
