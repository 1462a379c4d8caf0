"""Pipeline stages: one ``run(cfg, tracker) -> StageResult`` per file, declared in :mod:`.graph`, and
:func:`run_stage` to call one by name (the CLI, the DVC stages, the kfp components, the Trainer launcher and
the benchmarks all come through here)."""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable, Iterable

from transferops.errors import ConfigError
from transferops.stages import graph

log = logging.getLogger(__name__)

STAGES = graph.NAMES
"""The pipeline's stages, in order."""
RESUMABLE = graph.RESUMABLE


def run_stage(name: str, cfg, tracker, restart: bool = False, obey_schedule: bool = False):
    """Run the stage called ``name``.

    ``restart`` discards a saved training state (resumable stages only). ``obey_schedule`` (``dvc repro``): a
    stage after the schedule gate whose decision (``artifacts/schedule/decision.json``) says this run does not
    retrain keeps its previous outputs instead of running.
    """
    stage = graph.stage(name)
    if obey_schedule and graph.gated(name):
        decision = read_decision(cfg)
        if decision is not None and not decision["retrain"]:
            return keep_outputs(stage, cfg, decision["reason"])
    module = importlib.import_module(f"transferops.stages.{name}")
    kwargs = {"restart": restart} if stage.resumable else {}
    return module.run(cfg, tracker, **kwargs)


def read_decision(cfg) -> dict | None:
    """The schedule's decision of this run, or None when the schedule has not run here."""
    from transferops.paths import Paths
    from transferops.stages.common import read_json

    path = Paths.from_config(cfg).decision
    return read_json(path) if path.is_file() else None


def keep_outputs(stage: graph.Stage, cfg, reason: str):
    """A gated stage that does not run: its previous outputs stand (there must be some where DVC tracks them)."""
    from transferops.paths import Paths
    from transferops.stages.common import StageResult

    root = Paths.from_config(cfg).root
    missing = [root / f.path for f in stage.files if not (root / f.path).exists()]
    if missing:
        raise ConfigError(
            f"{stage.name}: the schedule says no retraining ({reason}), but {missing[0]} has no earlier output "
            "to keep; run once with schedule.retrain_when=always"
        )
    log.info("%s: kept the previous outputs (no retraining: %s)", stage.name, reason)
    return StageResult(stage.name, metrics={"kept": True})


def run_pipeline(
    cfg, tracker_for: Callable[[str], object], stages: Iterable[str] = STAGES
) -> tuple[list[str], dict | None]:
    """Run ``stages`` in graph order in this process; stop after the gate when it says no retraining.

    ``tracker_for(stage)`` gives each stage its tracker. Returns the stages that ran and the gate's decision
    (None when the gate was not among them).
    """
    ran, decision, wanted = [], None, set(stages)
    for name in (n for n in STAGES if n in wanted):
        result = run_stage(name, cfg, tracker_for(name))
        ran.append(name)
        if graph.BY_NAME[name].gate:
            decision = result.metrics
            if not decision["retrain"]:
                break
    return ran, decision
