"""Pipeline stages: one ``run(cfg, tracker) -> StageResult`` per file, and :func:`run_stage` to call one by name."""

from __future__ import annotations

import importlib

STAGES = ("ingest", "pretrain", "finetune", "evaluate", "register")
RESUMABLE = ("pretrain", "finetune")


def run_stage(name: str, cfg, tracker, restart: bool = False):
    """Run the stage called ``name`` (the CLI, the DVC stages and the kfp components all come through here).

    ``restart`` discards a saved training state (pretrain and finetune only).
    """
    if name not in STAGES:
        raise ValueError(f"unknown stage {name!r} (expected one of {', '.join(STAGES)})")
    module = importlib.import_module(f"transferops.stages.{name}")
    kwargs = {"restart": restart} if name in RESUMABLE else {}
    return module.run(cfg, tracker, **kwargs)
