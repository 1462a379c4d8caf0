"""What the methods benchmark runs: the table's (method, k) pairs and the curve's remainder."""

from transferops_bench.methods import curve_plan, plan


def test_unsupervised_methods_run_at_zero_and_the_default_k_unless_k0_only():
    names, uda = ["full_finetune", "dann", "shot"], ["dann", "shot"]
    assert plan(names, uda, 1) == [("full_finetune", 1), ("dann", 0), ("dann", 1), ("shot", 0), ("shot", 1)]
    assert plan(names, uda, 1, k0_only=True) == [("full_finetune", 1), ("dann", 0), ("shot", 0)]
    assert plan(names, uda, 0) == [("full_finetune", 0), ("dann", 0), ("shot", 0)]  # no duplicate at k = 0


def test_the_curve_reuses_the_table_runs():
    done = {("full_finetune", 1), ("mcc", 0)}
    wanted = curve_plan(["full_finetune", "fixmatch", "mcc"], "mcc", (0, 1, 5), done)
    assert ("mcc", 0) not in wanted and ("full_finetune", 1) not in wanted
    assert ("from_scratch", 0) not in wanted  # nothing to train from scratch on without labels
    assert set(wanted) == {
        ("from_scratch", 1),
        ("from_scratch", 5),
        ("full_finetune", 5),
        ("fixmatch", 1),
        ("fixmatch", 5),
        ("mcc", 1),
        ("mcc", 5),
    }


def test_every_seed_gets_every_curve_run_and_the_from_scratch_baseline(monkeypatch, tmp_path):
    """The curve is planned once for all seeds (planned per seed, the first seed's runs made the later seeds
    skip them); no empty rows for methods that were not run at the default k."""
    import importlib

    bench = importlib.import_module("transferops_bench.methods")
    from transferops.config import Config

    def fake_run(data, name, k):
        return bench.Run(name, k, data.seed, 0.5 + 0.01 * k, 1.0)

    monkeypatch.setattr(bench, "prepare_seed", lambda cfg, seed, ks, root: bench.SeedData(seed, cfg, {}, None))
    monkeypatch.setattr(bench, "run_method", fake_run)
    monkeypatch.setattr(bench, "score_source_only", lambda data: bench.Run("source_only", 0, data.seed, 0.4))
    monkeypatch.setattr(bench, "score_from_scratch", lambda data, k: bench.Run("from_scratch", k, data.seed, 0.3))
    monkeypatch.setattr(bench, "curve_png", lambda *a, **k: None)
    report = bench.methods(Config(), 3, ["full_finetune", "mcc"], (0, 1, 5), tmp_path, None, k0_only=True)
    assert report["baselines"]["from_scratch"]["runs"] == 3
    assert report["methods"]["mcc"]["runs"] == 3
    # k0_only: mcc at k = 1 only as the best unsupervised method on the curve, every seed; no empty rows
    assert [(e["method"], e["labels_per_class"], e["runs"]) for e in report["extra"]] == [("mcc", 1, 3)]
    assert report["curve"]["mcc"] == [0.5, 0.51, 0.55] and report["curve_std"]["mcc"] == [0.0, 0.0, 0.0]
    assert all(len(v) == 3 for v in report["curve"].values())
