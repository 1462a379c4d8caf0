"""The schedule gate, between ingest and training: should this run retrain? (``schedule.retrain_when``;
:mod:`transferops.evaluation.shift`).

Every runtime asks here (:mod:`transferops.stages.graph`): ``transferops run --direct`` stops with one line
when the answer is no, the Kubeflow DAG skips its training branch, and under ``dvc repro`` the stages after
this one keep their previous outputs. The decision is written to ``artifacts/schedule/decision.json``; when
something was measured (any setting but ``always``), it and the shift are logged to MLflow (a ``schedule`` run
nested under the pipeline run).
"""

from __future__ import annotations

from transferops.config import Config
from transferops.evaluation.shift import decide_retrain, record
from transferops.paths import Paths
from transferops.stages.common import StageResult, staged_output, write_json

GATE_FILE = "gate.json"
"""The decision alone (``{"retrain": ...}``): what the stages after the gate depend on under DVC, so that they
re-run when the answer changes, not when a measured figure in ``decision.json`` does."""


def run(cfg: Config, tracker) -> StageResult:
    paths = Paths.from_config(cfg)
    with staged_output(paths.artifact("decision")) as out:
        if cfg.schedule.retrain_when == "always":  # nothing to measure: no registry access, no run
            decision = decide_retrain(cfg, paths.target_data)
            write_json(out / paths.decision.name, decision.to_dict())
        else:
            with tracker.stage_run("schedule", cfg) as t:
                decision = decide_retrain(cfg, paths.target_data)
                record(decision, t, out / paths.decision.name)
        write_json(out / GATE_FILE, {"retrain": decision.retrain})
    return StageResult("schedule", {"decision": str(paths.decision)}, decision.to_dict())
