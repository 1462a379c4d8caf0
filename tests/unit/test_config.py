import dataclasses
import typing
from pathlib import Path
from typing import get_args

import pytest
import yaml

from transferops.config import (
    AUGMENT_POLICIES,
    SELECTION_CRITERIA,
    Config,
    DatasetConfig,
    FinetuneConfig,
    MethodConfig,
    MethodName,
    config_from_dict,
    dump_config,
    load_config,
    method_names,
    parse_override,
)
from transferops.errors import ConfigError
from transferops.transfer import STRATEGIES

REPO = Path(__file__).resolve().parents[2]


def test_shipped_params_validate_and_match_code_defaults():
    cfg = load_config(REPO / "params.yaml")
    assert cfg.finetune.method in (*method_names(), "recipe", "auto")
    assert cfg == Config()  # params.yaml spells out the code defaults, every section
    assert cfg.ingest.target.split.labels_per_class == 1


KIND_SPECIFIC = {"path", "name", "download", "max_per_class", "samples_per_class", "fonts_dir"}
"""Dataset keys only some kinds read: params.yaml shows those of the kinds it uses."""


def test_shipped_params_spell_out_every_key():
    raw = yaml.safe_load((REPO / "params.yaml").read_text())

    def missing(obj, data, prefix):
        for f in dataclasses.fields(obj):
            value = getattr(obj, f.name)
            exempt = f.name == "select_best" or (prefix.startswith("ingest.") and f.name in KIND_SPECIFIC)
            if f.name not in data and not exempt:  # finetune.select decides what select_best would
                yield prefix + f.name
            elif f.name in data and dataclasses.is_dataclass(value):
                yield from missing(value, data[f.name], f"{prefix}{f.name}.")

    assert list(missing(Config(), raw, "")) == []


def test_every_method_section_has_a_strategy_and_back():
    assert set(method_names()) == set(STRATEGIES)
    for name in method_names():
        assert isinstance(getattr(FinetuneConfig(), name), MethodConfig)


def test_unknown_key_is_rejected_with_its_path(tmp_path):
    p = tmp_path / "params.yaml"
    p.write_text(yaml.safe_dump({"finetune": {"epoch": 3}}))
    with pytest.raises(ConfigError) as e:
        load_config(p)
    msg = str(e.value)
    assert str(p) in msg and "'finetune.epoch'" in msg and "epochs" in msg
    assert "\n" not in msg


@pytest.mark.parametrize(
    ("data", "needle"),
    [
        ({"pretrain": {"epochs": "three"}}, "pretrain.epochs: expected int, got 'three'"),
        ({"pretrain": {"lr": True}}, "pretrain.lr: expected float"),
        ({"ingest": {"target": {"split": {"labels_per_class": -1}}}}, "ingest.target.split.labels_per_class"),
        ({"ingest": {"channels": 2}}, "ingest.channels: expected auto, 1 or 3, got 2"),
        ({"finetune": {"method": "magic"}}, "finetune.method: expected one of"),
        ({"base": 3}, "base: expected a mapping"),
        ({"ingest": {"source": {"kind": "ftp"}}}, "ingest.source.kind: expected one of synthetic_digits"),
    ],
)
def test_wrong_values_name_the_key(data, needle):
    with pytest.raises(ConfigError, match=None) as e:
        config_from_dict(data)
    assert needle in str(e.value)


def test_overrides_parse_like_dvc_exp_run():
    assert parse_override("finetune.epochs=2") == (["finetune", "epochs"], 2)
    assert parse_override("finetune.lr=0.01") == (["finetune", "lr"], 0.01)
    assert parse_override("ingest.target.split.labels_per_class=null") == (
        ["ingest", "target", "split", "labels_per_class"],
        None,
    )
    cfg = config_from_dict({}, ["finetune.epochs=2", "finetune.full_finetune.backbone_lr_mult=0.5", "pretrain.lr=1e-2"])
    assert cfg.finetune.epochs == 2 and cfg.finetune.full_finetune.backbone_lr_mult == 0.5
    assert cfg.pretrain.lr == 0.01  # an int-looking YAML float is accepted for a float field
    with pytest.raises(ConfigError, match="expected section.key=value"):
        parse_override("finetune.epochs")
    with pytest.raises(ConfigError, match="unknown key 'finetune.epocs'"):
        config_from_dict({}, ["finetune.epocs=2"])


def test_int_accepted_for_float_but_not_bool_for_int():
    assert config_from_dict({"pretrain": {"lr": 1}}).pretrain.lr == 1.0
    with pytest.raises(ConfigError, match="pretrain.epochs: expected int, got True"):
        config_from_dict({"pretrain": {"epochs": True}})


def test_round_trip_and_hash_stability():
    cfg = config_from_dict({}, ["finetune.epochs=4"])
    again = config_from_dict(yaml.safe_load(dump_config(cfg)))
    assert again == cfg
    assert cfg.section_hash("finetune") == again.section_hash("finetune")
    assert cfg.section_hash("finetune") != Config().section_hash("finetune")


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="params file not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("base: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)


def test_an_unknown_key_given_with_set_is_blamed_on_set_not_the_file():
    with pytest.raises(ConfigError) as e:
        load_config(REPO / "params.yaml", ["finetune.epoch=2"])
    msg = str(e.value)
    assert msg.startswith("--set: unknown key 'finetune.epoch'") and "params.yaml" not in msg


