"""The gate on a real MLflow store: a champion of another task is never re-scored or replaced; what a stage
reports about a model comes from the model's own lineage."""

import json
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from transferops.config import config_from_dict
from transferops.errors import CheckpointError
from transferops.paths import Paths
from transferops.registry.gate import model_name
from transferops.stages import evaluate, finetune, ingest, pretrain, register
from transferops.tracking import MlflowTracker


def _letters(root: Path, n: int = 8) -> Path:
    """A 3-class target whose images carry no class signal: any model is at chance on it."""
    rng = np.random.default_rng(0)
    for c in ("a", "b", "c"):
        (root / c).mkdir(parents=True)
        for i in range(n):
            Image.fromarray(rng.integers(0, 255, (16, 16), dtype=np.uint8)).save(root / c / f"{i}.png")
    return root


def _run(cfg, *stages) -> None:
    for stage in stages:
        stage.run(cfg)


def test_a_letters_model_cannot_take_champion_from_a_digits_model(tiny_cfg, tmp_path):
    import mlflow

    # the tiny model's INT8 export gives fp32's class on 95-96 % of its test images (it moves with the tiny
    # model's training): ship it at 90 % to check that what predict runs is what was checked (the refusal and its
    # card are in tests/unit/test_quantize.py)
    digits = replace(tiny_cfg, register=replace(tiny_cfg.register, int8_min_agreement=0.90))
    _run(digits, ingest, pretrain, finetune)
    evaluate.run(digits, MlflowTracker(digits.mlflow))
    register.run(digits, MlflowTracker(digits.mlflow))
    name = model_name(digits)
    client = mlflow.MlflowClient()
    assert str(client.get_model_version_by_alias(name, "champion").version) == "1"
    _check_int8_and_review(client, name, digits)

    # a chance-level letters model, trained from the same source model, gated under the digits name
    data = tiny_cfg.to_dict()
    data["base"]["artifacts_dir"] = str(tmp_path / "letters")
    data["ingest"]["target"] = {
        "kind": "image_folder",
        "path": str(_letters(tmp_path / "hand-letters")),
        "split": {"test_fraction": 0.25, "val_per_class": 1, "labels_per_class": 1},
    }
    letters = config_from_dict(data)
    _run(letters, ingest)
    shutil.copytree(Paths.from_config(digits).stage("pretrain"), Paths.from_config(letters).stage("pretrain"))
    _run(letters, finetune, evaluate)
    params = tmp_path / "letters.json"  # the CLI reads YAML; JSON is YAML
    params.write_text(json.dumps(letters.to_dict()))
    r = subprocess.run(
        [sys.executable, "-m", "transferops.cli", "register", "--params", str(params)]
        + ["--set", f"register.model_name={name}", "--set", "register.min_accuracy=0.0"],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,
    )
    assert r.returncode == 2, r.stderr[-2000:]
    err = r.stderr.strip().splitlines()[-1]
    assert err.startswith("error: ") and "Traceback" not in r.stderr
    assert "classes [0, 1, 2, 3, 4, 5, 6, 7, 8, 9] on 1x28x28 images" in err and "classes [a, b, c]" in err
    assert len(client.search_model_versions(f"name = '{name}'")) == 1  # nothing registered, nothing moved
    assert str(client.get_model_version_by_alias(name, "champion").version) == "1"
    assert not Paths.from_config(letters).stage("register").exists()

    # by default the letters model gets a name of its own, derived from its target
    register.run(replace(letters, register=replace(letters.register, min_accuracy=0.0)), MlflowTracker(letters.mlflow))
    assert model_name(letters) == "transferops-hand-letters"
    assert str(client.get_model_version_by_alias("transferops-hand-letters", "champion").version) == "1"


