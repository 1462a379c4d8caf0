"""Where resumable training state lives: a local folder or an S3 prefix, keyed by pipeline run and stage.

A pod that Kubernetes restarts (a preempted spot node, a KFP retry) is a new pod with an empty disk: its
state must live outside it. ``base.state_uri`` names the place; the key adds the pipeline run (the KFP run
id, which the Kubeflow tasks read from their pod's ``pipeline/runid`` label into ``TRANSFEROPS_RUN_KEY``) and
the stage, so a retry of a task finds its own state and no other run or task does.

Saves are atomic on both backends: locally a temp file renamed over the target; on S3, which has no rename,
an upload to a temporary key, a server-side copy onto the real key, then the temporary key is deleted. A
reader therefore sees the previous complete state or the new one, never a partial object.
"""

from __future__ import annotations

import logging
import os
import tempfile
import uuid
from pathlib import Path
from typing import Any, Protocol

import torch

from transferops.errors import CheckpointError
from transferops.training.checkpoint import load_checkpoint, save_checkpoint

log = logging.getLogger(__name__)

RUN_KEY_ENV = "TRANSFEROPS_RUN_KEY"
"""The pipeline run a stage belongs to (set by the Kubeflow tasks; unset for the CLI and DVC)."""


class StateStore(Protocol):
    location: str

    def load(self) -> dict[str, Any] | None: ...

    def save(self, payload: dict[str, Any]) -> None: ...

    def delete(self) -> None: ...


class LocalStateStore:
    """A state file on a local (or mounted) file system."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.location = str(self.path)

    def load(self) -> dict[str, Any] | None:
        return load_checkpoint(self.path) if self.path.is_file() else None

    def save(self, payload: dict[str, Any]) -> None:
        save_checkpoint(self.path, payload)

    def delete(self) -> None:
        self.path.unlink(missing_ok=True)


class S3StateStore:
    """A state object under an ``s3://bucket/prefix`` (any S3-compatible store; credentials from the env)."""

    def __init__(self, url: str) -> None:
        from transferops.data.s3 import client, split_url

        self.bucket, prefix = split_url(url.rsplit("/", 1)[0])
        self.key = prefix + url.rsplit("/", 1)[1]
        self.location = url
        self.s3 = client()

    def _errors(self):
        from botocore.exceptions import BotoCoreError, ClientError

        return (BotoCoreError, ClientError)

    def load(self) -> dict[str, Any] | None:
        try:
            with tempfile.TemporaryDirectory(prefix="transferops-state-") as tmp:
                local = Path(tmp) / "state.pt"
                try:
                    self.s3.download_file(self.bucket, self.key, str(local))
                except self._errors() as exc:
                    if _code(exc) in ("404", "NoSuchKey", "NotFound"):
                        return None
                    raise
                return load_checkpoint(local)
        except self._errors() as exc:
            raise CheckpointError(f"{self.location}: cannot read training state ({_code(exc)}: {exc})") from None

    def save(self, payload: dict[str, Any]) -> None:
        tmp_key = f"{self.key}.tmp-{uuid.uuid4().hex}"
        try:
            with tempfile.TemporaryDirectory(prefix="transferops-state-") as tmp:
                local = Path(tmp) / "state.pt"
                torch.save(payload, local)
                self.s3.upload_file(str(local), self.bucket, tmp_key)
            self.s3.copy_object(Bucket=self.bucket, Key=self.key, CopySource={"Bucket": self.bucket, "Key": tmp_key})
            self.s3.delete_object(Bucket=self.bucket, Key=tmp_key)
        except self._errors() as exc:
            raise CheckpointError(f"{self.location}: cannot save training state ({_code(exc)}: {exc})") from None

    def delete(self) -> None:
        try:
            self.s3.delete_object(Bucket=self.bucket, Key=self.key)
        except self._errors() as exc:
            log.warning("%s: could not delete finished training state (%s)", self.location, exc)


def _code(exc: Exception) -> str:
    return str(getattr(exc, "response", {}).get("Error", {}).get("Code", type(exc).__name__))


def state_location(state_uri: str, artifacts_dir: str, stage: str, run_key: str | None = None) -> str:
    """``<state_uri or artifacts_dir/state>[/<run key>]/<stage>/state.pt``."""
    run_key = os.environ.get(RUN_KEY_ENV, "") if run_key is None else run_key
    root = (state_uri or str(Path(artifacts_dir) / "state")).rstrip("/")
    parts = [root] + ([_safe(run_key)] if run_key else []) + [stage, "state.pt"]
    return "/".join(parts)


def _safe(key: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "-" for ch in key)


def open_state_store(location: str) -> StateStore:
    """The store for a location from :func:`state_location`."""
    if location.startswith("s3://"):
        return S3StateStore(location)
    return LocalStateStore(Path(location))
