"""Stage 5, register: log the transferred model to MLflow, register it, and gate its promotion.

The new version always gets the ``challenger`` alias. It becomes ``champion`` when it passes the gate: its
accuracy is at least ``register.min_accuracy`` and at least the current champion's accuracy plus
``register.min_delta``, where the champion is re-scored now on the same target test split rather than
trusted from old numbers. Every version carries its lineage as tags and a model card as its description.
Registering the same trained model twice (a retried task) returns the existing version.

Output (``artifacts/register``): ``registration.json`` with model_name, version, aliases, promoted, reason.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch

from transferops.config import Config
from transferops.data.batches import iterate
from transferops.data.shards import Split, load_split, read_manifest
from transferops.errors import TrackingError
from transferops.lineage import file_sha256, lineage
from transferops.models.io import load_model
from transferops.paths import Paths
from transferops.registry.aliases import (
    CHAMPION_SEEN_TAG,
    GateDecision,
    current_alias,
    decide,
    move_alias,
    settle_champion,
)
from transferops.stages.common import (
    StageResult,
    read_json,
    save_resolved_config,
    staged_output,
    start_stage,
    write_json,
)
from transferops.tracking import MlflowTracker
from transferops.tracking.tracker import safe_uri
from transferops.training.loop import predict

log = logging.getLogger(__name__)

FINGERPRINT_TAG = "transferops.fingerprint"


def pip_requirements() -> list[str]:
    """What serving the model needs (explicit: skips MLflow's slow inference of requirements)."""
    import mlflow
    import torchvision

    return [
        f"torch=={torch.__version__.split('+')[0]}",
        f"torchvision=={torchvision.__version__.split('+')[0]}",
        f"mlflow=={mlflow.__version__}",
        f"numpy=={np.__version__}",
    ]


def score_uri(model_uri: str, test: Split) -> float:
    """Accuracy on ``test`` of a model loaded from MLflow (the torch flavour).

    The logged model is a torch.export program: already an inference graph, it refuses ``.eval()``, so it
    is called as is rather than through :func:`predict`.
    """
    import mlflow.pytorch

    model = mlflow.pytorch.load_model(model_uri, map_location="cpu")
    with torch.no_grad():
        preds = np.concatenate([model(x).argmax(1).numpy() for x, _ in iterate(test, 512)])
    return float((preds == test.labels).mean())


def model_card(
    cfg: Config, metrics: dict[str, Any], lin: dict[str, Any], classes: list[str], decision: GateDecision
) -> str:
    """Markdown description of a model version: data, method, results, intended use and limits."""

    def pct(x: float | None) -> str:
        return "n/a" if x is None else f"{100 * x:.1f}%"

    t, size, ch = cfg.ingest.target, cfg.ingest.image_size, cfg.ingest.channels
    rows = [
        ("accuracy", pct(metrics["accuracy"])),
        ("macro-F1", pct(metrics["macro_f1"])),
        ("ECE", f"{metrics['ece']:.4f}"),
        ("source-only baseline", pct(metrics.get("source_only_accuracy"))),
        ("from-scratch baseline", pct(metrics.get("from_scratch_accuracy"))),
        ("transfer gain", pct(metrics.get("transfer_gain"))),
        ("test images", str(metrics["n_test"])),
    ]
    lines = [
        f"# {cfg.register.model_name}",
        "",
        f"Transferred with **{cfg.finetune.method}** from a `{cfg.model.name}` pretrained on the source domain "
        f"(`{cfg.ingest.source.kind}`, version `{lin.get('source_version')}`) to the target domain "
        f"(`{t.kind}`, version `{lin.get('target_version')}`) with {t.split.labels_per_class} labelled "
        "target images per class.",
        "",
        "## Results on the target test split",
        "| metric | value |",
        "|---|---|",
        *(f"| {name} | {value} |" for name, value in rows),
        "",
        f"Gate: {'promoted' if decision.promoted else 'not promoted'} ({decision.reason}).",
        "",
        "## Intended use",
        f"Classifying {size}x{size} {'grey' if ch == 1 else 'RGB'} images into the classes {', '.join(classes)}. "
        f"Input: float32 tensor (N, {ch}, {size}, {size}) in [0, 1]; output: logits.",
        "",
        "## Known limits",
        "Scored on a small held-out split of the target domain only; images unlike the target domain "
        "(other styles, sizes, classes) are out of scope. Confidence is calibrated as the ECE above shows.",
        "",
        f"Lineage: git `{lin['git_sha']}`, params hash `{lin['params_hash']}`.",
    ]
    return "\n".join(lines)


def _existing_version(client, name: str, fingerprint: str):
    try:
        found = client.search_model_versions(f"name = '{name}' and tags.`{FINGERPRINT_TAG}` = '{fingerprint}'")
    except Exception:  # a registered model that does not exist yet
        return None
    return found[0] if found else None


def _score_champion(client, cfg: Config, test: Split) -> tuple[float | None, str | None]:
    name, alias = cfg.register.model_name, cfg.register.champion_alias
    version = current_alias(client, name, alias)
    if version is None:
        return None, None
    try:
        return score_uri(f"models:/{name}@{alias}", test), version
    except Exception as exc:  # an incompatible champion (other classes or image size) cannot be re-scored
        tagged = client.get_model_version(name, version).tags.get("transferops.accuracy")
        log.warning(
            "register: champion v%s could not be re-scored on this test split (%s); using its recorded accuracy %s",
            version,
            str(exc).splitlines()[0][:200],
            tagged,
        )
        return (float(tagged) if tagged else None), version


def run(cfg: Config, tracker: MlflowTracker) -> StageResult:
    """Log, register, alias and gate the finetuned model."""
    if not isinstance(tracker, MlflowTracker):
        raise TrackingError("register: needs an MLflow tracker (the model registry lives in MLflow)")
    import mlflow
    import mlflow.pytorch
    from mlflow.models import infer_signature

    start_stage(cfg)
    paths = Paths.from_config(cfg)
    reg = cfg.register
    client = mlflow.MlflowClient()
    metrics = read_json(paths.stage("evaluate") / "metrics.json")
    model, ckpt = load_model(paths.target_model)
    target = read_manifest(paths.target_data)
    test = load_split(paths.target_data, "test")
    model_sha = file_sha256(paths.target_model)
    lin = lineage(
        cfg,
        **{k: v for k, v in ckpt["lineage"].items() if k not in ("git_sha", "params_hash")},
        model_sha256=model_sha,
        pipeline_run_id=tracker.parent_run_id,
    )
    fingerprint = f"{model_sha[:32]}-{cfg.section_hash('register')}"

    with tracker.stage_run("register", cfg) as t:
        existing = _existing_version(client, reg.model_name, fingerprint)
        if existing is not None:
            log.info(
                "register: this model is already version %s of %s (retry): nothing new registered",
                existing.version,
                reg.model_name,
            )
            version = str(existing.version)
            decision = GateDecision(
                existing.tags.get("transferops.promoted") == "true",
                existing.tags.get("transferops.gate_reason", "already registered"),
                float(existing.tags.get("transferops.accuracy", "nan")),
                None,
                None,
            )
        else:
            candidate = float((predict(model, test).argmax(1) == test.labels).mean())
            champion, champion_version = _score_champion(client, cfg, test)
            decision = decide(candidate, champion, champion_version, reg.min_accuracy, reg.min_delta)
            example = test.images[:4].astype(np.float32) / 255.0
            with torch.no_grad():
                signature = infer_signature(example, model(torch.from_numpy(example)).numpy())
            info = mlflow.pytorch.log_model(
                model,
                name="model",
                signature=signature,
                input_example=example,
                pip_requirements=pip_requirements(),
            )
            t.log_artifact(paths.target_model, "checkpoint")
            tags = {
                FINGERPRINT_TAG: fingerprint,
                "transferops.accuracy": repr(candidate),  # full precision: the gate compares it
                "transferops.promoted": str(decision.promoted).lower(),
                "transferops.gate_reason": decision.reason,
                CHAMPION_SEEN_TAG: decision.champion_version or "none",
                "transferops.classes": ",".join(target["classes"]),
                **{f"transferops.{k}": str(v) for k, v in lin.items()},
            }
            mv = mlflow.register_model(info.model_uri, reg.model_name, tags=tags)
            version = str(mv.version)
            client.update_model_version(
                reg.model_name, version, description=model_card(cfg, metrics, lin, target["classes"], decision)
            )
            move_alias(client, reg.model_name, reg.challenger_alias, version, "new candidate", t.run_id)
            if decision.promoted:
                move_alias(client, reg.model_name, reg.champion_alias, version, decision.reason, t.run_id)
                settle_champion(
                    client, reg.model_name, reg.champion_alias, decision.champion_version or "none", t.run_id
                )
        aliases = sorted(client.get_model_version(reg.model_name, version).aliases)
        registration = {
            "model_name": reg.model_name,
            "version": version,
            "aliases": aliases,
            "promoted": decision.promoted,
            "reason": decision.reason,
            "candidate_accuracy": decision.candidate_accuracy,
            "champion_accuracy": decision.champion_accuracy,
            "previous_champion_version": decision.champion_version,
            "model_uri": f"models:/{reg.model_name}/{version}",
            "tracking_uri": safe_uri(tracker.uri),
            "run_id": t.run_id,
        }
        t.log_metrics({"candidate_accuracy": decision.candidate_accuracy, "promoted": float(decision.promoted)})
        t.set_tags({"transferops.model_version": version, "transferops.promoted": str(decision.promoted).lower()})
        with staged_output(paths.stage("register")) as out:
            write_json(out / "registration.json", registration)
            save_resolved_config(cfg, out)
            result = StageResult(
                "register",
                {"registration": str(paths.stage("register") / "registration.json")},
                {"version": version, "promoted": decision.promoted},
                t.run_id,
                lin,
            )
            write_json(out / "result.json", result.to_dict())
    log.info(
        "register: %s version %s, aliases %s, %s (%s)",
        reg.model_name,
        version,
        aliases,
        "promoted to champion" if decision.promoted else "not promoted",
        decision.reason,
    )
    return result
