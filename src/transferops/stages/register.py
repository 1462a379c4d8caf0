"""Stage 5, register: log the transferred model to MLflow, register it, and gate its promotion.

The decision itself is :func:`transferops.registry.gate.register_candidate` (the same for every adapter).
This stage gathers its inputs from the artifacts, never from the command line's config: the candidate's
accuracy is the one ``evaluate`` measured for this exact checkpoint (checked by sha256), and its method,
labels and data versions come from the checkpoint's lineage.

Steps: :func:`load_inputs` -> :func:`make_candidate` -> ``register_candidate`` (logs the model only when a
version is created) -> :func:`write_outputs`. When this exact model was already registered with the same
``register`` settings by the last run in this artifacts folder, and the registry still holds that version,
:func:`unchanged_registration` ends the stage first, without loading torch or the model: a second
``make run`` costs what talking to MLflow costs, nothing more.

Output (``artifacts/register``): ``registration.json`` (model name, version or none, aliases, promoted,
reason) and ``result.json``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from transferops.config import Config, RegisterConfig
from transferops.data.shards import Split, load_split, read_manifest
from transferops.errors import CheckpointError, TrackingError
from transferops.lineage import file_sha256, lineage
from transferops.paths import Paths
from transferops.registry.gate import (
    FINGERPRINT_TAG,
    Candidate,
    GateDecision,
    GatePolicy,
    LoggedModel,
    Outcome,
    Task,
    model_name,
    outcome_dict,
    register_candidate,
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

if TYPE_CHECKING:
    from transferops.models import TransferNet

log = logging.getLogger(__name__)


def pip_requirements() -> list[str]:
    """What serving the model needs (explicit: skips MLflow's slow inference of requirements)."""
    import mlflow
    import torch
    import torchvision

    return [
        f"torch=={torch.__version__.split('+')[0]}",
        f"torchvision=={torchvision.__version__.split('+')[0]}",
        f"mlflow=={mlflow.__version__}",
        f"numpy=={np.__version__}",
    ]


def score_uri(model_uri: str, test: Split, metric: str = "accuracy") -> float:
    """``metric`` (:data:`~transferops.evaluation.metrics.GATE_METRICS`) on ``test`` of a model loaded from
    MLflow (the torch flavour).

    The logged model is a torch.export program: already an inference graph, it refuses ``.eval()``, so it
    is called as is.
    """
    import mlflow.pytorch
    import torch

    from transferops.data.batches import iterate

    model = mlflow.pytorch.load_model(model_uri, map_location="cpu")
    with torch.no_grad():
        preds = np.concatenate([model(x).argmax(1).numpy() for x, _ in iterate(test, 512)])
    from transferops.evaluation.metrics import GATE_METRICS

    return GATE_METRICS[metric](np.asarray(test.labels), preds)


@dataclass
class RegisterInputs:
    """Everything the stage reads, checked to belong together."""

    model: TransferNet
    checkpoint: dict[str, Any]
    model_path: Path
    model_sha256: str
    metrics: dict[str, Any]
    classes: list[str]
    test: Split
    target_dir: Path
    review: dict[str, Any] | None = None
    """evaluate's reviewer evidence (``review/review.json``): the per-class table and where its panels are."""


def load_inputs(paths: Paths) -> RegisterInputs:
    """The finetuned checkpoint, the evaluate metrics measured for it, and the target test split.

    Metrics of another checkpoint (evaluate not re-run after finetune) are refused: the gate would compare
    the wrong model's accuracy.
    """
    from transferops.models.io import load_model

    model, ckpt = load_model(paths.target_model)
    sha = file_sha256(paths.target_model)
    evaluate_dir = paths.stage("evaluate")
    try:
        metrics = read_json(evaluate_dir / "metrics.json")
        evaluated = read_json(evaluate_dir / "result.json")["lineage"].get("model_sha256")
    except FileNotFoundError as exc:
        raise CheckpointError(f"{exc.filename}: not found (run `transferops evaluate` first)") from None
    if evaluated != sha:
        raise CheckpointError(
            f"{evaluate_dir / 'metrics.json'}: measured for another checkpoint (sha256 {str(evaluated)[:12]}..., "
            f"{paths.target_model} is {sha[:12]}...); re-run `transferops evaluate`"
        )
    classes = read_manifest(paths.target_data)["classes"]
    if classes != ckpt["classes"]:
        raise CheckpointError(
            f"{paths.target_model}: trained for classes {ckpt['classes']}, but {paths.target_data} has {classes}"
        )
    from transferops.evaluation.review import ARTIFACT_DIR, REVIEW_FILE  # (torch: not on the unchanged path)

    test = load_split(paths.target_data, "test")
    review_file = evaluate_dir / ARTIFACT_DIR / REVIEW_FILE
    review = read_json(review_file) if review_file.is_file() else None
    return RegisterInputs(model, ckpt, paths.target_model, sha, metrics, classes, test, paths.target_data, review)


def make_candidate(cfg: Config, inputs: RegisterInputs, pipeline_run_id: str | None) -> tuple[Candidate, dict]:
    """The candidate the gate sees, and the lineage recorded with it (from the checkpoint, not from params)."""
    ckpt = inputs.checkpoint
    lin = {
        **{k: v for k, v in ckpt["lineage"].items() if v is not None},
        "model_sha256": inputs.model_sha256,
        "pipeline_run_id": pipeline_run_id,
        "register_params_hash": cfg.section_hash("register"),
    }
    task = Task(tuple(inputs.classes), (ckpt["in_channels"], ckpt["image_size"], ckpt["image_size"]))
    tags = {f"transferops.{k}": str(v) for k, v in lin.items() if v is not None}
    if inputs.metrics.get("negative_transfer"):
        tags["transferops.negative_transfer"] = inputs.metrics["negative_transfer"]
    metric = cfg.register.metric
    if metric not in inputs.metrics:
        raise CheckpointError(
            f"evaluate metrics.json has no {metric!r} (register.metric): re-run `transferops evaluate`"
        )
    return Candidate(task, float(inputs.metrics[metric]), fingerprint(cfg, inputs.model_sha256), tags), lin


def fingerprint(cfg: Config, model_sha256: str) -> str:
    """Identifies a registration: this model file under these ``register`` settings."""
    return f"{model_sha256[:32]}-{cfg.section_hash('register')}"


def unchanged_registration(cfg: Config, paths: Paths, tracker: MlflowTracker) -> dict[str, Any] | None:
    """The last registration in this artifacts folder when it holds nothing new to do, else None.

    Nothing is new when ``registration.json`` registered a version of this same model file (sha256) with the
    same ``register`` settings, in the same MLflow, evaluate measured this same file, and the registry still
    holds that version with that fingerprint (a wiped or other registry registers again). Reads no model and
    imports no torch.
    """
    from mlflow.exceptions import MlflowException

    try:
        previous = read_json(paths.stage("register") / "registration.json")
        evaluated = read_json(paths.stage("evaluate") / "result.json")["lineage"].get("model_sha256")
        sha = file_sha256(paths.target_model)
    except (FileNotFoundError, KeyError, ValueError):
        return None
    name, version = previous.get("model_name"), previous.get("version")
    same = (
        version is not None
        and evaluated == sha
        and previous.get("fingerprint") == fingerprint(cfg, sha)
        and name == model_name(cfg)
        and previous.get("tracking_uri") == safe_uri(tracker.uri)
    )
    if not same:
        return None
    try:
        mv = tracker.mlflow.MlflowClient().get_model_version(name, str(version))
    except MlflowException:
        return None
    if mv.tags.get(FINGERPRINT_TAG) != previous["fingerprint"]:
        return None
    return {**previous, "aliases": sorted(mv.aliases)}


def write_unchanged(cfg: Config, paths: Paths, previous: dict[str, Any], tracker: MlflowTracker) -> StageResult:
    """Record that this run registered and promoted nothing: the model is already ``previous``'s version."""
    name, version = previous["model_name"], str(previous["version"])
    reason = f"unchanged: this model with these register settings is already version {version}"
    registered = previous.get("registered_by") or {k: previous.get(k) for k in ("run_id", "promoted", "reason")}
    registration = {
        **previous,
        "unchanged": True,
        "promoted": False,
        "reason": reason,
        "retried": False,
        "registered_by": registered,  # the run that registered the version, and what its gate decided
        "run_id": tracker.run_id,
    }
    tags = {"transferops.model_name": name, "transferops.model_version": version}
    tracker.log_to_parent({"promoted": 0.0}, {**tags, "transferops.registration": "unchanged"})
    tracker.set_tags({**tags, "transferops.promoted": "false", "transferops.gate_reason": reason})
    try:
        lin = read_json(paths.stage("register") / "result.json").get("lineage", {})
    except FileNotFoundError:
        lin = {}
    result = StageResult(
        "register",
        {"registration": str(paths.stage("register") / "registration.json")},
        {"version": version, "promoted": False, "unchanged": True},
        tracker.run_id,
        lin,
    )
    with staged_output(paths.stage("register")) as out:  # read everything first: this replaces the folder
        write_json(out / "registration.json", registration)
        save_resolved_config(cfg, out)
        write_json(out / "result.json", result.to_file())
    log.info("register: %s version %s, aliases %s: %s", name, version, registration["aliases"], reason)
    return result


def _eval_images(inputs: RegisterInputs, n: int) -> np.ndarray:
    """The first ``n`` test images as the network sees them (float32, centre-cropped to its input size)."""
    import torch

    from transferops.data.augment import eval_transform

    x = torch.from_numpy(np.asarray(inputs.test.images[:n])).float() / 255.0
    return eval_transform(x, inputs.model.input_size).numpy()


CALIBRATION_IMAGES = 256
"""Target training images (labelled and unlabelled splits, never test) the INT8 export is calibrated on."""
CALIBRATION_SPLITS = ("labeled", "unlabeled")


def calibration_images(inputs: RegisterInputs, n: int = CALIBRATION_IMAGES) -> np.ndarray:
    """Up to ``n`` target images the model trained from, as the network sees them, drawn with the run's seed."""
    import torch

    from transferops.data.augment import eval_transform

    parts = [np.asarray(s.images) for s in (load_split(inputs.target_dir, k) for k in CALIBRATION_SPLITS) if len(s)]
    if not parts:
        return np.empty((0, *inputs.test.images.shape[1:]), dtype=np.float32)
    images = np.concatenate(parts)
    seed = inputs.checkpoint["config"]["base"]["seed"]
    pick = np.sort(np.random.default_rng([seed, 0x18]).permutation(len(images))[:n])
    x = torch.from_numpy(images[pick]).float() / 255.0
    return eval_transform(x, inputs.model.input_size).numpy()


class EvalImages:
    """A split's images as the network sees them (float32, centre-cropped), read only for the slice asked:
    the INT8 check walks the whole test split without holding it in memory."""

    def __init__(self, split: Split, input_size: int) -> None:
        self.split, self.input_size = split, input_size

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, rows: slice) -> np.ndarray:
        import torch

        from transferops.data.augment import eval_transform

        idx = np.arange(len(self.split))[rows]
        x = torch.from_numpy(np.asarray(self.split.images[idx])).float() / 255.0
        return eval_transform(x, self.input_size).numpy()


