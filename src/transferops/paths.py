"""Where each stage reads and writes, derived from ``base.artifacts_dir`` (the one place paths are named)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from transferops.config import Config


@dataclass(frozen=True)
class Paths:
    root: Path

    @classmethod
    def from_config(cls, cfg: Config) -> Paths:
        return cls(Path(cfg.base.artifacts_dir))

    def stage(self, name: str) -> Path:
        """A stage's output directory (a DVC ``out``)."""
        return self.root / name

    @property
    def source_data(self) -> Path:
        return self.root / "ingest" / "source"

    @property
    def target_data(self) -> Path:
        return self.root / "ingest" / "target"

    @property
    def source_model(self) -> Path:
        return self.root / "pretrain" / "model.pt"

    @property
    def target_model(self) -> Path:
        return self.root / "finetune" / "model.pt"
