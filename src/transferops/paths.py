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
    "ranking": "rank",
    "decision": "schedule",
    "source_model": "pretrain",
    "target_model": "finetune",
    "baseline_model": "baseline",
    "evaluation": "evaluate",
    "registration": "register",
}
"""Pipeline artifacts (the names :data:`transferops.stages.graph.GRAPH` and the Kubeflow components use) and
the folders they are in the layout."""


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

    @property
    def baseline_model(self) -> Path:
        """The from-scratch baseline (absent when the target has no labelled images or it is switched off)."""
        return self.artifact("baseline_model") / "model.pt"

    @property
    def decision(self) -> Path:
        """The schedule's decision for this run (``retrain`` and ``reason``)."""
        return self.artifact("decision") / "decision.json"
