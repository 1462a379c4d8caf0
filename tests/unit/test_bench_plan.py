"""What the methods benchmark runs: the table's (method, k) pairs and the curve's remainder."""

from transferops.bench.methods import curve_plan, plan


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
