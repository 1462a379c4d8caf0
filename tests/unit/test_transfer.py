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
from transferops.training.loop import Trainer, TrainRun
from transferops.transfer import STRATEGIES, TransferContext, get_strategy
from transferops.transfer.losses import (
    DomainDiscriminator,
    coral,
    grad_reverse,
    grl_coefficient,
    kd_loss,
    mcc_loss,
    mk_mmd,
)

from .helpers import random_split

CPU = torch.device("cpu")


def ctx(num_classes=3, same=True, source=None):
    return TransferContext(num_classes, same, source, CPU)


def _train(model, strategy, streams=("labeled",), steps=6, lr=1e-2, epochs=1):
    from transferops.config import TrainConfig

    cfg = TrainConfig(epochs=epochs, steps_per_epoch=steps, lr=lr, batch_size=8, augment="none")
    data = random_split(40, 3)
    empty = data.head(0)
    t = Trainer(
        model, strategy, cfg, {s: BatchStream(data, 8, 0, i) for i, s in enumerate(streams)}, empty, TrainRun(0, CPU)
    )
    t.fit()
    return t


def test_every_method_is_registered():
    assert set(STRATEGIES) == {
        "linear_probe",
        "full_finetune",
        "l2sp",
        "kd",
        "joint",
        "dann",
        "mmd",
        "coral",
        "mcc",
        "cdan",
        "shot",
        "fixmatch",
    }
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
        TrainRun(0, CPU),
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


def test_discriminator_norm_decides_whether_an_example_is_judged_by_the_rest_of_its_batch():
    """With BatchNorm in the discriminator, the domain logit of one example moves with the other examples of
    the (mixed-domain) batch; without it (the default) it depends on that example alone."""
    torch.manual_seed(0)
    x, others = torch.randn(1, 12), torch.randn(7, 12)
    for norm, alone in (("none", True), ("batch", False)):
        d = DomainDiscriminator(12, 16, norm).train()
        a = d(torch.cat([x, others]))[0]
        b = d(torch.cat([x, others * 3 + 1]))[0]
        assert torch.allclose(a, b) == alone, norm
    strategy = get_strategy("dann", DANNConfig(hidden=16))
    strategy.prepare(create_model("smallcnn", 3, width=8), ctx())
    assert not any(isinstance(m, torch.nn.BatchNorm1d) for m in strategy.modules()["discriminator"].modules())
    from transferops.config import config_from_dict

    with pytest.raises(ConfigError, match=r"finetune\.dann\.discriminator_norm: expected one of none, batch"):
        config_from_dict({}, ["finetune.dann.discriminator_norm=layer"])  # refused when params are read


def test_source_data_is_read_only_by_methods_that_declare_it():
    for name, cls in STRATEGIES.items():
        assert cls.uses_source_data == ("source" in (*cls.streams, *cls.optional_streams)), name
    assert STRATEGIES["shot"].uses_source_data is False and STRATEGIES["dann"].uses_source_data is True


# ---------------------------------------------------------------------------------------------- BatchNorm per domain
def _bn_case(seed=0):
    g = torch.Generator().manual_seed(seed)
    xs = torch.rand(8, 1, 12, 12, generator=g) * 0.2  # dark source
    xt = 0.8 + torch.rand(8, 1, 12, 12, generator=g) * 0.2  # bright target
    return xs, xt, torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])


def _first_bn(model):
    return next(m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))


def _bn_after_one_pass(init, x):
    """The first BatchNorm layer of a model with weights ``init`` after one train-mode pass over ``x``."""
    model = create_model("smallcnn", 3, width=8)
    model.load_state_dict(init)
    model.train()
    model.features(x)
    return _first_bn(model)


