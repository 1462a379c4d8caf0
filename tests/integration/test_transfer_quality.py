"""Transfer quality on a tiny config: a user's colour, inverted-polarity target lands well above chance through
params alone; source-free adaptation runs without the source data; negative transfer is said everywhere."""

import shutil
from dataclasses import replace

import pytest
import yaml

from tests.conftest import REPO
from transferops.config import config_from_dict
from transferops.data.shards import read_manifest
from transferops.paths import Paths
from transferops.stages import evaluate, finetune, ingest, pretrain


def _with(cfg, **sections):
    data = cfg.to_dict()
    for key, value in sections.items():
        node = data
        *path, last = key.split("__")
        for part in path:
            node = node[part]
        node[last] = value
    return config_from_dict(data)


def test_a_colour_inverted_user_target_clearly_beats_chance(tiny_cfg, tmp_path):
    """Handwritten digits as dark coloured ink on light coloured paper, RGB 32 px, 1 label per class: the
    embedded source is grey, light on dark, 28 px. Ingest's auto geometry, photometric pretraining and the
    default method must carry it well above chance (10 %)."""
    from transferops_bench.targets import digits_inverted_colour

    folder = digits_inverted_colour(tmp_path / "my-digits", per_class=60)
    cfg = _with(
        tiny_cfg,
        ingest__target={
            "kind": "image_folder",
            "path": str(folder),
            "split": {"test_fraction": 0.3, "val_per_class": 3, "labels_per_class": 1},
        },
        ingest__source__samples_per_class=150,
        model__width=16,
        pretrain__epochs=5,
        pretrain__lr=0.003,
        pretrain__batch_size=64,
        finetune__epochs=4,
        finetune__steps_per_epoch=10,
    )
    shipped = yaml.safe_load((REPO / "params.yaml").read_text())["pretrain"]["augment"]
    assert shipped == "affine+photometric"
    cfg = replace(cfg, pretrain=replace(cfg.pretrain, augment=shipped))  # (tiny_cfg turns it off)
    for stage in (ingest, pretrain, finetune):
        stage.run(cfg)
    assert read_manifest(Paths.from_config(cfg).target_data)["image_shape"] == [3, 32, 32]  # auto: RGB, 32 px
    m = evaluate.run(cfg).metrics
    assert m["accuracy"] >= 0.3, m
    assert m["source_only_accuracy"] >= 0.2, m  # the source model itself is no longer at chance


def test_source_free_adaptation_needs_no_source_data(tiny_cfg):
    cfg = _with(tiny_cfg, ingest__target__split__labels_per_class=0, finetune__method="shot")
    for stage in (ingest, pretrain):
        stage.run(cfg)
    paths = Paths.from_config(cfg)
    shutil.rmtree(paths.source_data)  # the source data does not travel with the source model
    finetune.run(cfg)
    m = evaluate.run(cfg).metrics
    assert m["method"] == "shot" and 0.0 <= m["accuracy"] <= 1.0
    assert "target_diversity" in m and "negative_transfer" in m  # k = 0: the label-free guard ran


def test_negative_transfer_is_said_in_metrics_summary_card_and_gate_reason(tiny_cfg):
    """A finetune that ruins the source model (a fresh head trained for one step) scores below the source model
    on the target val split: evaluate, the summary, the model card and the gate reason all say so."""
    from transferops.registry.gate import GateDecision
    from transferops.stages.register import load_inputs, model_card, with_warnings
    from transferops.summary import summary_text

    cfg = _with(tiny_cfg, finetune__epochs=1, finetune__steps_per_epoch=1, finetune__full_finetune__reinit_head=True)
    cfg = replace(cfg, finetune=replace(cfg.finetune, lr=1e-6))
    for stage in (ingest, pretrain, finetune):
        stage.run(cfg)
    m = evaluate.run(cfg).metrics
    assert m["val_accuracy"] < m["source_only_val_accuracy"]
    assert m["negative_transfer"].startswith("negative transfer: on the labelled target val split")

    paths = Paths.from_config(cfg)
    inputs = load_inputs(paths)
    decision = GateDecision(True, True, "accuracy 0.2 >= floor 0.1; no champion yet", m["accuracy"])
    card = model_card("transferops-digits", inputs, {"method": "full_finetune"}, decision)
    assert "**Warning: negative transfer" in card and "| negative transfer | negative transfer: on" in card
    assert with_warnings(decision, m).reason.startswith("accuracy 0.2 >= floor 0.1; no champion yet; WARNING negat")

    register_dir = paths.stage("register")
    register_dir.mkdir()
    (register_dir / "registration.json").write_text(
        '{"model_name": "m", "version": null, "aliases": [], "promoted": false, '
        f'"reason": "{with_warnings(decision, m).reason}"}}'
    )
    text = summary_text(paths.stage("evaluate"), register_dir, "artifacts/", "sqlite:///x.db")
    assert f"WARNING               {m['negative_transfer']}" in text
    assert "no champion yet\n" in text  # the gate line keeps the gate's own reason


@pytest.mark.parametrize("select", ["snd", "last"])
def test_finetune_select_chooses_the_epoch_without_target_labels(tiny_cfg, select):
    cfg = _with(tiny_cfg, ingest__target__split__labels_per_class=0, finetune__method="mcc", finetune__select=select)
    for stage in (ingest, pretrain):
        stage.run(cfg)
    result = finetune.run(cfg)
    history = (Paths.from_config(cfg).stage("finetune") / "history.json").read_text()
    assert '"target_snd"' in history and '"target_diversity"' in history and '"train_target_entropy"' in history
    assert result.metrics["val_accuracy"] is None  # no target label read at k = 0
    if select == "last":
        assert result.metrics["best_epoch"] == -1
    else:
        assert 1 <= result.metrics["best_epoch"] <= cfg.finetune.epochs