def log_model(
    inputs: RegisterInputs, tracker: MlflowTracker, reg: RegisterConfig, check_images: int = 512
) -> LoggedModel:
    """Log the model (torch flavour, signature, input example, explicit requirements), its checkpoint, its
    ONNX export, checked against PyTorch on the test images (an export that disagrees vetoes promotion), and
    its INT8 export when that loses at most ``reg.int8_max_drop`` test accuracy against the fp32 export and
    agrees with it on at least ``reg.int8_min_agreement`` of the test images (else the version ships fp32
    only; ``LoggedModel.int8`` holds the figures either way)."""
    import tempfile

    import mlflow.pytorch
    import torch
    from mlflow.models import infer_signature

    from transferops.serving.onnx_export import log_onnx
    from transferops.serving.quantize import log_int8
    from transferops.serving.runtime import ONNX_FILE

    images = _eval_images(inputs, check_images)
    example = images[:4]
    with torch.no_grad():
        signature = infer_signature(example, inputs.model(torch.from_numpy(example)).numpy())
    info = mlflow.pytorch.log_model(
        inputs.model, name="model", signature=signature, input_example=example, pip_requirements=pip_requirements()
    )
    tracker.log_artifact(inputs.model_path, "checkpoint")
    c, size = inputs.checkpoint["in_channels"], images.shape[-1]
    with tempfile.TemporaryDirectory(prefix="transferops-register-") as tmp:
        onnx = log_onnx(inputs.model, c, size, images, classes=inputs.classes, workdir=Path(tmp))
        int8 = log_int8(
            Path(tmp) / ONNX_FILE,
            calibration_images(inputs),
            EvalImages(inputs.test, inputs.model.input_size),
            inputs.test.labels,
            reg.int8_max_drop,
            reg.int8_min_agreement,
            signature_example=example,
        )
    log_reference_features(inputs, tracker)
    tracker.log_metrics({"onnx_max_abs_diff": onnx.max_abs_diff, "onnx_argmax_agreement": onnx.argmax_agreement})
    tracker.log_metrics(int8.metrics)
    veto = None
    if not onnx.agrees():
        veto = (
            f"ONNX export disagrees with PyTorch (max |diff| {onnx.max_abs_diff:.2e}, argmax agreement "
            f"{onnx.argmax_agreement:.4f} on {onnx.n_images} test images)"
        )
    return LoggedModel(info.model_uri, info.model_id, {**onnx.tags, **int8.tags}, veto, int8)


