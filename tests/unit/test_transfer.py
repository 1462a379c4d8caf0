import pytest
import torch

from transferops.config import FinetuneMethodConfig, LinearProbeConfig, TrainConfig
from transferops.data.batches import BatchStream
from transferops.data.shards import Split
from transferops.errors import ConfigError
from transferops.models import create_model
from transferops.training.loop import Trainer
from transferops.transfer import STRATEGIES, get_strategy

from .helpers import random_split


def _train(model, strategy, steps=6, lr=1e-2):
    cfg = TrainConfig(epochs=1, steps_per_epoch=steps, lr=lr, batch_size=8, augment=False)
    data = random_split(40, 3)
    t = Trainer(
        model,
        strategy,
        cfg,
        {"labeled": BatchStream(data, 8, 0)},
        Split(data.images[:0], data.labels[:0]),
        torch.device("cpu"),
        seed=0,
    )
    t.fit()
    return t


def test_registry_has_the_supervised_methods():
    assert {"linear_probe", "finetune"} <= set(STRATEGIES)
    with pytest.raises(ConfigError, match="unknown method 'nope'"):
        get_strategy("nope", LinearProbeConfig())


def test_linear_probe_leaves_backbone_bit_identical_and_trains_a_new_head():
    model = create_model("smallcnn", 10, width=8)
    before = {k: v.clone() for k, v in model.backbone.state_dict().items()}  # weights and BN buffers
    old_head = model.head
    strategy = get_strategy("linear_probe", LinearProbeConfig())
    strategy.prepare(model, 3, same_classes=False)
    assert model.head is not old_head and model.num_classes == 3
    head_before = model.head.weight.clone()
    _train(model, strategy)
    after = model.backbone.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert not torch.equal(head_before, model.head.weight)


def test_finetune_uses_discriminative_lrs_and_freezes_first_stages():
    model = create_model("smallcnn", 3, width=8)
    strategy = get_strategy("finetune", FinetuneMethodConfig(backbone_lr_mult=0.1, freeze_stages=1))
    strategy.prepare(model, 3, same_classes=True)
    head = model.head  # same classes and reinit_head false: the source head is kept
    groups = strategy.param_groups(model, 1e-2)
    assert [g["lr"] for g in groups] == [1e-2, 1e-3]
    assert sum(p.numel() for p in groups[0]["params"]) == sum(p.numel() for p in model.head.parameters())
    stage0 = {k: v.clone() for k, v in model.stages()[0][0].state_dict().items()}
    stage2 = model.stages()[2][0][0].weight.clone()
    _train(model, strategy)
    assert model.head is head
    assert all(torch.equal(v, model.stages()[0][0].state_dict()[k]) for k, v in stage0.items())
    assert not torch.equal(stage2, model.stages()[2][0][0].weight)


def test_finetune_with_zero_backbone_multiplier_trains_only_the_head():
    model = create_model("smallcnn", 3, width=8)
    strategy = get_strategy("finetune", FinetuneMethodConfig(backbone_lr_mult=0.0))
    strategy.prepare(model, 3, same_classes=True)
    groups = strategy.param_groups(model, 1e-2)
    assert len(groups) == 1
    assert not any(p.requires_grad for p in model.backbone.parameters())
