"""moto's S3 server on a free loopback port: a real S3 HTTP API for boto3 and httpx in tests."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from tests.support.procs import free_port, wait_until

ACCESS_KEY = "corral-test-access"
SECRET_KEY = "corral-test-secret-" + "x" * 16


@dataclass(frozen=True)
class MotoS3:
    port: int

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def storage(self, bucket: str, public_endpoint: str | None = None) -> dict[str, object]:
        """Keyword arguments for a ``StorageSettings`` pointing at this server."""
        return {
            "backend": "s3",
            "s3": {
                "endpoint_url": self.endpoint,
                "public_endpoint_url": public_endpoint,
                "bucket": bucket,
                "access_key_id": ACCESS_KEY,
                "secret_access_key": SECRET_KEY,
            },
        }

    def client(self):  # type: ignore[no-untyped-def]
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            region_name="us-east-1",
            aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=SECRET_KEY,
        )


@contextmanager
def moto_s3_server() -> Iterator[MotoS3]:
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        moto = MotoS3(port)
        wait_until(lambda: moto.client().list_buckets() is not None, 10, "moto S3 server")
        yield moto
    finally:
        server.stop()
