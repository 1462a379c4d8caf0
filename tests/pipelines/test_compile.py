"""The compiled IR YAML: DAG edges, node pools, retries, caching and parameter defaults from params.yaml."""

import json
import re
import shutil
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO

pytest.importorskip("kfp")


def _compile(params: Path, out: Path, overrides=()) -> dict:
    from pipelines.transfer_pipeline import compile_pipeline

    compile_pipeline(params, out, overrides)
    docs = list(yaml.safe_load_all(out.read_text()))
    return {"spec": docs[0], "platform": docs[1] if len(docs) > 1 else {}}


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    return _compile(REPO / "params.yaml", tmp_path_factory.mktemp("ir") / "p.yaml")


def _tasks(spec: dict) -> dict:
    """Every task: the root DAG's and those of the retrain condition's sub-DAG."""
    root = spec["root"]["dag"]["tasks"]
    cond = next(t for t in root.values() if t.get("triggerPolicy"))
    inner = spec["components"][cond["componentRef"]["name"]]["dag"]["tasks"]
    return {**{k: v for k, v in root.items() if not v.get("triggerPolicy")}, **inner}


def ir_edges(spec: dict) -> set[tuple[str, str, str]]:
    """(producer task, consumer task, artifact) of every artifact input, through the condition's channels."""
    root = spec["root"]["dag"]["tasks"]
    cond = next(t for t in root.values() if t.get("triggerPolicy"))
    channels = {k: v["taskOutputArtifact"] for k, v in cond["inputs"].get("artifacts", {}).items()}
    edges = set()
    for name, task in _tasks(spec).items():
        for artifact, source in task["inputs"].get("artifacts", {}).items():
            out = source.get("taskOutputArtifact") or channels[source["componentInputArtifact"]]
            assert out["outputArtifactKey"] == artifact  # an input is named after the artifact it takes
            edges.add((out["producerTask"], name, artifact))
    return edges


@pytest.mark.parametrize("sets", [[], ["finetune.method=dann"], ["finetune.method=shot"]])
def test_the_compiled_dag_is_the_declared_graph(tmp_path, sets):
    """Tasks, their order and their artifact edges come from transferops.stages.graph and nothing else."""
    from transferops.config import load_config
    from transferops.stages import graph

    spec = _compile(REPO / "params.yaml", tmp_path / "p.yaml", sets)["spec"]
    assert set(_tasks(spec)) == set(graph.NAMES)
    assert ir_edges(spec) == graph.edges(load_config(REPO / "params.yaml", sets))
    # the gate: every stage after schedule is inside the condition on its decision, which is never cached
    root = spec["root"]["dag"]["tasks"]
    cond = next(t for t in root.values() if t.get("triggerPolicy"))
    assert "pipelinechannel--schedule-Output'] == true" in cond["triggerPolicy"]["condition"]
    assert {n for n in root if n in graph.NAMES} == {n for n in graph.NAMES if not graph.gated(n)}
    assert _tasks(spec)["schedule"]["cachingOptions"].get("enableCache", False) is False


def test_every_component_takes_and_gives_the_artifacts_of_its_stage():
    from components import stages as c
    from transferops.stages import graph

    ui_only = ("system.Metrics", "system.ClassificationMetrics", "system.HTML")  # what the KFP UI shows besides
    for stage in graph.GRAPH:
        spec = getattr(c, stage.name).component_spec
        inputs = {k for k, v in (spec.inputs or {}).items() if v.type.startswith("system.")}
        outputs = {k for k, v in (spec.outputs or {}).items() if v.type.startswith("system.")}
        assert inputs == set(stage.all_inputs), stage.name
        assert set(stage.outputs) <= outputs, stage.name
        assert all(spec.outputs[k].type.startswith(ui_only) for k in outputs - set(stage.outputs)), stage.name


def test_gpu_stages_get_accelerators_and_retries_others_do_not(compiled):
    spec = compiled["spec"]
    executors = spec["deploymentSpec"]["executors"]
    tasks = _tasks(spec)
    for name in ("pretrain", "finetune", "baseline", "evaluate", "ingest", "rank", "schedule", "register"):
        exe = executors[spec["components"][tasks[name]["componentRef"]["name"]]["executorLabel"]]
        res = exe["container"].get("resources", {})
        assert exe["container"]["image"].startswith("ghcr.io/transferops/transferops:")
        if name in ("pretrain", "finetune", "baseline", "evaluate"):
            assert res["accelerator"]["resourceType"] == "nvidia.com/gpu"
            assert int(res["accelerator"]["resourceCount"]) == 1
            assert res["memoryLimit"] == pytest.approx(34.359738368)  # 32Gi in GB
            assert tasks[name]["retryPolicy"]["maxRetryCount"] == 3
            assert tasks[name]["retryPolicy"]["backoffDuration"] == "60s"
        else:
            assert "accelerator" not in res
            assert "retryPolicy" not in tasks[name]
    assert tasks["ingest"]["cachingOptions"]["enableCache"] is True
    assert tasks["pretrain"]["cachingOptions"]["enableCache"] is True
    assert tasks["register"]["cachingOptions"].get("enableCache", False) is False


