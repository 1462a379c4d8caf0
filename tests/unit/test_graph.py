"""The declared stage graph: well formed, complete, and the one source dvc.yaml, the CLI and the launcher read."""

import importlib
import inspect

import pytest
import yaml

from tests.conftest import REPO
from transferops.config import Config, load_config
from transferops.errors import ConfigError
from transferops.paths import ARTIFACTS
from transferops.stages import dvc, graph


def test_every_input_is_produced_by_an_earlier_stage_and_every_artifact_has_a_folder():
    seen: set[str] = set()
    for stage in graph.GRAPH:
        assert set(stage.all_inputs) <= seen, stage.name
        assert set(stage.outputs).isdisjoint(seen), f"{stage.name} produces an artifact twice"
        seen |= set(stage.outputs)
    assert seen == set(ARTIFACTS)


def test_every_stage_is_a_library_module_with_a_run_function():
    for stage in graph.GRAPH:
        run = importlib.import_module(f"transferops.stages.{stage.name}").run
        assert list(inspect.signature(run).parameters)[:2] == ["cfg", "tracker"], stage.name
        assert ("restart" in inspect.signature(run).parameters) == stage.resumable, stage.name


def test_every_declared_param_exists_in_params_yaml_and_in_the_config():
    shipped, defaults = yaml.safe_load((REPO / "params.yaml").read_text()), Config().to_dict()
    for stage in graph.GRAPH:
        for key in stage.params:
            for tree in (shipped, defaults):
                node = tree
                for part in key.split("."):
                    assert isinstance(node, dict) and part in node, f"{stage.name}: {key}"
                    node = node[part]


def test_the_committed_dvc_yaml_is_the_generated_one():
    assert (REPO / "dvc.yaml").read_text() == dvc.render(), "run `transferops dvc-yaml` and commit dvc.yaml"


def test_dvc_yaml_declares_what_the_graph_says():
    stages = yaml.safe_load(dvc.render())["stages"]
    assert list(stages) == list(graph.NAMES)
    assert stages["baseline"]["params"].count("finetune.method") == 0  # a new method keeps the baseline
    assert "finetune.epochs" in stages["baseline"]["params"] and "pretrain.lr" in stages["baseline"]["params"]
    assert "pretrain.augment" in stages["baseline"]["params"] and "finetune.augment" not in stages["baseline"]["params"]
    assert "artifacts/pretrain/model.pt" not in stages["baseline"]["deps"]
    assert {"always_changed"} <= set(stages["schedule"]) and {"always_changed"} <= set(stages["register"])
    for name in graph.NAMES:
        gated = graph.gated(name)
        assert stages[name]["cmd"].endswith("--obey-schedule") == gated, name
        assert ("artifacts/schedule/gate.json" in stages[name]["deps"]) == gated, name
    assert stages["evaluate"]["deps"][:4] == [
        "artifacts/ingest/target",
        "artifacts/pretrain/model.pt",
        "artifacts/finetune/model.pt",
        "artifacts/baseline",
    ]
    assert "src/transferops" in stages["ingest"]["deps"]  # the library, not the benchmarks (transferops_bench)


def test_upstream_edges_and_gating():
    cfg = Config()
    assert graph.upstream("finetune", cfg) == ("ingest", "rank", "pretrain", "finetune")
    assert graph.upstream("evaluate") == ("ingest", "rank", "pretrain", "finetune", "baseline", "evaluate")
    assert [n for n in graph.NAMES if graph.gated(n)] == ["pretrain", "finetune", "baseline", "evaluate", "register"]
    source_free = load_config(REPO / "params.yaml", ["finetune.method=shot"])
    assert ("ingest", "finetune", "source_data") not in graph.edges(source_free)
    assert ("ingest", "finetune", "source_data") in graph.edges(
        load_config(REPO / "params.yaml", ["finetune.method=dann"])
    )
    with pytest.raises(ConfigError, match="unknown stage 'train'"):
        graph.stage("train")


def test_the_cli_has_one_subcommand_per_stage_with_restart_where_resumable():
    from transferops.cli import build_parser

    sub = next(a for a in build_parser()._actions if a.dest == "command")
    for stage in graph.GRAPH:
        options = {o for a in sub.choices[stage.name]._actions for o in a.option_strings}
        assert ("--restart" in options) == stage.resumable, stage.name


@pytest.mark.parametrize(
    "grid, per_point",
    [
        ([["finetune.method=dann"], ["finetune.method=mcc"]], ("finetune", "evaluate")),
        ([["finetune.epochs=1"], ["finetune.epochs=2"]], ("finetune", "baseline", "evaluate")),
        ([["finetune.augment=none"], ["finetune.augment=affine"]], ("finetune", "evaluate")),  # not the baseline
        ([["evaluate.ece_bins=10"]], ("evaluate",)),
    ],
)
def test_a_sweep_shares_every_stage_its_grid_does_not_change(grid, per_point):
    pytest.importorskip("kfp")
    from pipelines.transfer_pipeline import sweep_stages

    shared, looped = sweep_stages(grid)
    assert looped == per_point
    assert sorted(shared + looped) == sorted(graph.upstream("evaluate"))
