"""The from-scratch baseline learns as pretrain does (its learning rate, optimiser, weight decay, label smoothing and
augmentation) for finetune's budget: finetune's own way of learning, meant for weights worth keeping, must not
change it, or a weak baseline flatters every transfer method."""

from __future__ import annotations

from dataclasses import replace

import torch

from transferops.config import Config
from transferops.paths import Paths
from transferops.stages import baseline, ingest, rank


def _baseline_weights(cfg: Config) -> dict[str, torch.Tensor]:
    baseline.run(cfg)
    return torch.load(Paths.from_config(cfg).baseline_model, map_location="cpu", weights_only=False)["state_dict"]


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_the_baseline_follows_pretrains_learning_and_finetunes_budget(tiny_cfg: Config):
    ingest.run(tiny_cfg)
    rank.run(tiny_cfg)
    reference = _baseline_weights(tiny_cfg)

    ft = tiny_cfg.finetune
    finetune_learning = replace(
        tiny_cfg, finetune=replace(ft, lr=ft.lr * 7, augment="none", weight_decay=0.5, label_smoothing=0.3)
    )
    assert _same(_baseline_weights(finetune_learning), reference)  # finetune's way of learning: not used

    for key, value in [("augment", "affine+photometric"), ("lr", tiny_cfg.pretrain.lr / 3)]:
        changed = replace(tiny_cfg, pretrain=replace(tiny_cfg.pretrain, **{key: value}))
        assert not _same(_baseline_weights(changed), reference), f"pretrain.{key} should change the baseline"

    longer = replace(tiny_cfg, finetune=replace(ft, steps_per_epoch=ft.steps_per_epoch + 2))
    assert not _same(_baseline_weights(longer), reference)  # finetune's budget: used