def log_reference_features(inputs: RegisterInputs, tracker: MlflowTracker, n: int = 512) -> None:
    """This model's features of its own training target images, kept with the version: what a scheduled run
    compares new target data with (``schedule.retrain_when: shifted``)."""
    import tempfile

    from transferops.evaluation.shift import REFERENCE_ARTIFACT, features, training_sample

    sample = training_sample(inputs.target_dir, n, seed=inputs.checkpoint["config"]["base"]["seed"])
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / Path(REFERENCE_ARTIFACT).name
        np.save(path, features(inputs.model, sample), allow_pickle=False)
        tracker.log_artifact(path, str(Path(REFERENCE_ARTIFACT).parent))


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"


def _points(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:+.1f} points"


def _labels(k: Any) -> str:
    return "all" if k is None else f"{k} labelled target image{'' if k == 1 else 's'} per class"


def with_warnings(decision: GateDecision, metrics: dict[str, Any]) -> GateDecision:
    """The decision with evaluate's negative-transfer warning appended to its reason (the gate decides on
    accuracy; the warning says why a person should look before serving the model)."""
    note = metrics.get("negative_transfer")
    return replace(decision, reason=f"{decision.reason}; WARNING {note}") if note else decision


def model_card(name: str, inputs: RegisterInputs, lin: dict[str, Any], decision: GateDecision, int8: Any = None) -> str:
    """Markdown description of a model version: a one-line summary (what the versions table shows), then
    data, method, results, the per-class table with links to evaluate's saliency and confusion panels, the
    gate's decision, the INT8 export's check (``int8``: an :class:`~transferops.serving.quantize.Int8Export`,
    or None when none was made), intended use and limits."""
    from transferops.evaluation.review import card_lines

    m, ckpt = inputs.metrics, inputs.checkpoint
    c, size = ckpt["in_channels"], ckpt["image_size"]
    src = ckpt["config"]["ingest"]["source"]["kind"]
    tgt = ckpt["config"]["ingest"]["target"]["kind"]
    method, k = lin.get("method", m.get("method")), lin.get("labels_per_class", m.get("labels_per_class"))
    rows = [
        ("accuracy", _pct(m["accuracy"])),
        ("balanced accuracy", _pct(m.get("balanced_accuracy"))),
        ("macro-F1", _pct(m["macro_f1"])),
        ("ECE (calibration error)", f"{m['ece']:.4f}"),
        ("source-only baseline", _pct(m.get("source_only_accuracy"))),
        ("negative transfer", m.get("negative_transfer") or "not detected"),
        ("from-scratch baseline", _pct(m.get("from_scratch_accuracy"))),
        ("transfer gain (vs from-scratch)", _points(m.get("transfer_gain"))),
        ("test images", str(m["n_test"])),
    ]
    champion = (
        "no champion yet"
        if decision.champion_version is None
        else f"champion v{decision.champion_version} re-scored now on this run's test split: "
        f"{_pct(decision.champion_accuracy)}"
    )
    decision = with_warnings(decision, m)
    warning = [f"**Warning: {m['negative_transfer']}.**", ""] if m.get("negative_transfer") else []
    lines = [
        f"{method}, {_labels(k)}: {_pct(m['accuracy'])} on {m['n_test']} target test images "
        f"({_points(m.get('transfer_gain'))} over from-scratch)",
        "",
        *warning,
        "## Training",
        f"Transferred with **{method}** from a `{ckpt['model']['name']}` pretrained on the source domain "
        f"(`{src}`, version `{lin.get('source_version')}`) to the target domain (`{tgt}`, version "
        f"`{lin.get('target_version')}`) with {_labels(k)}.",
        "",
        "## Results on the target test split",
        "| metric | value |",
        "|---|---|",
        *(f"| {key} | {value} |" for key, value in rows),
        "",
        *([*card_lines(inputs.review), ""] if inputs.review else []),
        "## Gate",
        f"{'Promoted to champion' if decision.promote else 'Not promoted'}: {decision.reason}.",
        "",
        f"The gate compares models on the same images: {champion}. A champion's figure here can differ from the "
        "accuracy on its own card, which was measured on the test split of its own run.",
        "",
        *([*int8.card(), ""] if int8 is not None else []),
        "## Intended use",
        f"Classifying {size}x{size} {'grey' if c == 1 else 'RGB'} images into the classes "
        f"{', '.join(inputs.classes)}. Input: float32 tensor (N, {c}, {size}, {size}) in [0, 1]; output: logits.",
        "",
        "## Known limits",
        "Scored on a held-out split of the target domain only; images unlike the target domain "
        "(other styles, sizes, classes) are out of scope.",
        "",
        f"Lineage: git `{lin.get('git_sha')}`, params hash `{lin.get('params_hash')}`, model sha256 "
        f"`{inputs.model_sha256[:16]}`.",
    ]
    if m.get("provenance_note"):
        lines += ["", f"Note: {m['provenance_note']}"]
    return "\n".join(lines)