@pytest.mark.parametrize("name", ["dann", "mmd", "coral", "mcc", "cdan", "joint"])
def test_batchnorm_sees_each_domain_separately_and_keeps_target_statistics(name):
    """After one step: the running statistics are the target batch's alone (whatever the source batch), and the
    source predictions depend on the source batch alone (whatever the target batch)."""
    xs, xt, ys = _bn_case()
    model = create_model("smallcnn", 3, width=8)
    cfg = getattr(FinetuneConfig(), name)
    strategy = get_strategy(name, cfg)
    strategy.prepare(model, ctx())
    init = {k: v.clone() for k, v in model.state_dict().items()}

    def step(xs, xt):
        model.load_state_dict(init)
        model.train()
        strategy.modules().train()
        if name == "joint":
            batches = {"labeled": (xt, ys), "source": (xs, ys)}
        else:
            batches = {"source": (xs, ys), "unlabeled": (xt, ys)}
        torch.manual_seed(0)
        _, parts = strategy.loss(model, batches, 0.5)
        bn = _first_bn(model)
        return bn.running_mean.clone(), bn.running_var.clone(), float(parts["ce_source"])

    mean, var, ce_s = step(xs, xt)
    # the target batch alone, through a copy: what its statistics give
    alone = _bn_after_one_pass(init, xt)
    assert torch.allclose(mean, alone.running_mean, atol=1e-6)
    assert torch.allclose(var, alone.running_var, atol=1e-5)
    # another source batch: same running statistics; another target batch: same source loss
    mean2, var2, _ = step(xs.flip(0) * 0.5, xt)
    assert torch.equal(mean, mean2) and torch.equal(var, var2)
    if name != "joint":  # joint's source loss is computed on the source head of the same features
        _, _, ce_s2 = step(xs, xt.flip(0) * 0.9)
        assert ce_s2 == pytest.approx(ce_s, rel=1e-6)
    # a single mixed pass would have given other statistics
    assert not torch.allclose(mean, _bn_after_one_pass(init, torch.cat([xs, xt])).running_mean, atol=1e-3)


def test_running_stats_frozen_restores_momentum_and_counter():
    from transferops.transfer.domains import running_stats_frozen

    bn = torch.nn.BatchNorm1d(4)
    before = bn.running_mean.clone()
    with running_stats_frozen(bn):
        out = bn(torch.randn(16, 4) + 5)
    assert torch.equal(bn.running_mean, before) and bn.momentum == 0.1 and int(bn.num_batches_tracked) == 0
    assert out.mean().abs() < 1e-5  # still normalised with the batch's own statistics
    bn(torch.randn(16, 4) + 5)
    assert bn.running_mean.mean() > 0.3


def test_target_pass_runs_labelled_and_unlabelled_target_together_and_adds_their_ce_only_when_labelled():
    """k > 0: one target pass over both target batches (BatchNorm statistics of their union) and a logged
    cross-entropy on the labelled ones; k = 0: no labelled features, no term, no log entry."""
    from transferops.transfer.domains import classify, labeled_target_term, target_pass

    xs, xt, ys = _bn_case()
    xl, yl = xt[:3].flip(-1) * 0.9, ys[:3]
    model = create_model("smallcnn", 3, width=8)
    init = {k: v.clone() for k, v in model.state_dict().items()}
    model.train()
    ft, fl = target_pass(model, {"unlabeled": (xt, ys), "labeled": (xl, yl)})
    assert ft.shape[0] == len(xt) and fl.shape[0] == len(xl)
    together = _bn_after_one_pass(init, torch.cat([xt, xl]))
    assert torch.allclose(_first_bn(model).running_mean, together.running_mean, atol=1e-6)
    logs: dict[str, torch.Tensor] = {}
    ce = labeled_target_term(F.cross_entropy, model, fl, {"labeled": (xl, yl)}, logs)
    assert float(ce) == pytest.approx(float(F.cross_entropy(classify(model, fl), yl)), rel=1e-6)
    assert float(logs["ce_target"]) == pytest.approx(float(ce))

    model.load_state_dict(init)
    ft0, fl0 = target_pass(model, {"unlabeled": (xt, ys)})
    logs = {}
    assert fl0 is None and labeled_target_term(F.cross_entropy, model, fl0, {}, logs) is None and logs == {}
    assert ft0.shape == ft.shape


