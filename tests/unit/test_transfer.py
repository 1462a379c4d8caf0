import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from transferops.config import (
    CoralConfig,
    DANNConfig,
    FinetuneConfig,
    FinetuneMethodConfig,
    JointConfig,
    KDConfig,
    L2SPConfig,
    LinearProbeConfig,
    MMDConfig,
)
from transferops.data.batches import BatchStream
from transferops.errors import ConfigError
from transferops.models import create_model
from transferops.models.io import save_model
from transferops.training.loop import Trainer
from transferops.transfer import STRATEGIES, TransferContext, get_strategy
from transferops.transfer.losses import coral, grad_reverse, grl_coefficient, kd_loss, mcc_loss, mk_mmd

from .helpers import random_split

CPU = torch.device("cpu")


def ctx(num_classes=3, same=True, source=None):
    return TransferContext(num_classes, same, source, CPU)


def _train(model, strategy, streams=("labeled",), steps=6, lr=1e-2, epochs=1):
    from transferops.config import TrainConfig

    cfg = TrainConfig(epochs=epochs, steps_per_epoch=steps, lr=lr, batch_size=8, augment="none")
    data = random_split(40, 3)
    empty = data.head(0)
    t = Trainer(model, strategy, cfg, {s: BatchStream(data, 8, 0, i) for i, s in enumerate(streams)}, empty, CPU, 0)
    t.fit()
    return t


def test_every_method_is_registered():
    assert set(STRATEGIES) == {"linear_probe", "full_finetune", "l2sp", "kd", "joint", "dann", "mmd", "coral", "mcc"}
    with pytest.raises(ConfigError, match="unknown method 'nope'"):
        get_strategy("nope", LinearProbeConfig())


# ---------------------------------------------------------------------------------------------- linear probe
def test_linear_probe_leaves_backbone_bit_identical_and_trains_a_new_head():
    model = create_model("smallcnn", 10, width=8)
    before = {k: v.clone() for k, v in model.backbone.state_dict().items()}  # weights and BN buffers
    old_head = model.head
    strategy = get_strategy("linear_probe", LinearProbeConfig(cache_features=False))
    strategy.prepare(model, ctx(3, same=False))
    assert model.head is not old_head and model.num_classes == 3
    head_before = model.head.weight.clone()
    _train(model, strategy)
    after = model.backbone.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert not torch.equal(head_before, model.head.weight)


def test_cached_features_equal_a_fresh_forward_pass_and_train_the_same_head():
    model = create_model("smallcnn", 3, width=8)
    strategy = get_strategy("linear_probe", LinearProbeConfig(cache_features=True))
    strategy.prepare(model, ctx())
    data, val = {"labeled": random_split(20, 3)}, random_split(6, 3, seed=1)
    module, fdata, fval = strategy.feature_space(model, data, val, CPU)
    model.eval()
    with torch.no_grad():
        fresh = model.features(torch.from_numpy(data["labeled"].images).float() / 255)
    assert torch.allclose(torch.from_numpy(fdata["labeled"].images), fresh, atol=1e-6)
    assert np.array_equal(fdata["labeled"].labels, data["labeled"].labels) and len(fval) == 6
    assert module[1] is model.head  # training the cached-feature module trains the model's own head
    before = model.head.weight.clone()
    from transferops.config import TrainConfig

    Trainer(
        module,
        strategy,
        TrainConfig(epochs=1, steps_per_epoch=3, augment="none"),
        {"labeled": BatchStream(fdata["labeled"], 8, 0)},
        fval,
        CPU,
        0,
    ).fit()
    assert not torch.equal(before, model.head.weight)


# ---------------------------------------------------------------------------------------------- finetune
def test_finetune_uses_discriminative_and_layerwise_lrs_and_freezes_first_stages():
    model = create_model("smallcnn", 3, width=8)
    strategy = get_strategy(
        "full_finetune", FinetuneMethodConfig(backbone_lr_mult=0.1, layer_decay=0.5, freeze_stages=1)
    )
    strategy.prepare(model, ctx())
    head = model.head  # same classes and reinit_head false: the source head is kept
    groups = strategy.param_groups(model, 1e-2)
    assert [g["lr"] for g in groups] == pytest.approx([1e-2, 1e-3 * 0.25, 1e-3 * 0.5, 1e-3])
    stage0 = {k: v.clone() for k, v in model.stages()[0][0].state_dict().items()}
    stage2 = model.stages()[2][0][0].weight.clone()
    _train(model, strategy)
    assert model.head is head
    assert all(torch.equal(v, model.stages()[0][0].state_dict()[k]) for k, v in stage0.items())
    assert not torch.equal(stage2, model.stages()[2][0][0].weight)