def registered_model_description(name: str, task: Task) -> str:
    """What the registered model is, how its versions are made and gated, and where the alias history is."""
    return "\n".join(
        [
            f"`{name}`: image classifier for {task.describe()}, trained by the transferops pipeline "
            "(ingest -> pretrain on a source domain -> transfer to this target domain -> evaluate -> register).",
            "",
            "Each version's description is its model card and its tags its lineage (git sha, params hash, "
            "dataset versions, method). Aliases: `champion` is the version to serve; it moves only when the gate "
            "passes (accuracy >= register.min_accuracy and >= the champion re-scored on the same test split + "
            "register.min_delta) or by hand. `challenger` is the newest candidate.",
            "",
            "Every gate decision and alias move is a `transferops.event.*` tag of this model: "
            f"`transferops registry history {name}` prints them; `transferops registry rollback {name}` moves "
            "champion back.",
        ]
    )


def write_outputs(
    cfg: Config,
    paths: Paths,
    name: str,
    outcome: Outcome,
    tracker: MlflowTracker,
    lin: dict[str, Any],
    metrics: dict[str, Any],
    fingerprint: str | None = None,
) -> StageResult:
    """``registration.json``, ``result.json`` and the register run's tags and metrics (the gate's reason with
    evaluate's negative-transfer warning, if any)."""
    outcome = replace(outcome, decision=with_warnings(outcome.decision, metrics))
    registration = {
        **outcome_dict(name, outcome),
        "tracking_uri": safe_uri(tracker.uri),
        "run_id": tracker.run_id,
        "fingerprint": fingerprint,
    }
    d = outcome.decision
    tracker.log_metrics({"candidate_accuracy": d.candidate_accuracy})
    tracker.log_to_parent(
        {"promoted": float(d.promote)},
        {"transferops.model_name": name, "transferops.model_version": outcome.version or "none"},
    )
    tracker.set_tags(
        {
            "transferops.model_name": name,
            "transferops.model_version": outcome.version or "none",
            "transferops.promoted": str(d.promote).lower(),
            "transferops.gate_reason": d.reason,
        }
    )
    with staged_output(paths.stage("register")) as out:
        write_json(out / "registration.json", registration)
        save_resolved_config(cfg, out)
        result = StageResult(
            "register",
            {"registration": str(paths.stage("register") / "registration.json")},
            {"version": outcome.version, "promoted": d.promote},
            tracker.run_id,
            lin,
        )
        write_json(out / "result.json", result.to_file())
    return result