def _check_int8_and_review(client, name: str, cfg) -> None:
    """The champion's INT8 export (or the reason it has none) and the evaluate run's review panels, by number."""
    from transferops.serving.predict import load_classifier
    from transferops.serving.runtime import ONNX_INT8_REASON_TAG, ONNX_INT8_URI_TAG

    mv = client.get_model_version_by_alias(name, "champion")
    figures = client.get_run(mv.run_id).data.metrics
    evaluated = json.loads((Paths.from_config(cfg).stage("evaluate") / "metrics.json").read_text())
    n = evaluated["n_test"]
    assert figures["int8_n_images"] == n and figures["int8_n_calibration"] > 0
    assert abs(figures["fp32_accuracy"] - evaluated["accuracy"]) <= 1 / n  # the fp32 export is the evaluated model
    assert figures["int8_accuracy_drop"] == pytest.approx(figures["fp32_accuracy"] - figures["int8_accuracy"])
    reg = cfg.register
    shipped = (
        figures["int8_accuracy_drop"] <= reg.int8_max_drop
        and figures["int8_argmax_agreement"] >= reg.int8_min_agreement
    )
    assert (ONNX_INT8_URI_TAG in mv.tags) is shipped and (ONNX_INT8_REASON_TAG in mv.tags) is not shipped
    assert "## INT8 export" in mv.description
    assert ("**Not shipped**" in mv.description) is not shipped
    assert shipped, mv.tags.get(ONNX_INT8_REASON_TAG)
    # the file predict runs is the file that was checked: the same agreement with fp32, image for image
    inputs = register.load_inputs(Paths.from_config(cfg))
    x = register.EvalImages(inputs.test, inputs.model.input_size)[:]
    fp32 = load_classifier(f"models:/{name}@champion", "onnx").logits(x).argmax(1)
    int8 = load_classifier(f"models:/{name}@champion", "onnx-int8").logits(x).argmax(1)
    assert float((fp32 == int8).mean()) == pytest.approx(figures["int8_argmax_agreement"])
    int8_tagged = float(mv.tags["transferops.onnx_int8_argmax_agreement"])
    assert int8_tagged == figures["int8_argmax_agreement"] >= reg.int8_min_agreement

    review = json.loads((Paths.from_config(cfg).stage("evaluate") / "review" / "review.json").read_text())
    rows = {r["class"]: r for r in review["per_class"]}
    assert sum(r["n"] for r in rows.values()) == n
    for c, acc in evaluated["per_class_accuracy"].items():
        assert rows[c]["recall"] == pytest.approx(acc)
        assert f"| {c} | {rows[c]['n']} | {100 * acc:.1f}% |" in mv.description
    eval_run = review["run_id"]
    assert (
        f"#/experiments/{review['experiment_id']}/runs/{eval_run}/artifactPath/review/saliency_0.png" in mv.description
    )
    logged = {a.path: a.file_size for a in client.list_artifacts(eval_run, "review")}
    assert set(review["saliency_panels"].values()) <= set(logged)
    assert all(size < 200_000 for size in logged.values())  # small PNGs


def test_evaluate_reports_the_checkpoints_method_not_the_command_lines(tiny_cfg):
    probe = replace(tiny_cfg, finetune=replace(tiny_cfg.finetune, method="linear_probe"))
    _run(probe, ingest, pretrain, finetune)
    asked = replace(tiny_cfg, finetune=replace(tiny_cfg.finetune, method="kd"))
    metrics = evaluate.run(asked).metrics
    assert metrics["method"] == "linear_probe" and metrics["labels_per_class"] == 2
    assert "finetune.method=kd" in metrics["provenance_note"] and "linear_probe" in metrics["provenance_note"]
    result = json.loads((Paths.from_config(asked).stage("evaluate") / "result.json").read_text())
    assert result["lineage"]["method"] == "linear_probe"

    # metrics of another checkpoint are refused by register; a model trained on other data by evaluate
    _run(replace(probe, finetune=replace(probe.finetune, epochs=1)), finetune)
    with pytest.raises(CheckpointError, match="measured for another checkpoint"):
        register.load_inputs(Paths.from_config(probe))
    other = replace(probe, base=replace(probe.base, seed=5))  # another split of the target: another version
    _run(other, ingest)
    with pytest.raises(CheckpointError, match="trained on target data version"):
        evaluate.run(other)


@pytest.mark.parametrize("floor", [0.1, 1.0])  # promoted, and refused by the accuracy floor
def test_the_cli_and_the_kubeflow_component_make_the_same_gate_decision(tiny_cfg, tmp_path, floor):
    """The register stage as the CLI/DVC runs it and as the Kubeflow component runs it (its artifacts linked
    into a workspace by ``kfp_io``), on the same inputs, each against its own registry: the same outcome."""
    from transferops.kubeflow import kfp_io

    cfg = replace(tiny_cfg, register=replace(tiny_cfg.register, min_accuracy=floor))
    _run(cfg, ingest, pretrain, finetune, evaluate)
    register.run(cfg, MlflowTracker(cfg.mlflow))
    cli = json.loads((Paths.from_config(cfg).stage("register") / "registration.json").read_text())

    data = cfg.to_dict()
    data["mlflow"]["tracking_uri"] = f"sqlite:///{tmp_path / 'kfp-mlflow.db'}"
    k = cfg.ingest.target.split.labels_per_class
    component = kfp_io.component_config(json.dumps(data), cfg.base.seed, cfg.finetune.method, k, [])
    paths = Paths.from_config(cfg)
    inputs = {
        "target_data": paths.target_data,
        "target_model": paths.stage("finetune"),
        "evaluation": paths.stage("evaluate"),
    }
    out = tmp_path / "registration-artifact"
    kfp_io.run_stage_in_workspace(
        "register", component, {n: str(p) for n, p in inputs.items()}, {"registration": str(out)}
    )
    kfp = json.loads((out / "registration.json").read_text())

    same = ("model_name", "registered", "promoted", "version", "aliases", "reason")
    assert {key: kfp[key] for key in same} == {key: cli[key] for key in same}
    assert cli["promoted"] is (floor < 1.0) and kfp["tracking_uri"] != cli["tracking_uri"]
