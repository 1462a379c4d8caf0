"""The method benchmark on the tiny config: the report's format, the curve, and its MLflow runs."""

import json

import pytest


def test_methods_benchmark_report_and_mlflow_runs(tiny_cfg, tmp_path):
    import mlflow

    from transferops.tracking import MlflowTracker
    from transferops_bench import methods

    report = methods(
        tiny_cfg,
        1,
        ["full_finetune", "coral"],
        curve=(0, 2),
        out_dir=tmp_path / "reports",
        tracker=MlflowTracker(tiny_cfg.mlflow),
    )
    assert report["seeds"] == 1 and report["best_unsupervised"] == "coral"
    assert report["methods"]["full_finetune"]["labels_per_class"] == 2  # supervised: the default k
    assert report["methods"]["coral"]["labels_per_class"] == 0  # unsupervised DA: k = 0 first
    assert [(e["method"], e["labels_per_class"]) for e in report["extra"]] == [("coral", 2)]
    for entry in (*report["methods"].values(), *report["extra"]):
        assert 0.0 <= entry["accuracy_mean"] <= 1.0 and entry["seconds"] > 0 and entry["runs"] == 1
        assert list(entry["per_seed"]) == [str(tiny_cfg.base.seed)]
    assert report["baselines"]["source_only"]["labels_per_class"] == 0
    assert report["baselines"]["from_scratch"]["labels_per_class"] == 2
    curve = report["curve"]
    assert curve["labels_per_class"] == [0, 2]
    assert curve["from_scratch"][0] is None and curve["full_finetune"][0] is None and curve["coral"][0] is not None
    assert curve["full_finetune"][1] == pytest.approx(report["methods"]["full_finetune"]["accuracy_mean"])
    assert report["curve_std"]["coral"] == [0.0, 0.0]  # one seed: error bars of zero
    # the label-free criterion's pick vs the last epoch, scored offline on the test split, at k = 0
    selection = report["selection"]
    assert selection["criterion"] == "snd" and set(selection["methods"]) == {"coral"}
    assert sum(selection["methods"]["coral"][key] for key in ("better", "same", "worse")) == 1
    out = tmp_path / "reports"
    assert json.loads((out / "methods.json").read_text()) == report
    assert "| coral | 0 |" in (out / "methods.md").read_text()
    assert (out / "label_efficiency.png").read_bytes()[:4] == b"\x89PNG"

    mlflow.set_tracking_uri(tiny_cfg.mlflow.tracking_uri)
    runs = mlflow.search_runs(experiment_names=[tiny_cfg.mlflow.experiment], output_format="list")
    (parent,) = [r for r in runs if r.info.run_name == "benchmark-methods"]
    children = {r.info.run_name: r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id}
    assert set(children) == {"full_finetune", "coral", "coral@k=2", "baseline/source_only", "baseline/from_scratch"}
    assert children["coral"].data.metrics["accuracy_mean"] == pytest.approx(report["methods"]["coral"]["accuracy_mean"])