def run(cfg: Config, tracker: MlflowTracker) -> StageResult:
    """Log, register, alias and gate the finetuned model."""
    if not isinstance(tracker, MlflowTracker):
        raise TrackingError("register: needs an MLflow tracker (the model registry lives in MLflow)")
    import mlflow

    paths = Paths.from_config(cfg)
    previous = unchanged_registration(cfg, paths, tracker)
    if previous is not None:
        with tracker.stage_run("register", cfg) as t:  # the stage ran: its run says it changed nothing
            return write_unchanged(cfg, paths, previous, t)
    start_stage(cfg)
    inputs = load_inputs(paths)
    name = model_name(cfg)
    candidate, lin = make_candidate(cfg, inputs, tracker.parent_run_id)
    logged: list[LoggedModel] = []  # what log_model made, for the card written after it

    def log_and_keep(t: MlflowTracker) -> LoggedModel:
        logged.append(log_model(inputs, t, cfg.register))
        return logged[-1]

    with tracker.stage_run("register", cfg) as t:
        outcome = register_candidate(
            mlflow.MlflowClient(),
            name,
            candidate,
            GatePolicy.from_config(cfg.register),
            score_champion=lambda uri: score_uri(uri, inputs.test, cfg.register.metric),
            log_model=lambda: log_and_keep(t),
            describe=lambda decision: model_card(name, inputs, lin, decision, logged[-1].int8 if logged else None),
            model_description=registered_model_description(name, candidate.task),
            run_id=t.run_id,
        )
        stage_lin = lineage(cfg, model_sha256=inputs.model_sha256, model_lineage=lin)
        result = write_outputs(cfg, paths, name, outcome, t, stage_lin, inputs.metrics, candidate.fingerprint)
    d = with_warnings(outcome.decision, inputs.metrics)
    log.info(
        "register: %s %s: %s (%s)",
        name,
        f"version {outcome.version}, aliases {outcome.aliases}" if outcome.version else "nothing registered",
        "promoted to champion" if d.promote else "not promoted",
        d.reason,
    )
    return result
