"""Pipeline stages: one ``run(cfg, tracker) -> StageResult`` per file, and :func:`run_stage` to call one by name."""

from __future__ import annotations

import importlib

STAGES = ("ingest", "pretrain", "finetune", "evaluate", "register")
"""The pipeline's stages, in order (``schedule`` is a check between ingest and pretrain, not a stage of its own
in DVC)."""
RESUMABLE = ("pretrain", "finetune")
RUNNABLE = (*STAGES, "schedule", "rank")


def run_stage(name: str, cfg, tracker, restart: bool = False):
    """Run the stage called ``name`` (the CLI, the DVC stages and the kfp components all come through here).

    ``restart`` discards a saved training state (pretrain and finetune only).
    """
    if name not in RUNNABLE:
        raise ValueError(f"unknown stage {name!r} (expected one of {', '.join(RUNNABLE)})")
    module = importlib.import_module(f"transferops.stages.{name}")
    kwargs = {"restart": restart} if name in RESUMABLE else {}
    return module.run(cfg, tracker, **kwargs)