# ---------------------------------------------------------------------------------------------- CDAN
def test_cdan_discriminator_sees_the_multilinear_map_and_weights_by_entropy():
    from transferops.config import CDANConfig
    from transferops.transfer.losses import entropy

    model = create_model("smallcnn", 3, width=8)
    strategy = get_strategy("cdan", CDANConfig(hidden=16))
    strategy.prepare(model, ctx())
    disc = strategy.modules()["discriminator"]
    assert disc[0].in_features == model.feature_dim * 3
    seen = {}
    disc[0].register_forward_hook(lambda m, inp, out: seen.update(h=inp[0].detach()))
    g = torch.Generator().manual_seed(0)
    fs, ft = torch.rand(4, model.feature_dim, generator=g), torch.rand(5, model.feature_dim, generator=g)
    ls = torch.tensor([[9.0, 0, 0], [0, 9, 0], [0, 0, 9], [1, 1, 1]])  # three confident, one uncertain
    lt = torch.randn(5, 3, generator=g)
    disc.eval()
    loss, logs = strategy.align(fs, ft, ls, lt, 1.0)
    p = F.softmax(torch.cat([ls, lt]), 1)
    f = torch.cat([fs, ft])
    h = seen["h"].view(9, 3, -1)
    assert torch.allclose(h, p[:, :, None] * f[:, None, :], atol=1e-6)  # h = g (x) f, one block per class
    with torch.no_grad():
        d = disc(seen["h"]).squeeze(1)
    w = 1 + torch.exp(-entropy(torch.cat([ls, lt])))
    w = w / w.sum() * 9
    expected = F.binary_cross_entropy_with_logits(d, torch.tensor([1.0] * 4 + [0.0] * 5), weight=w)
    assert float(loss) == pytest.approx(float(expected), rel=1e-5)
    assert w[0] > w[3]  # the confident source example weighs more than the uncertain one


def test_cdan_uses_a_random_map_when_the_full_map_is_too_wide():
    from transferops.config import CDANConfig

    model = create_model("smallcnn", 50, width=32)  # 128 features x 50 classes > 4096
    strategy = get_strategy("cdan", CDANConfig(hidden=16, randomized_dim=64))
    strategy.prepare(model, ctx(50))
    assert strategy.modules()["discriminator"][0].in_features == 64 and "random_map" in strategy.modules()
    loss, _ = strategy.align(torch.rand(4, 128), torch.rand(4, 128), torch.randn(4, 50), torch.randn(4, 50), 0.3)
    assert math.isfinite(float(loss))


# ---------------------------------------------------------------------------------------------- SHOT
def test_shot_centroids_recover_clusters_from_noisy_predictions():
    from transferops.transfer.losses import nearest_centroid, shot_centroids

    g = torch.Generator().manual_seed(0)
    centres = torch.eye(3) * 5
    truth = torch.arange(60) % 3
    feats = centres[truth] + 0.3 * torch.rand(60, 3, generator=g)
    noisy = truth.clone()
    noisy[::4] = (truth[::4] + 1) % 3  # a quarter of the predictions are wrong
    probs = F.one_hot(noisy, 3).float() * 0.8 + 0.2 / 3
    centroids, valid = shot_centroids(feats, probs)
    assert valid.all()
    assert torch.equal(nearest_centroid(feats, centroids, valid), truth)
    # a class never predicted gets no centroid and no pseudo-label
    _, valid = shot_centroids(feats, F.one_hot(truth.clamp(max=1), 3).float())
    assert valid.tolist() == [True, True, False]


def test_information_maximisation_rewards_confident_and_diverse_predictions():
    from transferops.transfer.losses import information_maximisation

    confident_diverse = torch.eye(4).repeat(3, 1) * 20
    collapsed = torch.zeros(12, 4)
    collapsed[:, 0] = 20
    ent, div = information_maximisation(confident_diverse)
    assert float(ent) < 1e-3 and float(div) == pytest.approx(math.log(4), abs=1e-3)
    ent, div = information_maximisation(collapsed)
    assert float(ent) < 1e-3 and float(div) < 1e-3  # confident but collapsed: no diversity


def test_shot_freezes_the_source_head_and_trains_the_backbone_without_source_data():
    from transferops.config import SHOTConfig

    model = create_model("smallcnn", 3, width=8)
    strategy = get_strategy("shot", SHOTConfig())
    assert strategy.streams == ("unlabeled",) and not strategy.uses_target_labels
    strategy.prepare(model, ctx())
    strategy.attach({"unlabeled": random_split(40, 3)}, CPU)
    head, conv = model.head.weight.clone(), model.backbone[0][0].weight.clone()
    t = _train(model, strategy, streams=("unlabeled",), steps=4, epochs=2)
    assert torch.equal(head, model.head.weight) and not torch.equal(conv, model.backbone[0][0].weight)
    assert int(strategy.modules()["centroids"].epoch) == 1  # recomputed at every epoch start
    assert {"train_target_entropy", "train_diversity", "train_ce_pseudo"} <= set(t.result.history[-1])
    with pytest.raises(ConfigError, match="source's classes"):
        get_strategy("shot", SHOTConfig()).prepare(create_model("smallcnn", 3, width=8), ctx(3, same=False))


