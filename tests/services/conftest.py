"""Real backing services on 127.0.0.1: an S3-protocol server (moto) and an MLflow tracking server that
proxies artifacts to it. Started once per module and stopped afterwards."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

CREDS = {
    "AWS_ACCESS_KEY_ID": "testing-key-id",
    "AWS_SECRET_ACCESS_KEY": "testing-secret-value-42",
    "AWS_DEFAULT_REGION": "us-east-1",
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """(endpoint URL, boto3 client) of a moto S3 server; credentials are set for this process only."""
    import boto3
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    url = f"http://127.0.0.1:{port}"
    with pytest.MonkeyPatch.context() as mp:
        for k, v in CREDS.items():
            mp.setenv(k, v)
        mp.setenv("AWS_ENDPOINT_URL_S3", url)
        client = boto3.client("s3", endpoint_url=url)
        yield url, client
    server.stop()


@pytest.fixture(scope="module")
def mlflow_server(s3, tmp_path_factory):
    """URL of an `mlflow server` (sqlite backend) whose artifacts go to s3://mlflow-artifacts on the S3 server."""
    url, client = s3
    client.create_bucket(Bucket="mlflow-artifacts")
    root = tmp_path_factory.mktemp("mlflow-server")
    port = free_port()
    env = {**os.environ, **CREDS, "MLFLOW_S3_ENDPOINT_URL": url}
    cmd = [
        str(Path(sys.executable).parent / "mlflow"),
        "server",
        "--backend-store-uri",
        f"sqlite:///{root / 'db.sqlite'}",
        "--artifacts-destination",
        "s3://mlflow-artifacts/store",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
    ]
    log = open(root / "server.log", "w")
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=root)
    base = f"http://127.0.0.1:{port}"
    deadline = time.time() + 90
    while True:
        try:
            with urllib.request.urlopen(f"{base}/health", timeout=2) as r:
                if r.status == 200:
                    break
        except OSError:
            pass
        if proc.poll() is not None or time.time() > deadline:
            proc.kill()
            raise RuntimeError(f"mlflow server did not start: {(root / 'server.log').read_text()[-2000:]}")
        time.sleep(0.5)
    yield base
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
    log.close()


def client_env(tracking_uri: str) -> dict[str, str]:
    """The environment of a pipeline process talking to the server: no S3 credentials at all."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_") and k != "MLFLOW_S3_ENDPOINT_URL"}
    env["MLFLOW_TRACKING_URI"] = tracking_uri
    return env
