from pathlib import Path

import pytest
import yaml

from transferops.config import (
    Config,
    FinetuneConfig,
    MethodConfig,
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
    assert cfg.finetune.method in method_names()
    # params.yaml spells out the defaults: a key whose value differs from the code default is deliberate
    assert cfg.model == Config().model
    assert cfg.ingest.target.split.labels_per_class == 1


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


def test_the_renamed_method_and_section_say_what_they_are_called_now():
    with pytest.raises(ConfigError, match="finetune.method: 'finetune' was renamed 'full_finetune'"):
        config_from_dict({"finetune": {"method": "finetune"}})
    with pytest.raises(ConfigError, match="finetune.finetune: renamed finetune.full_finetune"):
        config_from_dict({"finetune": {"finetune": {"backbone_lr_mult": 0.5}}})
