import math

import pytest
import torch

from transferops.config import TrainConfig
from transferops.data.augment import eval_transform, train_transform
from transferops.data.batches import BatchStream, Prefetcher
from transferops.errors import CheckpointError, TrainingError
from transferops.models import create_model
from transferops.models.inference import accuracy
from transferops.training.loop import Trainer, TrainRun, load_resume_state, train
from transferops.training.seeding import seed_everything
from transferops.training.state import LocalStateStore, state_location
from transferops.transfer import Strategy

from .helpers import random_split

CPU = torch.device("cpu")
CFG = TrainConfig(epochs=3, steps_per_epoch=5, batch_size=8, lr=5e-3, checkpoint_every_steps=2)


def _run(tmp_path, cfg=CFG, strategy=None, config_hash="h", restart=False, run_id=None):
    seed_everything(0)
    model = create_model("smallcnn", 3, width=8, dropout=0.2)
    data, val = random_split(48, 3), random_split(12, 3, seed=1)
    store = LocalStateStore(tmp_path / "state.pt")
    saved = load_resume_state(store, config_hash, restart)
    run = TrainRun(0, CPU, store=store, config_hash=config_hash, run_id=run_id)
    fit = train(model, strategy or Strategy(), cfg, {"labeled": data}, val, run, resume_from=saved)
    return model, fit


def test_same_seed_same_weights_and_metrics(tmp_path):
    a, fa = _run(tmp_path / "a")
    b, fb = _run(tmp_path / "b")
    assert all(torch.equal(v, b.state_dict()[k]) for k, v in a.state_dict().items())
    assert fa.history == fb.history
    assert fa.steps == 15 and not (tmp_path / "a" / "state.pt").exists()  # finished runs leave no state


class _Preempted(Exception):
    pass


class _DiesAt(Strategy):
    def __init__(self, step):
        super().__init__()
        self.calls, self.die_at = 0, step

    def loss(self, model, batches, progress):
        if self.calls == self.die_at:
            raise _Preempted
        self.calls += 1
        return super().loss(model, batches, progress)


@pytest.mark.parametrize("die_at", [3, 5, 11])  # mid-epoch after a step checkpoint, at an epoch end, later
def test_resume_after_preemption_is_bit_identical(tmp_path, die_at):
    ref, ref_fit = _run(tmp_path / "ref")
    with pytest.raises(_Preempted):
        _run(tmp_path / "run", strategy=_DiesAt(die_at))
    assert (tmp_path / "run" / "state.pt").exists()
    resumed, fit = _run(tmp_path / "run")
    assert 0 < fit.resumed_from_step <= die_at
    assert all(torch.equal(v, resumed.state_dict()[k]) for k, v in ref.state_dict().items())
    assert fit.history == ref_fit.history


def test_state_of_another_config_is_refused_unless_restart(tmp_path):
    with pytest.raises(_Preempted):
        _run(tmp_path, strategy=_DiesAt(7), config_hash="one")
    with pytest.raises(CheckpointError, match="belongs to another config"):
        _run(tmp_path, config_hash="two")
    _, fit = _run(tmp_path, config_hash="two", restart=True)
    assert fit.resumed_from_step == 0 and fit.steps == 15


class _Diverges(Strategy):
    def loss(self, model, batches, progress):
        loss, parts = super().loss(model, batches, progress)
        return (loss * math.inf if progress > 0.3 else loss), parts


def test_nan_loss_stops_and_names_the_step(tmp_path):
    with pytest.raises(TrainingError, match=r"loss is (inf|nan) at step 5 \(diverged\); last good state kept"):
        _run(tmp_path, strategy=_Diverges())
    assert (tmp_path / "state.pt").exists()


def test_training_learns_and_selects_best_epoch(tmp_path):
    model, fit = _run(tmp_path, cfg=TrainConfig(epochs=4, steps_per_epoch=6, batch_size=8, lr=1e-2))
    assert fit.best_val_accuracy == max(h["val_accuracy"] for h in fit.history)
    assert accuracy(model, random_split(12, 3, seed=1)) == pytest.approx(fit.best_val_accuracy)
    assert fit.best_val_accuracy > 0.6  # brightness separates the classes


def test_batches_are_a_function_of_step():
    data = random_split(20, 2)
    s1, s2 = BatchStream(data, 8, seed=3), BatchStream(data, 8, seed=3)
    assert s1.steps_per_pass == 2
    for step in (7, 0, 3):
        assert torch.equal(s1.batch(step)[0], s2.batch(step)[0])
    assert not torch.equal(s1.batch(0)[0], s1.batch(2)[0])  # next pass, new order
    x = s1.batch(0)[0].float() / 255
    a = train_transform(x, "affine", 0, 5)
    assert torch.equal(a, train_transform(x, "affine", 0, 5)) and not torch.equal(a, train_transform(x, "affine", 0, 6))
    # a rank's slice of the global batch: the ranks' slices together are the global batch
    halves = [BatchStream(data, 8, seed=3, rank=r, world=2).indices(5) for r in (0, 1)]
    assert sorted(torch.cat(halves).tolist()) == sorted(s1.indices(5).tolist())