def test_gradual_unfreezing_opens_one_stage_from_the_top_per_period():
    model = create_model("smallcnn", 3, width=8)
    strategy = get_strategy("full_finetune", FinetuneMethodConfig(unfreeze_every=2))
    strategy.prepare(model, ctx())

    def trainable():
        return [any(p.requires_grad for m in st for p in m.parameters()) for st in model.stages()]

    seen = {}
    for epoch in range(7):
        strategy.on_epoch_start(model, epoch)
        seen[epoch] = trainable()
    assert seen[0] == seen[1] == [False, False, False]
    assert seen[2] == [False, False, True]
    assert seen[4] == [False, True, True]
    assert seen[6] == [True, True, True]
    assert all(p.requires_grad for p in model.head.parameters())


def test_finetune_with_zero_backbone_multiplier_trains_only_the_head():
    model = create_model("smallcnn", 3, width=8)
    strategy = get_strategy("full_finetune", FinetuneMethodConfig(backbone_lr_mult=0.0))
    strategy.prepare(model, ctx())
    assert len(strategy.param_groups(model, 1e-2)) == 1
    assert not any(p.requires_grad for p in model.backbone.parameters())


# ---------------------------------------------------------------------------------------------- L2-SP
def test_l2sp_penalty_is_zero_at_source_weights_and_its_gradient_points_back():
    model = create_model("smallcnn", 3, width=8)
    strategy = get_strategy("l2sp", L2SPConfig(alpha=0.3, beta=0.0))
    strategy.prepare(model, ctx())
    sp, new = strategy.penalty()
    assert float(sp) == 0.0 and float(new) == 0.0
    w = model.backbone[0][0].weight
    w0 = w.detach().clone()
    delta = torch.randn_like(w) * 0.1
    with torch.no_grad():
        w.add_(delta)
    sp, _ = strategy.penalty()
    assert float(sp) == pytest.approx(0.5 * 0.3 * float((delta**2).sum()), rel=1e-5)
    sp.backward()
    assert torch.allclose(w.grad, 0.3 * delta, atol=1e-6)  # gradient descent moves w back towards w0
    assert float(((w - 0.1 * w.grad) - w0).norm()) < float(delta.norm())


def test_l2sp_new_head_gets_plain_l2_and_no_weight_decay():
    model = create_model("smallcnn", 3, width=8)
    strategy = get_strategy("l2sp", L2SPConfig(alpha=0.0, beta=2.0, reinit_head=True))
    strategy.prepare(model, ctx())
    _, new = strategy.penalty()
    assert float(new) == pytest.approx(float((model.head.weight**2).sum() + (model.head.bias**2).sum()), rel=1e-5)
    assert all(g["weight_decay"] == 0.0 for g in strategy.param_groups(model, 1e-3))


# ---------------------------------------------------------------------------------------------- KD, joint
def test_kd_loss_matches_hand_computed_value():
    s = torch.tensor([[1.0, 2.0, 0.5]])
    t = torch.tensor([[0.2, 3.0, 1.0]])
    T = 2.0
    ps, pt = np.exp(s.numpy() / T), np.exp(t.numpy() / T)
    ps, pt = ps / ps.sum(), pt / pt.sum()
    expected = T * T * float((pt * np.log(pt / ps)).sum())
    assert float(kd_loss(s, t, T)) == pytest.approx(expected, rel=1e-5)
    assert float(kd_loss(t, t, T)) == pytest.approx(0.0, abs=1e-6)


def test_kd_distils_from_the_source_model(tmp_path):
    from transferops.config import Config

    source = create_model("smallcnn", 3, width=8)
    cfg = Config()
    cfg = type(cfg)(model=type(cfg.model)(width=8))
    save_model(tmp_path / "source.pt", source, cfg, ["a", "b", "c"], [1, 12, 12], {})
    student = create_model("smallcnn", 3, width=8)
    student.load_state_dict(source.state_dict())
    strategy = get_strategy("kd", KDConfig(alpha=1.0, temperature=2.0))
    strategy.prepare(student, ctx(3, True, tmp_path / "source.pt"))
    assert not any(p.requires_grad for p in strategy.teacher.parameters())
    x = torch.rand(4, 1, 12, 12)
    loss, logs = strategy.loss(student.eval(), {"labeled": (x, torch.tensor([0, 1, 2, 0]))}, 0.0)
    logs = {k: float(v) for k, v in logs.items()}  # logged parts are device tensors, read once per window
    assert logs["kd"] == pytest.approx(0.0, abs=1e-5)  # identical student and teacher: no KL
    with pytest.raises(ConfigError, match="not the target's 5"):
        get_strategy("kd", KDConfig()).prepare(
            create_model("smallcnn", 5, width=8), ctx(5, False, tmp_path / "source.pt")
        )


