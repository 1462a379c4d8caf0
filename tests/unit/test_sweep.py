"""Sweep grids: expansion, what each engine accepts, and the Katib Experiment a grid becomes."""

import pytest

from transferops.config import config_from_dict
from transferops.errors import ConfigError
from transferops.sweep import check_shared, expand, katib_manifest


def test_a_grid_expands_to_the_product_of_its_axes():
    points = expand(["finetune.method=dann,mcc", "finetune.lr=1e-3,3e-4"])
    assert points == [
        ["finetune.method=dann", "finetune.lr=1e-3"],
        ["finetune.method=dann", "finetune.lr=3e-4"],
        ["finetune.method=mcc", "finetune.lr=1e-3"],
        ["finetune.method=mcc", "finetune.lr=3e-4"],
    ]
    with pytest.raises(ConfigError, match="expected section.key=value1,value2"):
        expand(["finetune.lr"])
    with pytest.raises(ConfigError, match="no values"):
        expand(["finetune.lr="])


def test_a_kubeflow_sweep_varies_only_what_follows_the_shared_pretrain():
    check_shared(expand(["finetune.lr=1e-3,3e-4", "evaluate.ece_bins=10,20"]))
    with pytest.raises(ConfigError) as e:
        check_shared(expand(["pretrain.epochs=1,2"]))
    assert "shares one ingest and pretrain" in str(e.value) and "--engine dvc" in str(e.value)


def test_a_grid_becomes_a_katib_grid_experiment_over_the_same_values():
    from transferops.kubeflow.settings import kfp_from_dict

    cfg = config_from_dict({})
    points = expand(["finetune.method=dann,mcc", "finetune.lr=0.001,0.0003"])
    kfp = kfp_from_dict({"kfp": {"namespace": "ml"}})
    m = katib_manifest(cfg, points, "lr-method", "img:1", kfp, ["finetune.epochs=2"])
    spec = m["spec"]
    assert spec["algorithm"]["algorithmName"] == "grid" and spec["maxTrialCount"] == 4
    assert spec["objective"]["objectiveMetricName"] == "val_accuracy" and spec["objective"]["type"] == "maximize"
    spaces = {p["name"]: p["feasibleSpace"]["list"] for p in spec["parameters"]}
    assert spaces == {"finetune__method": ["dann", "mcc"], "finetune__lr": ["0.001", "0.0003"]}
    container = spec["trialTemplate"]["trialSpec"]["spec"]["template"]["spec"]["containers"][0]
    cmd = " ".join(container["command"] + container.get("args", []))
    assert cmd.startswith("transferops trial --params /opt/transferops/params.yaml --set finetune.epochs=2")
    assert "--set finetune.method=${trialParameters.finetune__method}" in cmd
