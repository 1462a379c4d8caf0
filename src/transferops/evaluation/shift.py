"""Should a scheduled run retrain? Decided right after ingest, against the current champion.

``schedule.retrain_when``:

- ``always``: train every time;
- ``data_changed``: only when the ingested target's version differs from the one the champion was trained on
  (its ``transferops.target_version`` tag);
- ``shifted``: only when the new target images differ from the champion's training images as the champion
  sees them: a logistic-regression domain classifier on the champion's features (reference vs new, 5-fold
  cross-validated ROC AUC; 0.5 = indistinguishable) at or above ``schedule.shift_auc``. The multi-kernel MMD
  between the two feature sets is recorded beside it.

The reference features are the champion's features of its own training target images, logged by the
register stage with every version (``reference/target_features.npy`` in its run). The measurement is
recorded in the run (metrics ``shift_auc``, ``shift_mmd``; a ``transferops.alert`` tag when shifted) and on the
champion's version (``transferops.last_shift``), whatever is decided.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from transferops.config import Config
from transferops.data.shards import Split, load_split, read_manifest

log = logging.getLogger(__name__)

REFERENCE_ARTIFACT = "reference/target_features.npy"
TRAINING_SPLITS = ("labeled", "unlabeled", "val")


@dataclass(frozen=True)
class RetrainDecision:
    retrain: bool
    reason: str
    target_version: str
    champion_version: str | None = None
    shift_auc: float | None = None
    shift_mmd: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def training_sample(data_dir: Path, n: int, seed: int) -> Split:
    """Up to ``n`` target images a model trains from (labelled, unlabelled and val splits; never test)."""
    parts = [load_split(data_dir, s) for s in TRAINING_SPLITS]
    images = np.concatenate([np.asarray(p.images) for p in parts if len(p)])
    labels = np.concatenate([p.labels for p in parts if len(p)])
    pick = np.sort(np.random.default_rng([seed, 0x5F1]).permutation(len(labels))[:n])
    return Split(images[pick], labels[pick])


def features(model, split: Split) -> np.ndarray:
    from transferops.models.inference import predict_features

    return predict_features(model, split)


def domain_auc(reference: np.ndarray, new: np.ndarray, seed: int = 0) -> float:
    """Cross-validated ROC AUC of a logistic regression telling reference from new features (0.5: no shift)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x = np.concatenate([reference, new]).astype(np.float64)
    y = np.r_[np.zeros(len(reference)), np.ones(len(new))]
    folds = StratifiedKFold(5, shuffle=True, random_state=seed)
    clf = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=2000))
    return float(np.mean(cross_val_score(clf, x, y, cv=folds, scoring="roc_auc")))


def mmd(reference: np.ndarray, new: np.ndarray) -> float:
    import torch

    from transferops.transfer.losses import mk_mmd

    with torch.no_grad():
        return float(mk_mmd(torch.from_numpy(reference).float(), torch.from_numpy(new).float(), [0.25, 0.5, 1, 2, 4]))


def _champion(cfg: Config):
    """(client, registered model name, champion version object) or a None version."""
    import mlflow

    from transferops.registry.aliases import current_alias
    from transferops.registry.gate import model_name

    client = mlflow.MlflowClient()
    name = model_name(cfg)
    version = current_alias(client, name, cfg.register.champion_alias)
    return client, name, (None if version is None else client.get_model_version(name, version))


def _champion_model_and_reference(client, mv):
    import mlflow

    from transferops.models.io import load_model

    ckpt = Path(mlflow.artifacts.download_artifacts(run_id=mv.run_id, artifact_path="checkpoint/model.pt"))
    ref = Path(mlflow.artifacts.download_artifacts(run_id=mv.run_id, artifact_path=REFERENCE_ARTIFACT))
    model, _ = load_model(ckpt)
    return model, np.load(ref, allow_pickle=False)


def decide_retrain(cfg: Config, target_dir: Path) -> RetrainDecision:
    """The decision for the target ingested in ``target_dir`` (see the module docstring)."""
    sched = cfg.schedule
    version = read_manifest(target_dir)["version"]
    if sched.retrain_when == "always":
        return RetrainDecision(True, "schedule.retrain_when: always", version)
    client, name, mv = _champion(cfg)
    if mv is None:
        return RetrainDecision(True, f"{name} has no {cfg.register.champion_alias} yet", version)
    trained_on = mv.tags.get("transferops.target_version")
    champ = str(mv.version)
    if sched.retrain_when == "data_changed":
        if trained_on == version:
            reason = f"target data unchanged (version {version}, the one champion v{champ} was trained on)"
            return RetrainDecision(False, reason, version, champ)
        return RetrainDecision(True, f"target data changed: {trained_on} -> {version}", version, champ)
    try:
        model, reference = _champion_model_and_reference(client, mv)
    except Exception as exc:  # a champion registered without reference features cannot be compared
        reason = f"champion v{champ} has no reference features to compare with ({str(exc).splitlines()[0][:120]})"
        return RetrainDecision(True, reason, version, champ)
    new = features(model, training_sample(target_dir, cfg.schedule.sample, cfg.base.seed))
    auc, distance = domain_auc(reference, new, cfg.base.seed), mmd(reference, new)
    client.set_model_version_tag(
        name, champ, "transferops.last_shift", f"target {version}: domain AUC {auc:.3f}, MMD {distance:.4f}"
    )
    measured = f"domain AUC {auc:.3f} vs champion v{champ}'s training images (MMD {distance:.4f})"
    if auc >= sched.shift_auc:
        return RetrainDecision(True, f"target shifted: {measured} >= {sched.shift_auc}", version, champ, auc, distance)
    reason = f"target not shifted: {measured} < schedule.shift_auc {sched.shift_auc}"
    return RetrainDecision(False, reason, version, champ, auc, distance)


def record(decision: RetrainDecision, tracker, out: Path | None = None) -> None:
    """Log the decision (metrics, tags, an alert when shifted) and write it to ``out`` (JSON) if given."""
    metrics = {k: getattr(decision, k) for k in ("shift_auc", "shift_mmd") if getattr(decision, k) is not None}
    tags = {"transferops.retrain": str(decision.retrain).lower(), "transferops.retrain_reason": decision.reason}
    if decision.reason.startswith("target shifted"):
        tags["transferops.alert"] = decision.reason
    tracker.log_metrics(metrics)
    tracker.set_tags(tags)
    tracker.log_to_parent(metrics, tags)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(decision.to_dict(), indent=2) + "\n")
    log.info("schedule: %s: %s", "retrain" if decision.retrain else "no retraining", decision.reason)