def test_kubernetes_settings_node_pool_shm_and_secrets(compiled):
    spec, platform = compiled["spec"], compiled["platform"]
    k8s = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    tasks = _tasks(spec)

    def executor(name):
        return k8s[spec["components"][tasks[name]["componentRef"]["name"]]["executorLabel"]]

    gpu, cpu = executor("finetune"), executor("ingest")
    assert gpu["tolerations"] == [{"effect": "NoSchedule", "key": "nvidia.com/gpu", "operator": "Exists"}]
    assert "tolerations" not in cpu
    assert gpu["emptyDirMounts"][0]["mountPath"] == "/dev/shm" and gpu["emptyDirMounts"][0]["medium"] == "Memory"
    secrets = {s["secretName"] for s in gpu["secretAsEnv"]}
    assert secrets == {"mlflow-credentials", "s3-credentials"} == {s["secretName"] for s in cpu["secretAsEnv"]}
    envs = {kv["envVar"] for s in gpu["secretAsEnv"] for kv in s["keyToEnv"]}
    assert {"MLFLOW_TRACKING_URI", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} <= envs
    assert gpu["imagePullPolicy"] == "IfNotPresent"


def test_parameters_default_from_params_json(tmp_path):
    params = tmp_path / "params.yaml"
    shutil.copy(REPO / "params.yaml", params)
    text = params.read_text()
    params.write_text(
        re.sub(r"^  method: \w+", "  method: mcc", text, count=1, flags=re.M)
        .replace("  seed: 0", "  seed: 7")
        .replace('cpu_limit: "8"', 'cpu_limit: "12"')
        .replace("node_selector: {}     # e.g.", "node_selector: {pool: gpu-spot}     # e.g.")
    )
    compiled = _compile(params, tmp_path / "p.yaml")
    inputs = compiled["spec"]["root"]["inputDefinitions"]["parameters"]
    assert inputs["method"]["defaultValue"] == "mcc"
    assert inputs["seed"]["defaultValue"] == 7
    assert inputs["labels_per_class"]["defaultValue"] == 1
    assert json.loads(inputs["params_json"]["defaultValue"])["finetune"]["method"] == "mcc"
    k8s = compiled["platform"]["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    assert any(e.get("nodeSelector", {}).get("labels") == {"pool": "gpu-spot"} for e in k8s.values())
    executors = compiled["spec"]["deploymentSpec"]["executors"]
    assert any(e["container"].get("resources", {}).get("cpuLimit") == 12 for e in executors.values())


def test_every_task_reads_its_run_id_from_its_pod_label(compiled):
    k8s = compiled["platform"]["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    assert len(k8s) == 8
    for (
        executor
    ) in k8s.values():  # the key of training state and of the MLflow parent run, without a cache-busting input
        assert {"name": "TRANSFEROPS_RUN_KEY", "fieldPath": "metadata.labels['pipeline/runid']"} in executor[
            "fieldPathAsEnv"
        ]


def test_set_applies_at_compile_time_and_kfp_keys_are_refused_at_run_time(tmp_path):
    from transferops.errors import ConfigError
    from transferops.kubeflow import kfp_io

    sel = ["kfp.gpu.node_selector={cloud.google.com/gke-nodepool: gpu-spot}", "kfp.retries=5", "finetune.epochs=2"]
    compiled = _compile(REPO / "params.yaml", tmp_path / "p.yaml", sel)
    k8s = compiled["platform"]["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    selectors = [e.get("nodeSelector", {}).get("labels") for e in k8s.values()]
    assert selectors.count({"cloud.google.com/gke-nodepool": "gpu-spot"}) == 4  # the four GPU tasks
    assert _tasks(compiled["spec"])["finetune"]["retryPolicy"]["maxRetryCount"] == 5
    params = compiled["spec"]["root"]["inputDefinitions"]["parameters"]["params_json"]["defaultValue"]
    assert json.loads(params)["finetune"]["epochs"] == 2
    with pytest.raises(ConfigError) as e:  # a run-time override of a compiled-in setting fails, with why
        kfp_io.component_config(params, 0, "finetune", 1, ["kfp.retries=1"])
    assert "cannot take effect here" in str(e.value) and "\n" not in str(e.value)
    assert kfp_io.component_config(params, 3, "mcc", 0, ["finetune.lr=0.01"]).finetune.lr == 0.01


def test_cli_compile_writes_the_default_path(tmp_path, monkeypatch):
    from transferops.cli import main

    out = tmp_path / "x.yaml"
    assert main(["pipeline", "compile", "--params", str(REPO / "params.yaml"), "--out", str(out)]) == 0
    assert "pipelineInfo" in out.read_text()
    sel = "kfp.gpu.node_selector={pool: gpu-a100}"
    assert main(["pipeline", "compile", "--params", str(REPO / "params.yaml"), "--out", str(out), "--set", sel]) == 0
    assert "gpu-a100" in out.read_text()


def test_distribution_on_compiles_a_trainjob_launch_into_the_training_tasks(tmp_path):
    sets = ["kfp.distributed.nodes=2", "kfp.distributed.gpus_per_node=4", "base.state_uri=s3://bucket/state"]
    tasks = _tasks(_compile(REPO / "params.yaml", tmp_path / "p.yaml", sets)["spec"])
    for name in ("pretrain", "finetune"):
        launch = json.loads(tasks[name]["inputs"]["parameters"]["launch"]["runtimeValue"]["constant"])
        job = launch["trainjob"]
        assert (job["nodes"], job["gpus_per_node"], job["runtime"]) == (2, 4, "torch-distributed")
        assert job["image"].startswith("ghcr.io/transferops/transferops:")
        assert job["resources"]["limits"]["nvidia.com/gpu"] == 4
        assert [s[0] for s in job["secret_env"]] == ["mlflow-credentials", "s3-credentials"]
    # off by default; several GPUs in one pod run torchrun there instead
    plain = _tasks(_compile(REPO / "params.yaml", tmp_path / "q.yaml", ["kfp.gpu.accelerator_limit=4"])["spec"])
    launch = json.loads(plain["finetune"]["inputs"]["parameters"]["launch"]["runtimeValue"]["constant"])
    assert launch == {"nproc": 4, "trainjob": {}}


def test_a_source_free_method_compiles_a_finetune_task_without_the_source_data(tmp_path):
    """``shot`` adapts with the source model alone: its finetune task has no source_data input, so the source
    dataset never reaches the pod; other methods keep the edge."""

    def finetune_inputs(sets):
        task = _tasks(_compile(REPO / "params.yaml", tmp_path / "p.yaml", sets)["spec"])["finetune"]
        return set(task["inputs"].get("artifacts", {}))

    assert finetune_inputs(["finetune.method=shot"]) == {"target_data", "source_model"}
    assert finetune_inputs(["finetune.method=dann"]) == {"source_data", "target_data", "source_model"}


def test_a_method_that_needs_the_source_data_refuses_a_task_without_it():
    from transferops.config import Config
    from transferops.errors import ConfigError
    from transferops.kubeflow import kfp_io

    cfg = Config()
    shot = kfp_io.component_config(json.dumps(cfg.to_dict()), 0, "shot", 0, [])
    assert kfp_io.source_data_input(shot, None) == {}
    dann = kfp_io.component_config(json.dumps(cfg.to_dict()), 0, "dann", 0, [])
    with pytest.raises(ConfigError, match="dann trains on the source data") as e:
        kfp_io.source_data_input(dann, None)
    assert "\n" not in str(e.value)
    assert kfp_io.source_data_input(dann, "/x") == {"source_data": "/x"}


def test_in_trainjob_mode_the_launching_tasks_hold_no_gpu_in_pod_and_torchrun_modes_keep_theirs(tmp_path):
    def placement(sets):
        compiled = _compile(REPO / "params.yaml", tmp_path / "p.yaml", sets)
        spec, k8s = compiled["spec"], compiled["platform"]["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
        out = {}
        for name, task in _tasks(spec).items():
            label = spec["components"][task["componentRef"]["name"]]["executorLabel"]
            res = spec["deploymentSpec"]["executors"][label]["container"].get("resources", {})
            gpus = int(res.get("accelerator", {}).get("resourceCount", 0))
            out[name] = (gpus, bool(k8s[label].get("tolerations")), "retryPolicy" in task)
        return out

    trainjob = placement(["kfp.distributed.nodes=2", "base.state_uri=s3://bucket/state"])
    for name in ("pretrain", "finetune"):  # no accelerator, no GPU-pool toleration; still retried
        assert trainjob[name] == (0, False, True), name
    assert trainjob["baseline"] == trainjob["evaluate"] == (1, True, True)  # they train / infer in their pod
    in_pod, torchrun = placement([]), placement(["kfp.gpu.accelerator_limit=4"])
    assert in_pod["pretrain"] == in_pod["finetune"] == (1, True, True)
    assert torchrun["pretrain"] == torchrun["finetune"] == (4, True, True)
