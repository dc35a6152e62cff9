"""The python_q worker's hardening as the app sees it: the layers each worker publishes
(readiness, ``/api/tools``), the refusal to serve python_q without a working seccomp filter,
and cgroup v2 delegation logic on a fake cgroup tree (this machine kind has v1 controllers)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.procs import Worker, start_worker, wait_until
from tests.support.sandbox import (
    SANDBOX_VENV,
    as_sandbox_user,
    python_worker_env,
    sandbox_user_home,
    shared_dir,
)


def _selftest_caps() -> dict[str, Any]:
    """What the sandbox user's self-test finds here, the same way the worker runs it."""
    env = {**os.environ, "HOME": sandbox_user_home(), "TASKS_SANDBOX__VENV_PATH": str(SANDBOX_VENV)}
    cmd = [*as_sandbox_user(), sys.executable, "-m", "corral.tasks.sandbox.cli", "selftest"]
    proc = subprocess.run(
        [*cmd, "--backend", "bwrap"], env=env, capture_output=True, text=True, check=False
    )
    caps: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])["capabilities"]
    return caps


async def test_readiness_and_tools_report_each_python_workers_sandbox(
    api: httpx.AsyncClient,
) -> None:
    expected = _selftest_caps()
    for _ in range(40):  # readiness asks the workers (cached, bounded); busy machines are slow
        ready = (await api.get("/api/readyz")).json()
        if ready["queues"]["python_q"] and ready["sandbox"]:
            break
        await asyncio.sleep(0.5)
    layers = ready["sandbox"]
    assert layers, ready
    assert set(layers) == set(ready["queues"]["python_q"]), ready
    for caps in layers.values():
        assert caps["backend"] == "bwrap" and caps["seccomp"] is True, caps
        assert caps["cgroups"] == expected["cgroups"]["mode"], (caps, expected)
        if caps["cgroups"] == "none":
            assert caps["cgroup_reason"], caps
        else:
            assert {"memory", "pids"} <= set(caps["cgroup_controllers"]), caps
    tools = {t["name"]: t for t in (await api.get("/api/tools")).json()}
    assert tools["echo"]["sandbox"] is None
    listed = tools["run_python"]["sandbox"]
    assert set(layers) <= set(listed)
    assert all(listed[w]["seccomp"] for w in layers)


SITECUSTOMIZE = """
import struct
from corral.tasks.sandbox import seccomp
seccomp.bpf_program = lambda: struct.pack('<HBBI', 6, 0, 0, 0x7FFF0000)  # loads, allows all
"""


def test_worker_refuses_python_q_when_the_filter_does_not_work(
    stack_env: dict[str, str], tmp_path: Path
) -> None:
    """A filter that loads but blocks nothing (swapped in through sitecustomize, which also
    reaches the self-test's subprocess): the self-test's probe fails and the worker exits 78."""
    hook = shared_dir("corral-seccomp-hook-")
    (hook / "sitecustomize.py").write_text(SITECUSTOMIZE)
    (hook / "sitecustomize.py").chmod(0o644)
    env = {
        **stack_env,
        **python_worker_env(),
        "PYTHONPATH": str(hook),
        "TASKS_REDIS__BROKER_DB": "14",
        "TASKS_REDIS__BACKEND_DB": "15",
    }
    worker: Worker = start_worker(
        ("python_q",), env, name="no-filter@test", log_dir=tmp_path, wrap=as_sandbox_user()
    )
    try:
        code = wait_until(lambda: worker.proc.poll(), 90, "the worker to exit")
    finally:
        worker.stop()
    log = worker.log()
    assert code == 78, log[-3000:]
    assert "sandbox self-test failed: refusing python_q tasks" in log
    assert "unshare(CLONE_NEWUSER) was allowed" in log


# -- cgroup v2 delegation on a fake tree -------------------------------------------------------


def _fake_v2(tmp_path: Path, controllers: str, procs: str = "") -> tuple[Path, Path, Path]:
    mount = tmp_path / "cg"
    own = mount / "system.slice" / "corral-worker.service"
    own.mkdir(parents=True)
    (own / "cgroup.controllers").write_text(controllers)
    (own / "cgroup.subtree_control").write_text("")
    (own / "cgroup.procs").write_text(procs)
    mountinfo = tmp_path / "mountinfo"
    mountinfo.write_text(f"41 31 0:38 / {mount} rw,relatime - cgroup2 cgroup2 rw\n")
    proc_cgroup = tmp_path / "cgroup"
    proc_cgroup.write_text("0::/system.slice/corral-worker.service\n")
    return own, mountinfo, proc_cgroup


def test_v2_delegated_cgroup_is_found_prepared_and_used(tmp_path: Path) -> None:
    from corral.tasks.sandbox.cgroups import RunCgroup, detect, prepare_v2
    from corral.tasks.sandbox.settings import CgroupSettings, SandboxLimits

    own, mountinfo, proc_cgroup = _fake_v2(tmp_path, "cpu memory pids", procs="4242\n")
    found = detect(CgroupSettings(), mountinfo=mountinfo, proc_cgroup=proc_cgroup)
    assert (found.mode, found.parents, found.controllers) == (
        "v2", {"": own}, ("memory", "pids", "cpu")
    )  # fmt: skip
    prepare_v2(found)  # the worker's own processes move to a leaf, then controllers go down
    assert (own / "worker" / "cgroup.procs").read_text() == "4242"
    assert (own / "cgroup.subtree_control").read_text() == "+memory +pids +cpu"
    limits = SandboxLimits(memory_mb=300, max_processes=20)
    run = RunCgroup(found, limits, cpus=1.5)
    (path,) = run.dirs.values()
    assert path.parent == own and path.name.startswith("run-")
    assert (path / "memory.max").read_text() == str(300 << 20)
    assert (path / "pids.max").read_text() == "23"  # plus bwrap's own processes
    assert (path / "cpu.max").read_text() == "150000 100000"
    (path / "memory.events").write_text("low 0\nhigh 0\nmax 3\noom 1\noom_kill 2\n")
    assert run.oom_kills() == 2


def test_v2_without_controllers_or_delegation_falls_back_or_fails(tmp_path: Path) -> None:
    from corral.tasks.sandbox.cgroups import CgroupUnavailable, detect
    from corral.tasks.sandbox.settings import CgroupSettings

    _, mountinfo, proc_cgroup = _fake_v2(tmp_path, "hugetlb")
    found = detect(CgroupSettings(), mountinfo=mountinfo, proc_cgroup=proc_cgroup)
    assert found.mode == "none" and "no memory/pids controller" in found.reason
    with pytest.raises(CgroupUnavailable, match="cgroup mode v2 unavailable"):
        detect(CgroupSettings(mode="v2"), mountinfo=mountinfo, proc_cgroup=proc_cgroup)
    off = detect(CgroupSettings(mode="off"), mountinfo=mountinfo, proc_cgroup=proc_cgroup)
    assert off.mode == "none" and "off" in off.reason
