"""Escape battery, once per backend: the sandbox runs directly (no Celery) through the CLI,
as the unprivileged worker user for bwrap, with fake S3 secrets in its environment.

Network checks only ever target a listener this test opens on 127.0.0.1.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from tests.support.sandbox import (
    FAKE_S3_SECRET,
    SANDBOX_VENV,
    WASM_CACHE,
    as_sandbox_user,
    check_sandbox_host,
    delegate_cgroup,
    ensure_sandbox_venv,
    is_root,
    sandbox_user_home,
    shared_dir,
)

BACKENDS = ["bwrap", "wasm"]


@pytest.fixture(scope="session")
def sandbox_ready() -> None:
    check_sandbox_host()
    ensure_sandbox_venv()


@pytest.fixture(scope="session")
def wasm_ready() -> float:
    """Compile (first time, about a minute) or load the cached wasm module once per session."""
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "corral.tasks.sandbox.prepare", "wasm"],
        env={**os.environ, "TASKS_SANDBOX__WASM_CACHE_DIR": str(WASM_CACHE)},
        capture_output=True, text=True, timeout=900, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return time.monotonic() - started


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest, sandbox_ready: None) -> str:
    if request.param == "wasm":
        request.getfixturevalue("wasm_ready")
    return str(request.param)


@pytest.fixture
def dirs() -> Iterator[tuple[Path, Path]]:
    base = shared_dir("corral-escape-")
    inp, out = base / "in", base / "out"
    inp.mkdir()
    out.mkdir()
    yield inp, out


def run_sandbox(
    backend: str,
    code: str,
    dirs: tuple[Path, Path],
    limits: dict[str, Any] | None = None,
    extra_env: dict[str, str] | None = None,
) -> dict[str, Any]:
    inp, out = dirs
    env = {
        **os.environ,
        **(extra_env or {}),
        "TASKS_SANDBOX__VENV_PATH": str(SANDBOX_VENV),
        "TASKS_SANDBOX__WASM_CACHE_DIR": str(WASM_CACHE),
        "AWS_SECRET_ACCESS_KEY": FAKE_S3_SECRET,
        "TASKS_STORAGE__S3__SECRET_ACCESS_KEY": FAKE_S3_SECRET,
    }
    prefix: list[str] = []
    if backend == "bwrap":
        prefix = as_sandbox_user()
        env["HOME"] = sandbox_user_home()
    cmd = [
        *prefix, sys.executable, "-m", "corral.tasks.sandbox.cli", "run", "--backend", backend,
        "--input", str(inp), "--output", str(out), "--limits", json.dumps(limits or {}),
    ]  # fmt: skip
    proc = subprocess.run(
        cmd, input=code, capture_output=True, text=True, env=env, timeout=120, check=False
    )
    assert proc.returncode == 0, (
        f"exit {proc.returncode}: {proc.stdout[-2000:]} {proc.stderr[-3000:]}"
    )
    result: dict[str, Any] = json.loads(proc.stdout)
    assert result["backend"] == backend
    return result


def test_cannot_read_host_files(backend: str, dirs: tuple[Path, Path]) -> None:
    code = "print(open('/etc/passwd').read())"
    result = run_sandbox(backend, code, dirs)
    assert "root:x:0" not in result["stdout"]
    assert result["error"]["type"] in {"FileNotFoundError", "PermissionError"}, result
    assert result["error"]["line"] == 1


def test_worker_env_and_secrets_are_invisible(backend: str, dirs: tuple[Path, Path]) -> None:
    code = (
        "import os, glob\n"
        "print(dict(os.environ))\n"
        "for p in glob.glob('/proc/*/environ') + ['/proc/self/environ', '/proc/1/environ']:\n"
        "    try:\n"
        "        print(p, open(p, 'rb').read())\n"
        "    except OSError as e:\n"
        "        print(p, type(e).__name__)\n"
    )
    result = run_sandbox(backend, code, dirs)
    seen = result["stdout"] + result["stderr"]
    assert "dict" not in (result["error"] or {}).get("type", ""), result
    assert "HOME" in seen  # the code did run and print its environment
    assert FAKE_S3_SECRET not in seen
    assert "TASKS_" not in seen and "CORRAL_" not in seen and "AWS_" not in seen


def test_cannot_write_outside_the_output_dir(backend: str, dirs: tuple[Path, Path]) -> None:
    code = (
        "results = {}\n"
        "for path in ['/x', '/usr/x', '/input/x', '/venv/x', '/sandbox/x', '/etc/x', '/proc/x']:\n"
        "    try:\n"
        "        open(path, 'w').write('x')\n"
        "        results[path] = 'written'\n"
        "    except OSError as e:\n"
        "        results[path] = type(e).__name__\n"
        "print(results)\n"
        "open('/output/ok.txt', 'w').write('fine')\n"
    )
    result = run_sandbox(backend, code, dirs)
    assert result["error"] is None, result
    assert "written" not in result["stdout"], result["stdout"]
    assert list(dirs[0].iterdir()) == []
    assert (dirs[1] / "ok.txt").read_text() == "fine"


def test_symlink_to_host_file_is_not_followed(backend: str, dirs: tuple[Path, Path]) -> None:
    code = (
        "import os\n"
        "os.symlink('/etc/passwd', '/output/passwd.png')\n"
        "os.symlink('/proc/self/environ', '/output/env.png')\n"
    )
    result = run_sandbox(backend, code, dirs)
    _, out = dirs
    for path in out.iterdir():
        assert not path.is_symlink()
        assert b"root:x:0" not in path.read_bytes()
    assert not (out / "passwd.png").exists()
    assert result["output_files"] == []
    # bwrap makes the link and the collector skips it; wasm refuses to make it at all.
    said = " ".join(result["notes"]) + json.dumps(result["error"])
    assert "symbolic link" in said or "Not supported" in said, result


def test_no_network_even_to_loopback(backend: str, dirs: tuple[Path, Path]) -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        listener.setblocking(False)
        port = listener.getsockname()[1]
        code = (
            "import socket\n"
            f"socket.create_connection(('127.0.0.1', {port}), timeout=3)\n"
            "print('connected')\n"
        )
        result = run_sandbox(backend, code, dirs)
        with pytest.raises(BlockingIOError):
            listener.accept()  # nobody ever connected
    assert "connected" not in result["stdout"]
    assert result["error"] is not None and result["error"]["line"] == 2, result


def _sandbox_processes() -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        cmdline = proc.info.get("cmdline") or []
        if "/sandbox/runner.py" in cmdline and "--mode" in cmdline:
            found.append(proc)
    return found


def test_fork_bomb_is_contained(backend: str, dirs: tuple[Path, Path]) -> None:
    code = "import os\nwhile True:\n    os.fork()\n"
    started = time.monotonic()
    result = run_sandbox(backend, code, dirs, {"wall_s": 10, "max_processes": 64})
    assert time.monotonic() - started < 30
    error = result["error"]
    assert error is not None, result
    if backend == "bwrap":
        assert error["type"] in {"BlockingIOError", "TimeLimitExceeded"}, error
        if error["type"] == "BlockingIOError":
            assert "at most 64 processes" in error["message"], error
    else:
        assert error["type"] == "AttributeError"  # WASI has no fork at all
    assert not [p for p in _sandbox_processes() if p.status() != psutil.STATUS_ZOMBIE]


def test_4gb_allocation_hits_the_memory_limit(backend: str, dirs: tuple[Path, Path]) -> None:
    code = "blocks = [bytearray(256 * 1024 * 1024) for _ in range(16)]\nprint('allocated')\n"
    result = run_sandbox(backend, code, dirs, {"memory_mb": 512})
    assert "allocated" not in result["stdout"]
    error = result["error"]
    assert error["type"] in {"MemoryError", "MemoryLimitExceeded"}, result
    assert "512 MB" in error["message"]


def test_infinite_loop_is_killed_at_the_limit(backend: str, dirs: tuple[Path, Path]) -> None:
    started = time.monotonic()
    result = run_sandbox(backend, "while True:\n    pass\n", dirs, {"wall_s": 2, "cpu_s": 2})
    took = time.monotonic() - started
    assert result["error"]["type"] == "TimeLimitExceeded", result
    assert "2 s" in result["error"]["message"]
    assert result["killed"] in {"wall_time", "cpu_time"}
    assert took < 15, took
    again = run_sandbox(backend, "print(1)", dirs)
    assert again["stdout"] == "1\n" and again["error"] is None


def test_100mb_of_stdout_is_truncated(backend: str, dirs: tuple[Path, Path]) -> None:
    code = (
        "import sys\nchunk = 'x' * 1_000_000\nfor _ in range(100):\n    sys.stdout.write(chunk)\n"
    )
    result = run_sandbox(backend, code, dirs, {"stdout_max_bytes": 100_000})
    assert result["stdout_truncated"] is True
    assert 0 < len(result["stdout"]) <= 100_000
    assert any("stdout was cut at 100000 bytes" in n for n in result["notes"]), result["notes"]


def test_1gb_file_is_capped(backend: str, dirs: tuple[Path, Path]) -> None:
    code = (
        "with open('/output/big.bin', 'wb') as f:\n"
        "    for _ in range(1024):\n"
        "        f.write(b'x' * (1 << 20))\n"
    )
    result = run_sandbox(backend, code, dirs, {"max_file_mb": 16, "memory_mb": 512})
    error = result["error"]
    assert error is not None, result
    assert "16 MB" in error["message"], error
    for path in dirs[1].iterdir():
        assert path.stat().st_size <= 16 << 20


# -- seccomp (bwrap): every denied syscall fails with EPERM, normal work still runs ------------


def _host_syscall_numbers(names: tuple[str, ...]) -> dict[str, int]:
    """Syscall numbers of this architecture, resolved by the same libseccomp the filter uses."""
    from corral.tasks.sandbox.seccomp import _lib

    lib = _lib()
    numbers = {name: lib.seccomp_syscall_resolve_name(name.encode()) for name in names}
    return {name: nr for name, nr in numbers.items() if nr >= 0}


def test_bwrap_denies_each_blocked_syscall(sandbox_ready: None, dirs: tuple[Path, Path]) -> None:
    from corral.tasks.sandbox.seccomp import DENIED_SYSCALLS, NAMESPACE_FLAGS

    numbers = _host_syscall_numbers((*DENIED_SYSCALLS, "clone", "clone3"))
    assert {"userfaultfd", "io_uring_setup", "bpf", "keyctl", "unshare", "ptrace"} <= set(numbers)
    code = (
        "import ctypes, json, os, socket\n"
        "libc = ctypes.CDLL(None, use_errno=True)\n"
        f"numbers = {numbers!r}\n"
        "seen = {}\n"
        "for name, nr in numbers.items():\n"
        "    if name.startswith('clone'):\n"
        "        continue\n"
        "    ctypes.set_errno(0)\n"
        "    seen[name] = [libc.syscall(nr, 0, 0, 0, 0, 0), ctypes.get_errno()]\n"
        "ctypes.set_errno(0)\n"
        "seen['clone3'] = [libc.syscall(numbers['clone3'], 0, 0), ctypes.get_errno()]\n"
        f"for flag_name, flag in {NAMESPACE_FLAGS!r}.items():\n"
        "    ctypes.set_errno(0)\n"
        "    rc = libc.syscall(numbers['clone'], flag | 17, 0, 0, 0, 0)\n"
        "    if rc == 0:\n"
        "        os._exit(0)  # the filter let it through: the child leaves at once\n"
        "    seen['clone+' + flag_name] = [rc, ctypes.get_errno()]\n"
        "for label, args in (('AF_PACKET', (17, 3)), ('SOCK_RAW', (2, 3, 1))):\n"
        "    try:\n"
        "        socket.socket(*args).close()\n"
        "        seen['socket ' + label] = [0, 0]\n"
        "    except OSError as exc:\n"
        "        seen['socket ' + label] = [-1, exc.errno]\n"
        "print(json.dumps(seen))\n"
    )
    result = run_sandbox("bwrap", code, dirs)
    assert result["error"] is None, result
    seen = json.loads(result["stdout"])
    eperm = [-1, 1]
    wrong = {
        name: got
        for name, got in seen.items()
        if got != ([-1, 38] if name == "clone3" else eperm)  # clone3: ENOSYS, libc falls back
    }
    assert not wrong, wrong
    assert len(seen) == len(numbers) + len(NAMESPACE_FLAGS) + 1  # every call was tried


def test_bwrap_filter_keeps_threads_subprocesses_and_numpy(
    sandbox_ready: None, dirs: tuple[Path, Path]
) -> None:
    code = (
        "import subprocess, threading, numpy as np\n"
        "box = []\n"
        "t = threading.Thread(target=lambda: box.append(int(np.arange(10).sum())))\n"
        "t.start(); t.join()\n"
        "child = subprocess.run(['/venv/bin/python', '-c', 'print(5)'], capture_output=True)\n"
        "print(box[0], child.stdout.decode().strip(), open('/proc/self/status').read().count('Seccomp:\\t2'))\n"  # noqa: E501
    )
    result = run_sandbox("bwrap", code, dirs)
    assert result["error"] is None, result
    assert result["stdout"] == "45 5 1\n"


def test_bwrap_self_test_fails_without_a_working_filter(sandbox_ready: None) -> None:
    """The probe catches a filter that loads but blocks nothing (and a missing one)."""
    script = (
        "import struct, sys\n"
        "from corral.tasks.sandbox import SandboxUnavailable, seccomp\n"
        "from corral.tasks.sandbox.bwrap import BwrapSandbox\n"
        "from corral.tasks.sandbox.settings import SandboxSettings\n"
        "settings = SandboxSettings(venv_path=sys.argv[1])\n"
        "seccomp.bpf_program.cache_clear()\n"
        "seccomp.bpf_program = lambda: struct.pack('<HBBI', 6, 0, 0, 0x7FFF0000)  # allow all\n"
        "for box in (BwrapSandbox(settings), BwrapSandbox(settings, seccomp=False)):\n"
        "    try:\n"
        "        box.self_test()\n"
        "        print('passed')\n"
        "    except SandboxUnavailable as exc:\n"
        "        print('refused:', str(exc)[:300].replace(chr(10), ' '))\n"
    )
    proc = subprocess.run(
        [*as_sandbox_user(), sys.executable, "-c", script, str(SANDBOX_VENV)],
        capture_output=True, text=True, timeout=120, check=False,
        env={**os.environ, "HOME": sandbox_user_home()},
    )  # fmt: skip
    lines = proc.stdout.splitlines()
    assert proc.returncode == 0 and len(lines) == 2, proc.stdout + proc.stderr[-2000:]
    assert lines[0].startswith("refused:") and "unshare" in lines[0], lines
    assert lines[1].startswith("refused:") and "without its seccomp filter" in lines[1], lines


# -- cgroups, /proc and /sys, daemons, links (bwrap) -----------------------------------------


@pytest.fixture(scope="module")
def cgroup_env() -> dict[str, str]:
    """A cgroup subtree delegated to the sandbox user (v2 if this host offers it, else v1)."""
    if not is_root():
        pytest.skip("creating a cgroup subtree needs root (CI runs the tests as root)")
    return delegate_cgroup(f"corral-escape-{os.getpid()}")


@pytest.fixture(params=["rlimits", "cgroup"])
def limits_env(request: pytest.FixtureRequest, sandbox_ready: None) -> dict[str, str]:
    if request.param == "rlimits":
        return {"TASKS_SANDBOX__CGROUP__MODE": "off"}
    env: dict[str, str] = request.getfixturevalue("cgroup_env")
    return env


def _run_groups_left(env: dict[str, str]) -> list[Path]:
    from corral.tasks.sandbox.cgroups import detect
    from corral.tasks.sandbox.settings import CgroupSettings

    settings = CgroupSettings.model_validate(
        {"mode": env["TASKS_SANDBOX__CGROUP__MODE"], "parent": env["TASKS_SANDBOX__CGROUP__PARENT"]}
    )
    found = detect(settings)
    return [p for parent in found.parents.values() for p in parent.glob("run-*")]


def test_cgroup_mode_is_detected_and_reported(cgroup_env: dict[str, str]) -> None:
    cmd = [*as_sandbox_user(), sys.executable, "-m", "corral.tasks.sandbox.cli", "selftest"]
    env = {**os.environ, **cgroup_env, "HOME": sandbox_user_home(),
           "TASKS_SANDBOX__VENV_PATH": str(SANDBOX_VENV)}  # fmt: skip
    proc = subprocess.run(
        [*cmd, "--backend", "bwrap"], env=env, capture_output=True, text=True, check=False
    )
    answer = json.loads(proc.stdout.strip().splitlines()[-1])
    caps = answer["capabilities"]
    assert caps["seccomp"] is True
    assert caps["cgroups"]["mode"] == cgroup_env["TASKS_SANDBOX__CGROUP__MODE"]
    assert {"memory", "pids"} <= set(caps["cgroups"]["controllers"])
    assert _run_groups_left(cgroup_env) == []  # the self-test's run group is gone


def test_cgroup_fork_bomb_is_contained(cgroup_env: dict[str, str], dirs: tuple[Path, Path]) -> None:
    code = "import os\nwhile True:\n    os.fork()\n"
    started = time.monotonic()
    limits = {"wall_s": 10, "max_processes": 32}
    result = run_sandbox("bwrap", code, dirs, limits, cgroup_env)
    assert time.monotonic() - started < 30
    error = result["error"]
    assert error["type"] in {"BlockingIOError", "TimeLimitExceeded"}, result
    assert _run_groups_left(cgroup_env) == []
    assert run_sandbox("bwrap", "print(1)", dirs, None, cgroup_env)["stdout"] == "1\n"


def test_memory_bomb_across_processes(limits_env: dict[str, str], dirs: tuple[Path, Path]) -> None:
    """Six processes of 200 MB each: every one is under the 512 MB per-process rlimit, the
    sum is not. A cgroup stops the sum; rlimits alone cannot (documented limit)."""
    code = (
        "import os, time\n"
        "for _ in range(5):\n"
        "    if os.fork() == 0:\n"
        "        break\n"
        "block = bytearray(200 * 1024 * 1024)\n"
        "for i in range(0, len(block), 4096):\n"
        "    block[i] = 1\n"
        "time.sleep(2)\n"
        "print('survived')\n"
    )
    result = run_sandbox("bwrap", code, dirs, {"memory_mb": 512, "wall_s": 20}, limits_env)
    if limits_env.get("TASKS_SANDBOX__CGROUP__MODE") == "off":
        assert result["error"] is None, result  # 1.2 GB in six processes: the documented gap
    else:
        assert result["killed"] == "memory" or any("512 MB" in n for n in result["notes"]), result
        assert result["stdout"].count("survived") < 6, result
        assert _run_groups_left(limits_env) == []
    assert run_sandbox("bwrap", "print(1)", dirs, None, limits_env)["stdout"] == "1\n"


def test_proc_and_sys_show_nothing_of_the_host(
    limits_env: dict[str, str], dirs: tuple[Path, Path]
) -> None:
    code = (
        "import json, os\n"
        "seen = {'pids': sorted(int(p) for p in os.listdir('/proc') if p.isdigit())}\n"
        "for path in ['/proc/kcore', '/proc/1/environ', '/proc/sys/kernel/hostname',\n"
        "             '/proc/self/mountinfo', '/sys/fs/cgroup/cgroup.procs', '/sys/kernel']:\n"
        "    try:\n"
        "        with open(path, 'rb') as fh:\n"
        "            seen[path] = fh.read(4096).decode('latin-1')\n"
        "    except OSError as exc:\n"
        "        seen[path] = type(exc).__name__\n"
        "for path in ['/proc/sys/kernel/hostname', '/proc/sysrq-trigger']:\n"
        "    try:\n"
        "        with open(path, 'w') as fh:\n"
        "            fh.write('x')\n"
        "        seen['wrote ' + path] = True\n"
        "    except OSError as exc:\n"
        "        seen['wrote ' + path] = type(exc).__name__\n"
        "print(json.dumps(seen))\n"
    )
    result = run_sandbox("bwrap", code, dirs, None, limits_env)
    assert result["error"] is None, result
    seen = json.loads(result["stdout"])
    assert len(seen["pids"]) <= 3, seen["pids"]  # its own pid namespace: init, python
    assert seen["/proc/kcore"] in {"PermissionError", "FileNotFoundError"}
    assert FAKE_S3_SECRET not in result["stdout"]
    assert seen["/proc/sys/kernel/hostname"].strip() == "sandbox"
    assert seen["/sys/fs/cgroup/cgroup.procs"] == "FileNotFoundError"  # no /sys at all
    assert seen["/sys/kernel"] == "FileNotFoundError"
    mount_points = {line.split()[4] for line in seen["/proc/self/mountinfo"].splitlines()}
    allowed = ("/", "/usr", "/venv", "/sandbox", "/code.py", "/input", "/proc", "/dev", "/tmp",
               "/output", "/lib", "/lib64", "/bin", "/root", "/home")  # fmt: skip
    assert all(m in allowed or m.startswith(("/dev/", "/proc/", "/root/")) for m in mount_points), (
        mount_points
    )
    assert seen["wrote /proc/sys/kernel/hostname"] is not True
    assert seen["wrote /proc/sysrq-trigger"] is not True


def test_double_fork_daemon_dies_with_the_run(
    limits_env: dict[str, str], dirs: tuple[Path, Path]
) -> None:
    token = f"corral-daemon-{os.getpid()}-{time.monotonic_ns()}"
    code = (
        "import os, time\n"
        "if os.fork() == 0:\n"
        "    os.setsid()\n"
        "    if os.fork() == 0:\n"
        f"        os.execv('/venv/bin/python', ['python', '-c', 'import time; time.sleep(120)', '{token}'])\n"  # noqa: E501
        "    os._exit(0)\n"
        "time.sleep(0.5)\n"
        "print('parent done')\n"
    )
    result = run_sandbox("bwrap", code, dirs, None, limits_env)
    assert result["stdout"] == "parent done\n", result

    def daemons() -> list[psutil.Process]:
        found = []
        for proc in psutil.process_iter(["cmdline"]):
            if token in (proc.info.get("cmdline") or []) and proc.status() != psutil.STATUS_ZOMBIE:
                found.append(proc)
        return found

    deadline = time.monotonic() + 5
    while daemons() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert daemons() == []
    if limits_env.get("TASKS_SANDBOX__CGROUP__MODE") != "off":
        assert _run_groups_left(limits_env) == []


def test_hardlinks_and_symlinks_in_outputs(backend: str, dirs: tuple[Path, Path]) -> None:
    inp, out = dirs
    (inp / "data.csv").write_text("a,b\n1,2\n")
    code = (
        "import os\n"
        "notes = []\n"
        "for src, dst in [('/input/data.csv', '/output/in-link.csv'),\n"
        "                 ('/usr/bin/env', '/output/env.bin')]:\n"
        "    try:\n"
        "        os.link(src, dst)\n"
        "        notes.append('linked ' + dst)\n"
        "    except OSError as exc:\n"
        "        notes.append(type(exc).__name__)\n"
        "open('/output/a.txt', 'w').write('mine')\n"
        "try:\n"
        "    os.link('/output/a.txt', '/output/b.txt')\n"
        "except OSError as exc:\n"
        "    notes.append('inner ' + type(exc).__name__)\n"
        "os.symlink('/input', '/output/dir-link')\n"
        "print(notes)\n"
    )
    result = run_sandbox(backend, code, dirs)
    assert "linked" not in result["stdout"], result  # no hard link across mounts
    files = {p.name: p for p in out.iterdir()}
    assert "dir-link" not in files and "in-link.csv" not in files and "env.bin" not in files
    assert files["a.txt"].read_text() == "mine"
    for path in files.values():
        st = path.lstat()
        assert not path.is_symlink() and st.st_nlink == 1  # plain, independent files on the host
    assert (inp / "data.csv").read_text() == "a,b\n1,2\n"
