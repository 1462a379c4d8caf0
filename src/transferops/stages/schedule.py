"""Between ingest and training: should this run retrain? (``schedule.retrain_when``; :mod:`transferops.shift`).

Every adapter asks here after ingest: ``transferops run`` stops with one line when the answer is no, and the
Kubeflow DAG skips its training branch. The decision and the shift it measured are logged to MLflow (a
``schedule`` run nested under the pipeline run) and written to ``artifacts/schedule/decision.json``.
"""

from __future__ import annotations

from transferops.config import Config
from transferops.paths import Paths
from transferops.shift import decide_retrain, record
from transferops.stages.common import StageResult


def run(cfg: Config, tracker) -> StageResult:
    paths = Paths.from_config(cfg)
    if cfg.schedule.retrain_when == "always":  # nothing to measure: no registry access, no run
        decision = decide_retrain(cfg, paths.target_data)
        return StageResult("schedule", metrics=decision.to_dict())
    with tracker.stage_run("schedule", cfg) as t:
        decision = decide_retrain(cfg, paths.target_data)
        record(decision, t, paths.stage("schedule") / "decision.json")
    return StageResult("schedule", metrics=decision.to_dict(), run_id=None)
