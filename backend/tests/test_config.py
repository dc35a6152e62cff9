"""Settings reach Celery for real; bad settings stop a worker at start; Redis URLs are right."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import redis
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from kombu import Connection
from pydantic import ValidationError

from corral.config import RedisSettings, StorageSettings
from corral.tasks.settings import CeleryOptionError, coerce_celery_options
from tests.support.procs import BACKEND_DIR, free_port, start_redis, start_worker, wait_until


def _worker_conf(env: dict[str, str]) -> dict[str, object]:
    code = (
        "import json; from corral.tasks.main import app; c = app.conf; "
        "print(json.dumps({k: c[k] for k in ('worker_prefetch_multiplier', 'task_acks_late',"
        " 'result_expires', 'broker_transport_options', 'worker_hijack_root_logger')},"
        " default=str))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        env={**os.environ, **env},
        cwd=BACKEND_DIR,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def test_defaults_match_the_architecture() -> None:
    conf = _worker_conf({})
    assert conf["worker_prefetch_multiplier"] == 1
    assert conf["task_acks_late"] is True
    assert conf["worker_hijack_root_logger"] is False


def test_celery_options_from_env_reach_celery_conf() -> None:
    conf = _worker_conf(
        {
            "TASKS_CELERY__worker_prefetch_multiplier": "4",
            "TASKS_CELERY__broker_transport_options": '{"visibility_timeout": 120}',
            "TASKS_CELERY__TASK_ACKS_LATE": "false",
        }
    )
    assert conf["worker_prefetch_multiplier"] == 4
    assert conf["broker_transport_options"] == {"visibility_timeout": 120}
    assert conf["task_acks_late"] is False


def test_option_reaches_a_running_worker(stack_env: dict[str, str], redis_server: object) -> None:
    from celery import Celery

    worker = start_worker(
        ("config_probe_q",),
        stack_env | {"TASKS_CELERY__worker_prefetch_multiplier": "3"},
        name="config-probe@test",
        concurrency=1,
    )
    client = Celery(broker=stack_env["TASKS_REDIS__URL"] + "/0", set_as_current=False)
    try:
        conf = wait_until(
            lambda: (client.control.inspect(destination=[worker.name], timeout=1).conf() or {}).get(
                worker.name
            ),
            60,
            "the probe worker's conf",
            interval=0.3,
        )
        assert conf["worker_prefetch_multiplier"] == 3
    finally:
        client.close()
        worker.stop()


def test_unknown_celery_option_stops_the_worker_with_a_clear_error() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "celery", "-A", "corral.tasks.main", "worker", "-Q", "llm_q"],
        env={
            **os.environ,
            "TASKS_CELERY__worker_prefetch_multiplierr": "2",
            "TASKS_REDIS__PORT": str(free_port()),
        },
        cwd=BACKEND_DIR,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert "worker_prefetch_multiplierr" in output and "unknown Celery option" in output


def test_bad_option_values_are_refused() -> None:
    with pytest.raises(CeleryOptionError, match="not a valid int"):
        coerce_celery_options({"worker_prefetch_multiplier": "lots"})
    with pytest.raises(CeleryOptionError, match="expected JSON"):
        coerce_celery_options({"broker_transport_options": "{nope"})


def test_password_redis_url_works_for_redis_py_and_kombu() -> None:
    password = "p@ss:w/rd#1 %?&"
    server = start_redis(password=password)
    try:
        settings = RedisSettings(host="127.0.0.1", port=server.port, password=password)
        assert "p%40ss%3Aw%2Frd%231%20%25%3F%26" in settings.broker_url
        assert redis.Redis.from_url(settings.streams_url).ping()
        with Connection(settings.broker_url, connect_timeout=5) as conn:
            conn.ensure_connection(max_retries=1)
        wrong = RedisSettings(host="127.0.0.1", port=server.port, password="wrong")
        with pytest.raises(redis.AuthenticationError):
            redis.Redis.from_url(wrong.streams_url).ping()
    finally:
        server.stop()


def _self_signed(tmp: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    import datetime as dt
    import ipaddress

    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp / "cert.pem", tmp / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


def test_tls_redis_url_with_password_works() -> None:
    tmp = Path(tempfile.mkdtemp())
    cert, key = _self_signed(tmp)
    tls_port = free_port()
    server = start_redis(
        password="tls-secret",
        extra=[
            "--tls-port",
            str(tls_port),
            "--tls-cert-file",
            str(cert),
            "--tls-key-file",
            str(key),
            "--tls-ca-cert-file",
            str(cert),
            "--tls-auth-clients",
            "no",
        ],
    )
    try:
        settings = RedisSettings(
            host="127.0.0.1", port=tls_port, password="tls-secret", ssl=True, ssl_ca_certs=cert
        )
        assert settings.broker_url.startswith("rediss://:tls-secret@127.0.0.1:")
        assert "ssl_cert_reqs=required" in settings.broker_url
        assert redis.Redis.from_url(settings.streams_url).ping()
        with Connection(settings.broker_url, connect_timeout=5) as conn:
            conn.ensure_connection(max_retries=1)
    finally:
        server.stop()


def test_url_setting_and_validation() -> None:
    settings = RedisSettings(url="rediss://:pw@cache.internal:6380/5")
    assert settings.backend_url == "rediss://:pw@cache.internal:6380/1?ssl_cert_reqs=required"
    with pytest.raises(ValidationError, match="redis://"):
        RedisSettings(url="http://nope")


def test_secrets_have_no_placeholders() -> None:
    with pytest.raises(ValidationError, match="placeholder"):
        StorageSettings.model_validate(
            {"backend": "s3", "s3": {"access_key_id": "a", "secret_access_key": "changeme"}}
        )
    from corral.app.settings import AuthSettings

    with pytest.raises(ValidationError, match="DEV_SECRET"):
        AuthSettings(mode="dev")
    with pytest.raises(ValidationError, match="placeholder"):
        AuthSettings(mode="dev", dev_secret="changeme")
    with pytest.raises(ValidationError, match="32"):
        AuthSettings(mode="dev", dev_secret="short-but-real")
    with pytest.raises(ValidationError, match="OIDC_ISSUER"):
        AuthSettings(mode="oidc")
