"""A local S3-compatible server (moto's server mode) for cloud workdirs."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

moto_server = pytest.importorskip("moto.server", reason="pip install 'moto[server]'")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def s3_workdir(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """An ``s3://`` workdir on a throwaway moto server (no real cloud)."""
    import boto3
    from cloudpathlib import S3Client

    port = _free_port()
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    for key, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(key, value)
    endpoint = f"http://127.0.0.1:{port}"
    try:
        boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket="xq-bucket")
        S3Client(endpoint_url=endpoint).set_as_default_client()
        yield "s3://xq-bucket/runs/wd"
    finally:
        server.stop()
