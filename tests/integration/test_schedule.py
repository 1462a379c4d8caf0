"""Scheduled runs that decide: unchanged target data skips training; shifted data retrains and the shift is
recorded on the run and on the champion's version."""

import json

import numpy as np
import yaml
from PIL import Image

from transferops.config import apply_overrides, load_config
from transferops.registry.gate import model_name


def _inverted_digits(root):
    """The sklearn digits, inverted and as PNG files: the same task, visibly other images."""
    from sklearn.datasets import load_digits

    d = load_digits()
    for i, (img, y) in enumerate(zip(d.images, d.target, strict=True)):
        if i % 3:  # a third of them is plenty
            continue
        folder = root / str(y)
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray((255 - img * 255 / 16).astype(np.uint8)).resize((16, 16)).save(folder / f"{i}.png")
    return root


def test_a_scheduled_run_skips_unchanged_data_and_retrains_on_shifted_data(tiny_params, tmp_path, capsys):
    import mlflow

    from transferops.cli import main

    data = apply_overrides(yaml.safe_load(tiny_params.read_text()), ["schedule.retrain_when=shifted"])
    tiny_params.write_text(yaml.safe_dump(data))
    cfg = load_config(tiny_params)
    name = model_name(cfg)
    mlflow.set_tracking_uri(cfg.mlflow.tracking_uri)
    client = mlflow.MlflowClient()

    assert main(["run", "--direct", "--params", str(tiny_params)]) == 0  # no champion yet: trains
    assert "transferops pipeline summary" in capsys.readouterr().out
    assert len(client.search_model_versions(f"name = '{name}'")) == 1

    assert main(["run", "--direct", "--params", str(tiny_params)]) == 0  # the same data: stops after ingest
    out = capsys.readouterr().out
    assert "transferops run: no retraining (stopped after the schedule): target not shifted: domain AUC" in out
    assert len(client.search_model_versions(f"name = '{name}'")) == 1
    decision = json.loads((tmp_path / "artifacts" / "schedule" / "decision.json").read_text())
    assert decision["retrain"] is False and decision["shift_auc"] < 0.75

    shifted = apply_overrides(
        data,
        [
            "ingest.target.kind=image_folder",
            f"ingest.target.path={_inverted_digits(tmp_path / 'inverted')}",
            "ingest.target.split.val_per_class=2",
            "register.min_accuracy=0.0",
        ],
    )
    tiny_params.write_text(yaml.safe_dump(shifted))
    assert main(["run", "--direct", "--params", str(tiny_params), "--set", f"register.model_name={name}"]) == 0
    decision = json.loads((tmp_path / "artifacts" / "schedule" / "decision.json").read_text())
    assert decision["retrain"] is True and decision["shift_auc"] >= 0.75
    assert len(client.search_model_versions(f"name = '{name}'")) == 2  # retrained and registered
    assert client.get_model_version(name, "1").tags["transferops.last_shift"].startswith("target ")
    runs = mlflow.search_runs(experiment_names=[cfg.mlflow.experiment], output_format="list")
    checks = [r for r in runs if r.data.tags.get("transferops.stage") == "schedule"]
    alerts = [r.data.tags.get("transferops.alert", "") for r in checks]
    assert len(checks) == 3 and sum(a.startswith("target shifted: domain AUC") for a in alerts) == 1
    assert sum("shift_auc" in r.data.metrics for r in checks) == 2  # the first run had no champion to compare with