def test_missing_stream_is_named():
    model = create_model("smallcnn", 3, width=8)

    class NeedsSource(Strategy):
        streams = ("labeled", "source")

    with pytest.raises(TrainingError, match=r"needs data splits \['source'\]"):
        stream = BatchStream(random_split(8, 2), 4, 0)
        Trainer(model, NeedsSource(), CFG, {"labeled": stream}, random_split(4, 2), TrainRun(0, CPU))


def test_resume_continues_the_mlflow_run_and_counts_the_whole_training_time(tmp_path):
    with pytest.raises(_Preempted):
        _run(tmp_path, strategy=_DiesAt(7), run_id="run-abc")
    state = LocalStateStore(tmp_path / "state.pt").load()
    assert state["tracking_run_id"] == "run-abc" and state["step"] == 6 and state["seconds"] > 0
    _, fit = _run(tmp_path, run_id="run-abc")
    assert fit.seconds > state["seconds"] and fit.resumed_from_step == 6


def test_prefetching_changes_nothing_but_speed(tmp_path):
    from dataclasses import replace

    a, fa = _run(tmp_path / "a", cfg=replace(CFG, prefetch=0))
    b, fb = _run(tmp_path / "b", cfg=replace(CFG, prefetch=3))
    assert fa.history == fb.history
    assert all(torch.equal(v, b.state_dict()[k]) for k, v in a.state_dict().items())

    # errors in the background thread surface in the loop, at their step
    def fetch(step):
        if step == 2:
            raise ValueError("bad shard at step 2")
        return {"x": (torch.zeros(1), torch.zeros(1))}

    with Prefetcher(fetch, 0, 5, depth=2, pin=False) as p:
        p.get(0), p.get(1)
        with pytest.raises(ValueError, match="bad shard at step 2"):
            p.get(2)


@pytest.mark.parametrize("policy", ["none", "affine", "crop_flip", "randaug", "photometric", "affine+photometric"])
def test_augmentation_policies_are_seeded_and_keep_or_crop_the_geometry(policy):
    x = torch.rand(6, 3, 20, 20)
    a = train_transform(x, policy, seed=1, step=4, input_size=16)
    assert a.shape == (6, 3, 16, 16) and a.min() >= 0 and a.max() <= 1
    assert torch.equal(a, train_transform(x, policy, seed=1, step=4, input_size=16))
    if policy != "none":  # "none" still crops at random, like every policy when the input is larger
        assert not torch.equal(a, train_transform(x, policy, seed=1, step=5, input_size=16))
    assert torch.equal(eval_transform(x, 16), x[..., 2:18, 2:18])  # evaluation: the centre crop


def test_photometric_covers_polarity_and_colour():
    x = torch.zeros(64, 3, 8, 8)
    x[:, :, 2:6, 2:6] = 1.0  # white ink on black
    y = train_transform(x, "photometric", seed=0, step=0)
    background = y[:, :, 0, 0]
    assert (background.mean(1) > 0.5).sum() > 10  # some became light paper (inverted or tinted)
    assert (background.std(1) > 0.05).sum() > 5  # some got a colour, not a grey


def test_state_location_is_keyed_by_run_and_stage(monkeypatch):
    monkeypatch.delenv("TRANSFEROPS_RUN_KEY", raising=False)
    assert state_location("", "artifacts", "finetune") == "artifacts/state/finetune/state.pt"
    monkeypatch.setenv("TRANSFEROPS_RUN_KEY", "run 7/a")
    assert state_location("s3://b/p/", "artifacts", "pretrain") == "s3://b/p/run-7-a/pretrain/state.pt"


def _fit_on_three_val_images(cfg):
    seed_everything(0)
    model = create_model("smallcnn", 3, width=8, dropout=0.2)
    data, val = random_split(48, 3), random_split(3, 3, seed=1)  # one image per class: epochs tie
    return train(model, Strategy(), cfg, {"labeled": data}, val, TrainRun(0, CPU))


def test_a_val_tie_keeps_the_later_epoch_and_is_no_improvement_for_early_stopping():
    fit = _fit_on_three_val_images(TrainConfig(epochs=5, steps_per_epoch=6, batch_size=8, lr=1e-2))
    accs = [h["val_accuracy"] for h in fit.history]
    assert accs.count(max(accs)) >= 2, accs  # the case under test happened
    assert fit.best_epoch == max(i + 1 for i, a in enumerate(accs) if a == max(accs))

    stopped = _fit_on_three_val_images(
        TrainConfig(epochs=8, steps_per_epoch=6, batch_size=8, lr=1e-2, early_stopping_patience=2)
    )
    accs = [h["val_accuracy"] for h in stopped.history]
    first_best = accs.index(max(accs)) + 1
    assert len(accs) == min(8, first_best + 2), accs  # ties after the best do not reset the patience