def test_the_kfp_section_belongs_to_the_kubeflow_adapter():
    from transferops.kubeflow.settings import load_kfp_config

    assert not hasattr(load_config(REPO / "params.yaml"), "kfp")  # the core config knows no cluster
    kfp = load_kfp_config(REPO / "params.yaml", ["kfp.distributed.nodes=2"])
    assert kfp.gpu.accelerator_type == "nvidia.com/gpu" and kfp.distributed.nodes == 2
    with pytest.raises(ConfigError, match="kfp.gpu.memory_limitt"):
        load_kfp_config(REPO / "params.yaml", ["kfp.gpu.memory_limitt=1Gi"])
    with pytest.raises(ConfigError, match="cannot take effect here"):
        load_config(REPO / "params.yaml", ["kfp.retries=1"])


def test_method_names_are_one_list_in_the_type_the_sections_and_the_strategies():
    assert sorted(get_args(MethodName)) == method_names() == sorted(STRATEGIES)


def test_enumerated_settings_list_what_their_registries_implement():
    from transferops.data.sources import _TORCHVISION
    from transferops.evaluation.selection import CRITERIA
    from transferops.training.loop import OPTIMIZERS, SCHEDULES

    hints = typing.get_type_hints(FinetuneConfig)
    assert set(get_args(hints["optimizer"])) == set(OPTIMIZERS)
    assert set(get_args(hints["scheduler"])) == set(SCHEDULES)
    assert set(get_args(hints["select"])) == {"last", "val", *SELECTION_CRITERIA} == {"last", "val", *CRITERIA}
    assert set(get_args(typing.get_type_hints(DatasetConfig)["name"])) == {"", *_TORCHVISION}


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("finetune.optimizer=sgdd", "--set: finetune.optimizer: expected one of adamw, adam, sgd, got 'sgdd'"),
        ("pretrain.scheduler=poly", "--set: pretrain.scheduler: expected one of cosine, constant, step, got 'poly'"),
        ("finetune.precision=fp8", "--set: finetune.precision: expected one of fp32, bf16, fp16, got 'fp8'"),
        ("finetune.select=best", "--set: finetune.select: expected one of last, val, snd, got 'best'"),
        ("finetune.method=finetune", "--set: finetune.method: expected one of cdan, coral, dann, fixmatch,"),
        ("finetune.dann.discriminator_norm=layer", "--set: finetune.dann.discriminator_norm: expected one of none,"),
        ("ingest.on_leakage=ignore", "--set: ingest.on_leakage: expected one of fail, warn, got 'ignore'"),
        ("ingest.source.name=MNST", '--set: ingest.source.name: expected one of "", MNIST, FashionMNIST,'),
        ("model.norm=layer", "--set: model.norm: expected one of batch, group, got 'layer'"),
        ("rank.score=auc", "--set: rank.score: expected one of logme, hscore,"),
        ("schedule.retrain_when=weekly", "--set: schedule.retrain_when: expected one of always, data_changed,"),
        ("base.device=gpu0", "--set: base.device: expected auto, cpu, cuda, cuda:N or mps, got 'gpu0'"),
        ("base.device=cuda:x", "--set: base.device: expected auto, cpu, cuda, cuda:N or mps, got 'cuda:x'"),
        ("pretrain.augment=affine+blur", "--set: pretrain.augment: expected policies among none, affine,"),
        ("finetune.fixmatch.strong_augment=jitter", "--set: finetune.fixmatch.strong_augment: expected policies"),
    ],
)
def test_enumerated_settings_are_refused_when_read_with_the_allowed_values(override, expected):
    with pytest.raises(ConfigError) as e:
        load_config(REPO / "params.yaml", [override])
    msg = str(e.value)
    assert msg.startswith(expected) and "\n" not in msg
    key = override.split("=")[0]
    assert f".{key}" not in msg and msg.count(f"{key}:") == 1  # named once, with its full path


def test_every_allowed_augment_policy_and_device_is_accepted():
    cfg = config_from_dict({}, [f"pretrain.augment={'+'.join(AUGMENT_POLICIES)}", "base.device=cuda:1"])
    assert cfg.pretrain.augment.split("+") == list(AUGMENT_POLICIES) and cfg.base.device == "cuda:1"
    for device in ("auto", "cpu", "cuda", "mps"):
        assert config_from_dict({"base": {"device": device}}).base.device == device


def test_a_partial_section_keeps_the_defaults_of_its_enclosing_section():
    cfg = config_from_dict({"ingest": {"target": {"kind": "image_folder", "path": "x"}}})
    assert cfg.ingest.target.kind == "image_folder" and cfg.ingest.target.path == "x"
    assert cfg.ingest.target.split == Config().ingest.target.split
    assert cfg.ingest.target.split.labels_per_class == 1  # the target's default, not SplitConfig's None
    cfg = config_from_dict({"ingest": {"source": {"kind": "image_folder", "path": "s"}, "target": {"split": {}}}})
    assert cfg.ingest.source.split == Config().ingest.source.split  # test_fraction 0.0, val 30
    assert cfg.ingest.source.split.test_fraction == 0.0
    cfg = config_from_dict({}, ["ingest.target.split.test_fraction=0.2"])  # --set on a file without the section
    assert (cfg.ingest.target.split.test_fraction, cfg.ingest.target.split.labels_per_class) == (0.2, 1)
    cfg = config_from_dict({"finetune": {"mcc": {"temperature": 2.5}}})
    assert cfg.finetune.mcc.trade_off == Config().finetune.mcc.trade_off and cfg.finetune.mcc.temperature == 2.5


def test_select_best_false_is_refused_for_finetune_naming_the_key_once():
    with pytest.raises(ConfigError) as e:
        config_from_dict({"finetune": {"select_best": False}})
    assert str(e.value).startswith("finetune.select_best: expected true") and str(e.value).count("select_best") == 1
