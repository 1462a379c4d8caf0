import math

import pytest
import torch

from transferops.config import TrainConfig
from transferops.data.batches import BatchStream, augment
from transferops.errors import CheckpointError, TrainingError
from transferops.models import create_model
from transferops.training.loop import Trainer, accuracy, train
from transferops.training.seeding import seed_everything
from transferops.transfer import Strategy

from .helpers import random_split

CPU = torch.device("cpu")
CFG = TrainConfig(epochs=3, steps_per_epoch=5, batch_size=8, lr=5e-3, checkpoint_every_steps=2)


def _run(tmp_path, cfg=CFG, strategy=None, config_hash="h", restart=False):
    seed_everything(0)
    model = create_model("smallcnn", 3, width=8, dropout=0.2)
    data, val = random_split(48, 3), random_split(12, 3, seed=1)
    fit = train(
        model,
        strategy or Strategy(),
        cfg,
        {"labeled": data},
        val,
        0,
        CPU,
        tmp_path / "state.pt",
        config_hash,
        restart=restart,
    )
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
    x = s1.batch(0)[0]
    assert torch.equal(augment(x, 0, 5), augment(x, 0, 5)) and not torch.equal(augment(x, 0, 5), augment(x, 0, 6))


def test_missing_stream_is_named():
    model = create_model("smallcnn", 3, width=8)

    class NeedsSource(Strategy):
        streams = ("labeled", "source")

    with pytest.raises(TrainingError, match=r"needs data splits \['source'\]"):
        Trainer(
            model, NeedsSource(), CFG, {"labeled": BatchStream(random_split(8, 2), 4, 0)}, random_split(4, 2), CPU, 0
        )