def test_joint_weights_source_and_target_losses_and_keeps_a_source_head_for_other_classes():
    model = create_model("smallcnn", 3, width=8)
    strategy = get_strategy("joint", JointConfig(alpha=0.25))
    strategy.prepare(model, ctx(2, same=False))
    assert "source_head" in strategy.modules() and strategy.modules()["source_head"].out_features == 3
    model.eval()
    xt, yt = torch.rand(4, 1, 12, 12), torch.tensor([0, 1, 0, 1])
    xs, ys = torch.rand(5, 1, 12, 12), torch.tensor([0, 1, 2, 0, 1])
    loss, logs = strategy.loss(model, {"labeled": (xt, yt), "source": (xs, ys)}, 0.0)
    logs = {k: float(v) for k, v in logs.items()}
    assert float(loss) == pytest.approx(0.25 * logs["ce_source"] + 0.75 * logs["ce_target"], rel=1e-5)
    with torch.no_grad():
        assert logs["ce_target"] == pytest.approx(float(F.cross_entropy(model(xt), yt)), rel=1e-5)


# ---------------------------------------------------------------------------------------------- adaptation
def test_grl_is_identity_forward_and_scales_gradient_by_minus_lambda():
    x = torch.randn(4, 3, requires_grad=True)
    y = grad_reverse(x, 0.7)
    assert torch.equal(y, x)
    y.sum().backward()
    assert torch.allclose(x.grad, torch.full_like(x, -0.7))
    assert grl_coefficient(0.0) == 0.0
    assert grl_coefficient(0.5) == pytest.approx(2 / (1 + math.exp(-5)) - 1)
    assert 0.999 < grl_coefficient(1.0) < 1.0


def test_mmd_is_near_zero_for_one_distribution_and_grows_with_mean_shift():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(200, 8, generator=g), torch.randn(200, 8, generator=g)
    mult = [0.25, 0.5, 1.0, 2.0, 4.0]
    same = float(mk_mmd(a, b, mult))
    shifts = [float(mk_mmd(a, b + s, mult)) for s in (0.5, 1.0, 2.0)]
    assert abs(same) < 0.25 * shifts[0] and abs(same) < 0.06  # the biased estimate keeps the k(x, x) terms
    assert same < shifts[0] < shifts[1] < shifts[2]


def test_coral_is_zero_for_equal_covariances_and_positive_otherwise():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(100, 6, generator=g)
    assert float(coral(a, a + 3.0)) == pytest.approx(0.0, abs=1e-6)  # a mean shift leaves covariance unchanged
    assert float(coral(a, a * 2.0)) > 0.01


def test_mcc_penalises_confusion_between_classes():
    confident = torch.eye(4).repeat(4, 1) * 30
    uniform = torch.zeros(16, 4)
    assert float(mcc_loss(confident, 2.5)) < 0.05 < float(mcc_loss(uniform, 2.5))


@pytest.mark.parametrize(
    ("name", "cfg"),
    [("dann", DANNConfig()), ("mmd", MMDConfig()), ("coral", CoralConfig()), ("mcc", FinetuneConfig().mcc)],
)
def test_adaptation_methods_train_without_target_labels(name, cfg):
    model = create_model("smallcnn", 3, width=8)
    strategy = get_strategy(name, cfg)
    assert strategy.uses_target_labels is False and strategy.streams == ("source", "unlabeled")
    strategy.prepare(model, ctx())
    before = model.backbone[0][0].weight.clone()
    t = _train(model, strategy, streams=("source", "unlabeled"), steps=4)
    assert set(t.active) == {"source", "unlabeled"}
    assert not torch.equal(before, model.backbone[0][0].weight)
    assert all(math.isfinite(v) for h in t.result.history for k, v in h.items() if k.startswith("train"))
    with pytest.raises(ConfigError, match="classes differ"):
        get_strategy(name, cfg).prepare(create_model("smallcnn", 3, width=8), ctx(3, same=False))


def test_dann_discriminator_is_trained_and_saved_with_the_state():
    model = create_model("smallcnn", 3, width=8)
    strategy = get_strategy("dann", DANNConfig(hidden=16))
    strategy.prepare(model, ctx())
    d0 = strategy.modules()["discriminator"][0].weight.clone()
    t = _train(model, strategy, streams=("source", "unlabeled", "labeled"), steps=4)
    assert t.active == ["source", "unlabeled", "labeled"]  # labelled target joins when present
    assert not torch.equal(d0, strategy.modules()["discriminator"][0].weight)
    assert any(k.startswith("discriminator.") for k in t._state()["extra"])
