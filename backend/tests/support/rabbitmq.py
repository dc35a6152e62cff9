"""A real RabbitMQ for tests: ``CORRAL_TEST_RABBITMQ_URL``, else a private node on free ports.

The private node is Debian's ``rabbitmq-server`` (``.ci/run`` installs it) with its own config
file, node name, data and log directories and AMQP/distribution ports, so it never touches a
system node on 5672. As root the server script drops to the ``rabbitmq`` user, so its
directories belong to that user.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import psutil

from tests.support.procs import free_port, wait_until

HINT = "install rabbitmq-server (apt-get install rabbitmq-server) or set CORRAL_TEST_RABBITMQ_URL"


def _server_binary() -> str:
    found = shutil.which("rabbitmq-server") or (
        "/usr/sbin/rabbitmq-server" if Path("/usr/sbin/rabbitmq-server").exists() else None
    )
    if not found:
        raise RuntimeError(f"no rabbitmq-server: {HINT}")
    return found


def _port_open(port: int) -> bool:
    import socket

    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _amqp_ready(url: str) -> bool:
    from kombu import Connection

    with Connection(url, connect_timeout=2) as conn:
        conn.ensure_connection(max_retries=1)
    return True


@contextlib.contextmanager
def rabbitmq_url() -> Iterator[str]:
    given = os.environ.get("CORRAL_TEST_RABBITMQ_URL")
    if given:
        yield given
        return
    binary = _server_binary()
    base = Path(tempfile.mkdtemp(prefix="corral-rabbitmq-"))
    port, dist = free_port(), free_port()
    node = f"corral-test-{uuid.uuid4().hex[:8]}@localhost"
    (base / "mnesia").mkdir()
    (base / "log").mkdir()
    (base / "enabled_plugins").write_text("[].\n")
    (base / "rabbitmq.conf").write_text(
        f"listeners.tcp.local = 127.0.0.1:{port}\nloopback_users = none\n"
    )
    (base / "rabbitmq-env.conf").write_text("ERL_EPMD_ADDRESS=127.0.0.1\n")
    if os.geteuid() == 0:
        with contextlib.suppress(KeyError):
            user = pwd.getpwnam("rabbitmq")
            for path in [base, *base.rglob("*")]:
                os.chown(path, user.pw_uid, user.pw_gid)
    env = {
        **os.environ,
        "RABBITMQ_CONFIG_FILE": str(base / "rabbitmq.conf"),
        "RABBITMQ_CONF_ENV_FILE": str(base / "rabbitmq-env.conf"),
        "RABBITMQ_NODENAME": node,
        "RABBITMQ_NODE_PORT": str(port),
        "RABBITMQ_DIST_PORT": str(dist),
        "RABBITMQ_MNESIA_BASE": str(base / "mnesia"),
        "RABBITMQ_LOG_BASE": str(base / "log"),
        "RABBITMQ_ENABLED_PLUGINS_FILE": str(base / "enabled_plugins"),
        "RABBITMQ_PID_FILE": str(base / "pid"),
        "ERL_FLAGS": "-kernel inet_dist_use_interface {127,0,0,1}",
    }
    log = (base / "server.out").open("wb")
    proc = subprocess.Popen(
        [binary], env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    url = f"amqp://guest:guest@127.0.0.1:{port}//"
    try:
        try:
            wait_until(lambda: _port_open(port) and _amqp_ready(url), 90, "rabbitmq-server")
        except TimeoutError as exc:
            out = (base / "server.out").read_text(errors="replace")[-3000:]
            raise RuntimeError(f"rabbitmq-server did not start ({HINT}):\n{out}") from exc
        yield url
    finally:
        _stop_node(proc, node)
        log.close()
        shutil.rmtree(base, ignore_errors=True)


def _node_processes(node: str) -> list[psutil.Process]:
    """Every process of our node: the server script re-executes as ``rabbitmq`` in a session
    of its own, so the process group we started does not hold them; the node name does."""
    found = []
    for proc in psutil.process_iter(["pid"]):
        with contextlib.suppress(psutil.Error):
            if proc.environ().get("RABBITMQ_NODENAME") == node:
                found.append(proc)
    return found


def _stop_node(proc: subprocess.Popen[bytes], node: str) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    procs = _node_processes(node)
    for p in procs:
        with contextlib.suppress(psutil.Error):
            p.terminate()
    _gone, alive = psutil.wait_procs(procs, timeout=15)
    for p in alive:
        with contextlib.suppress(psutil.Error):
            p.kill()
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(5)
