"""Where each stage reads and writes, derived from ``base.artifacts_dir``: the one place the layout is named.

The Kubeflow glue maps its artifacts onto the same layout through :meth:`Paths.artifact`, so a stage reads and
writes the same relative paths whichever adapter runs it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from transferops.config import Config

ARTIFACTS = {
    "source_data": "ingest/source",
    "target_data": "ingest/target",
    "source_model": "pretrain",
    "target_model": "finetune",
    "evaluation": "evaluate",
    "registration": "register",
}
"""Pipeline artifacts (the names the Kubeflow components use) and the folders they are in the layout."""


@dataclass(frozen=True)
class Paths:
    root: Path

    @classmethod
    def from_config(cls, cfg: Config) -> Paths:
        return cls(Path(cfg.base.artifacts_dir))

    def stage(self, name: str) -> Path:
        """A stage's output directory."""
        return self.root / name

    def artifact(self, name: str) -> Path:
        """The folder a pipeline artifact (:data:`ARTIFACTS`) is in."""
        return self.root / ARTIFACTS[name]

    @property
    def source_data(self) -> Path:
        return self.artifact("source_data")

    @property
    def target_data(self) -> Path:
        return self.artifact("target_data")

    @property
    def source_model(self) -> Path:
        return self.artifact("source_model") / "model.pt"

    @property
    def target_model(self) -> Path:
        return self.artifact("target_model") / "model.pt"