# ---------------------------------------------------------------------------------------------- FixMatch
def test_fixmatch_trains_the_strong_view_on_confident_weak_predictions_only():
    from transferops.config import FixMatchConfig

    model = create_model("smallcnn", 3, width=8)
    strategy = get_strategy("fixmatch", FixMatchConfig(threshold=0.5, strong_augment="photometric"))
    strategy.prepare(model, ctx())
    model.eval()  # no dropout, fixed BatchNorm: the loss can be recomputed by hand
    g = torch.Generator().manual_seed(0)
    xl, yl, xu = torch.rand(3, 1, 12, 12, generator=g), torch.tensor([0, 1, 2]), torch.rand(6, 1, 12, 12, generator=g)
    strong = strategy.strong_view(xu, 0.25)
    assert torch.equal(strong, strategy.strong_view(xu, 0.25)) and not torch.equal(strong, xu)
    assert not torch.equal(strong, strategy.strong_view(xu, 0.5))  # another step, another view
    with torch.no_grad():
        model.head.weight.zero_()
        model.head.bias.copy_(torch.tensor([3.0, 0.0, 0.0]))  # every weak prediction: class 0 at p = 0.91
    loss, parts = strategy.loss(model, {"labeled": (xl, yl), "unlabeled": (xu, yl)}, 0.25)
    with torch.no_grad():
        ce = F.cross_entropy(model(xl), yl)
        unl = F.cross_entropy(model(strong), torch.zeros(6, dtype=torch.long))
    assert float(parts["pseudo_label_rate"]) == 1.0
    assert float(loss) == pytest.approx(float(ce + unl), rel=1e-5)
    strict = get_strategy("fixmatch", FixMatchConfig(threshold=0.95))
    strict.prepare(model, ctx())
    loss, parts = strict.loss(model, {"labeled": (xl, yl), "unlabeled": (xu, yl)}, 0.25)
    assert float(parts["pseudo_label_rate"]) == 0.0 and float(loss) == pytest.approx(float(ce), rel=1e-5)


# ---------------------------------------------------------------------------------------------- selection
def test_soft_neighbourhood_density_prefers_clustered_predictions():
    from transferops.evaluation.selection import prediction_diversity, soft_neighbourhood_density

    g = torch.Generator().manual_seed(0)
    clustered = F.softmax(torch.eye(5).repeat(20, 1) * 8 + 0.1 * torch.randn(100, 5, generator=g), 1)
    scattered = F.softmax(torch.randn(100, 5, generator=g), 1)
    assert soft_neighbourhood_density(clustered) > soft_neighbourhood_density(scattered)
    assert prediction_diversity(clustered.numpy()) == pytest.approx(1.0)
    assert prediction_diversity(np.eye(5)[[0] * 100]) == 0.0


def test_trainer_keeps_the_epoch_a_selection_criterion_prefers():
    from transferops.config import TrainConfig

    model = create_model("smallcnn", 3, width=8)
    strategy = get_strategy("full_finetune", FinetuneMethodConfig())
    strategy.prepare(model, ctx())
    scores, weights = iter([0.1, 0.9, 0.5]), {}

    def epoch_end(m, epoch):
        weights[epoch] = m.head.weight.detach().clone()
        return {"target_score": next(scores)}

    data = random_split(40, 3)
    cfg = TrainConfig(epochs=3, steps_per_epoch=3, lr=1e-2, batch_size=8, augment="none")
    t = Trainer(
        model, strategy, cfg, {"labeled": BatchStream(data, 8, 0)}, data.head(0),
        TrainRun(0, CPU, epoch_end=epoch_end, select_on="target_score"),
    )  # fmt: skip
    result = t.fit()
    assert result.best_epoch == 2 and result.best_score == 0.9 and math.isnan(result.best_val_accuracy)
    assert [h["target_score"] for h in result.history] == [0.1, 0.9, 0.5]
    assert torch.equal(model.head.weight, weights[1])
