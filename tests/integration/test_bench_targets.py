"""The user-like targets benchmark on the tiny config: each variant is trained on the same source model and
scored on the target's test split as evaluate scores it."""

import json

import pytest


def test_targets_benchmark_scores_variants_as_evaluate_does(tiny_cfg, tmp_path):
    from transferops_bench.targets import TARGETS, digits_imbalanced, run_target

    task = TARGETS["digits_imbalanced_10to1"]
    path = digits_imbalanced(tmp_path / "data" / "imb", largest=40)
    root = tmp_path / "bench"
    row = run_target(tiny_cfg, path, root, tiny_cfg.base.seed, ["full_finetune"], task)

    default = tiny_cfg.finetune.method
    assert list(row["trained"]) == [default, "full_finetune@weighted", "full_finetune@sampler"]
    assert row["trained"]["full_finetune@sampler"] == "full_finetune"
    metrics = json.loads((root / f"seed{tiny_cfg.base.seed}" / "evaluate" / "metrics.json").read_text())
    # the benchmark's own scoring of the configured method's checkpoint agrees with evaluate's
    assert row[default] == pytest.approx(metrics["accuracy"])
    assert row["balanced"][default] == pytest.approx(metrics["balanced_accuracy"])
    assert row["from_scratch"] == metrics["from_scratch_accuracy"]
    assert row["chance"] == pytest.approx(0.1) and row["n_test"] == metrics["n_test"]
    for variant in row["trained"]:
        assert 0.0 <= row[variant] <= 1.0 and 0.0 <= row["balanced"][variant] <= 1.0
        assert row["images_per_second"][variant] > 0 and row["seconds"][variant] > 0
