"""Every manifest the project can produce, against the upstream APIs it is sent to (tests/schemas/README.md):
TrainJobs against the CRD ``openAPIV3Schema`` of each Kubeflow Trainer release, with structural-schema
semantics (an undeclared field is an error: the server would drop it), and Katib Experiments against Katib
v0.19's OpenAPI types, its admission webhook's rules and, for the trial Job, the Kubernetes batch/v1 types."""

import itertools
import json
from pathlib import Path

import pytest

from tests import katib_rules
from tests.conftest import REPO
from tests.structural import Schema, declares
from transferops.config import config_from_dict, read_params
from transferops.kubeflow import katib, trainjob
from transferops.kubeflow.launch import launch_for
from transferops.kubeflow.settings import kfp_from_dict
from transferops.sweep import expand, katib_manifest

pytest.importorskip("kubernetes")

TRAINER_SCHEMAS = Path(__file__).parents[1] / "schemas" / "trainer"
TRAINER_RELEASES = ("v2.1.0", "v2.2.0", "v2.2.1", "v2.3.0")
IMAGE = "registry.example.com/transferops:1.4.0"
PLACEMENT = [
    "kfp.gpu.node_selector={cloud.google.com/gke-nodepool: gpu-spot}",
    "kfp.gpu.tolerations=[{key: nvidia.com/gpu, operator: Exists, effect: NoSchedule},"
    " {key: spot, operator: Equal, value: 'true', effect: NoExecute}]",
    "kfp.gpu.shm_size=8Gi",
    "kfp.kueue_queue=gpu-spot",
]
NO_PLACEMENT = ["kfp.gpu.node_selector={}", "kfp.gpu.tolerations=[]", "kfp.gpu.shm_size=''", "kfp.secrets=[]"]


SUPPORTED = ("v2.2.0", "v2.2.1", "v2.3.0")
"""The Trainer releases the project supports (docs/kubeflow.md); the floor is the first."""


def trainer_schema(version: str) -> Schema:
    return Schema(json.loads((TRAINER_SCHEMAS / f"trainjob-{version}.json").read_text()))


def kfp(overrides: list[str]):
    return kfp_from_dict(read_params(REPO / "params.yaml"), overrides)


def trainjobs():
    """``(label, manifest)`` for every shape of TrainJob: nodes x GPUs x stage x placement."""
    for nodes, gpus, stage, placed in itertools.product((1, 2, 16), (1, 4, 8), ("pretrain", "finetune"), (0, 1)):
        overrides = [f"kfp.distributed.nodes={nodes}", f"kfp.distributed.gpus_per_node={gpus}"]
        overrides += PLACEMENT if placed else NO_PLACEMENT
        launch = launch_for(kfp(overrides), IMAGE)
        spec = launch.trainjob_spec(stage, "7b5e2f7c-3f0e-4c1a", f"s3://bucket/state/run/{stage}/staging")
        yield f"{nodes}x{gpus}-{stage}-{'placed' if placed else 'plain'}", trainjob.trainjob_manifest(spec)


@pytest.fixture(scope="module")
def manifests() -> dict[str, dict]:
    return dict(trainjobs())


def test_the_declared_floor_is_the_oldest_supported_release():
    assert trainjob.MIN_TRAINER_VERSION == SUPPORTED[0]
    assert katib.MIN_KATIB_VERSION == katib_rules.KATIB_VERSION


def test_the_matrix_covers_placement_and_plain_jobs(manifests):
    placed = manifests["2x4-finetune-placed"]
    assert "runtimePatches" in placed["spec"]
    assert placed["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "gpu-spot"
    assert "runtimePatches" not in manifests["2x4-finetune-plain"]["spec"]
    assert len(manifests) == 36


@pytest.mark.parametrize("version", SUPPORTED)
def test_every_trainjob_is_stored_unchanged_by_each_supported_trainer(version, manifests):
    schema = trainer_schema(version)
    failures = {label: schema.errors(m) for label, m in manifests.items()}
    assert {label: e for label, e in failures.items() if e} == {}
    assert all(schema.prune(m) == (m, []) for m in manifests.values())


def test_below_the_floor_the_placement_is_dropped(manifests):
    """Trainer v2.1.0 (what an older install has) knows no runtimePatches: node selector, tolerations and
    /dev/shm would be pruned without a word. That is why the floor is v2.2.0 and the launcher reads back."""
    schema = trainer_schema("v2.1.0")
    assert schema.errors(manifests["2x4-finetune-placed"]) == [
        "spec.runtimePatches: not declared by the schema (the server drops it)"
    ]
    assert schema.errors(manifests["2x4-finetune-plain"]) == []  # a job without placement runs there as well


def test_field_since_is_the_first_release_that_declares_each_field(manifests):
    """FIELD_SINCE (used by the read-back check's message) against the vendored schemas: every field of our
    manifests that some release lacks is listed, with the first release that has it."""
    paths = set()

    def walk(node, path):
        if isinstance(node, dict):
            for k, v in node.items():
                if not (path == "" and k == "metadata") and "." not in k and "/" not in k:  # no map keys
                    paths.add(f"{path}.{k}".lstrip("."))
                    walk(v, f"{path}.{k}".lstrip("."))
        elif isinstance(node, list):
            for v in node:
                walk(v, path)

    for m in manifests.values():
        walk(m, "")
    schemas = {v: trainer_schema(v) for v in TRAINER_RELEASES}
    first = {}
    for path in sorted(paths):
        having = [v for v in TRAINER_RELEASES if declares(schemas[v], path)]
        if having != list(TRAINER_RELEASES) and not any(path.startswith(p + ".") for p in first):
            first[path] = having[0]
    assert first == trainjob.FIELD_SINCE


def test_the_validator_can_fail(manifests):
    schema = trainer_schema("v2.3.0")
    m = json.loads(json.dumps(manifests["2x4-finetune-placed"]))
    m["spec"]["trainer"]["numProcsPerNode"] = 4
    m["spec"]["trainer"]["numNodes"] = "2"
    m["spec"]["runtimePatches"][0]["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"][0]["template"]["spec"][
        "template"
    ]["spec"]["tolerations"][0]["operator"] = "Maybe"
    m["spec"]["podTemplateOverrides"] = []
    errors = schema.errors(m)
    assert "spec.trainer.numProcsPerNode: not declared by the schema (the server drops it)" in errors
    assert "spec.podTemplateOverrides: not declared by the schema (the server drops it)" in errors
    assert any(e.startswith("spec.trainer.numNodes: str '2' where the schema wants integer") for e in errors)
    assert len(errors) == 3  # toleration operator is a free string in the CRD (the pod API checks it)
    pruned, dropped = schema.prune(m)
    assert sorted(dropped) == ["spec.podTemplateOverrides", "spec.trainer.numProcsPerNode"]
    assert "numProcsPerNode" not in pruned["spec"]["trainer"]


def test_int_or_string_and_required_are_checked(manifests):
    m = json.loads(json.dumps(manifests["1x1-pretrain-plain"]))
    m["spec"]["trainer"]["numProcPerNode"] = "auto"  # x-kubernetes-int-or-string in v2.1, an integer since v2.2
    assert trainer_schema("v2.1.0").errors(m) == []
    schema = trainer_schema("v2.3.0")
    assert schema.errors(m) == ["spec.trainer.numProcPerNode: str 'auto' where the schema wants integer"]
    m["spec"]["trainer"]["numProcPerNode"] = 1.5
    del m["spec"]["runtimeRef"]
    errors = schema.errors(m)
    assert "spec.runtimeRef: required" in errors
    assert any(e.startswith("spec.trainer.numProcPerNode: float 1.5") for e in errors)


# ---------------------------------------------------------------------------------------------------------------
# Katib


def sweep_experiment(n_points: int, overrides: list[str] = ()) -> dict:
    cfg = config_from_dict(read_params(REPO / "params.yaml"))
    points = expand(["finetune.lr=" + ",".join(f"{0.001 * (i + 1):g}" for i in range(n_points))])
    return katib_manifest(cfg, points, f"sweep-{n_points}", IMAGE, kfp(list(overrides)), ["finetune.epochs=2"])


@pytest.mark.parametrize("n_points", [1, 2, 3, 4, 5, 12])
def test_every_sweep_experiment_passes_katib(n_points):
    m = sweep_experiment(n_points)
    assert katib_rules.all_errors(m) == []
    spec = m["spec"]  # each count within Katib's rules, parallelism from kfp.sweep_parallelism (4)
    assert spec["maxTrialCount"] == n_points
    assert spec["maxFailedTrialCount"] == min(n_points, 3)
    assert spec["parallelTrialCount"] == min(n_points, 4)


def test_parallel_trials_follow_sweep_parallelism():
    assert sweep_experiment(12, ["kfp.sweep_parallelism=6"])["spec"]["parallelTrialCount"] == 6
    assert sweep_experiment(12, ["kfp.sweep_parallelism=1"])["spec"]["parallelTrialCount"] == 1
    assert sweep_experiment(3, ["kfp.sweep_parallelism=6"])["spec"]["parallelTrialCount"] == 3
    assert sweep_experiment(12, ["kfp.katib.max_failed_trials=0"])["spec"]["maxFailedTrialCount"] == 0


def test_median_stop_passes_katib_and_is_off_by_default():
    assert "earlyStopping" not in sweep_experiment(5)["spec"]
    on = ["kfp.katib.early_stopping.algorithm=medianstop", "kfp.katib.early_stopping.start_step=2"]
    m = sweep_experiment(5, on)
    assert m["spec"]["earlyStopping"] == {
        "algorithmName": "medianstop",
        "algorithmSettings": [{"name": "min_trials_required", "value": "3"}, {"name": "start_step", "value": "2"}],
    }
    assert katib_rules.all_errors(m) == []


SPACE = {
    "finetune.lr": {"type": "double", "min": 1e-4, "max": 1e-2, "step": 1e-3},
    "finetune.method": {"type": "categorical", "values": ["dann", "mcc"]},
    "finetune.batch_size": {"type": "discrete", "values": [32, 64]},
    "finetune.epochs": {"type": "int", "min": 2, "max": 8, "step": 2},
}


@pytest.mark.parametrize(
    "algorithm, max_trials", list(itertools.product(katib.ALGORITHMS, (1, 2, 12))), ids=lambda v: str(v)
)
def test_every_algorithm_and_count_passes_katib(algorithm, max_trials):
    m = katib.experiment_manifest(
        "tune-x",
        "ml",
        IMAGE,
        ["transferops", "trial"],
        SPACE,
        algorithm=algorithm,
        max_trials=max_trials,
        parallel_trials=1,
        max_failed_trials=min(max_trials, 3),
        early_stopping={"algorithm": "medianstop", "start_step": 3},
        goal=0.9,
        resources={"limits": {"nvidia.com/gpu": 1}},
        node_selector={"pool": "gpu"},
        tolerations=[{"key": "nvidia.com/gpu", "operator": "Exists"}],
        secret_env=[("s3-credentials", {"access_key_id": "AWS_ACCESS_KEY_ID"})],
        shm_size="8Gi",
    )
    assert katib_rules.all_errors(m) == []


def test_katib_checks_can_fail():
    m = sweep_experiment(2)
    m["spec"]["maxFailedTrialCount"] = 3
    m["spec"]["parallelTrialCount"] = 4
    m["spec"]["trialTemplate"]["trialParamters"] = []
    trial = m["spec"]["trialTemplate"]["trialSpec"]
    trial["spec"]["template"]["spec"]["containers"][0]["imagePullPolicyy"] = "Always"
    trial["spec"]["template"]["spec"]["containers"][0]["command"].append("${trialParameters.nope}")
    errors = katib_rules.all_errors(m)
    assert "spec.trialTemplate.trialParamters: not declared by the schema (the server drops it)" in errors
    assert "spec.maxFailedTrialCount: should be less than or equal to spec.maxTrialCount" in errors
    assert "spec.parallelTrialCount: should be less than or equal to spec.maxTrialCount" in errors
    assert (
        "spec.trialTemplate.trialSpec.spec.template.spec.containers[0].imagePullPolicyy: not a field of V1Container"
        " (dropped)" in errors
    )
    assert any("${trialParameters.nope}" in e for e in errors)
    assert len(errors) == 5


def test_a_preempted_trial_resumes_under_its_own_run_key():
    """The trial Job replaces a disrupted pod without failing the trial, and the new pod's run key is the
    trial's name (Katib's ${trialSpec.Name}), under which the training state was saved."""
    m = sweep_experiment(3)
    job = m["spec"]["trialTemplate"]["trialSpec"]["spec"]
    assert job["backoffLimit"] == 0
    assert job["podFailurePolicy"] == {
        "rules": [{"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]}]
    }
    assert job["template"]["spec"]["restartPolicy"] == "Never"  # podFailurePolicy requires it
    env = {e["name"]: e for e in job["template"]["spec"]["containers"][0]["env"]}
    assert env["TRANSFEROPS_RUN_KEY"] == {"name": "TRANSFEROPS_RUN_KEY", "value": "${trialParameters.trialName}"}
    (name_param,) = [p for p in m["spec"]["trialTemplate"]["trialParameters"] if p["name"] == "trialName"]
    assert name_param["reference"] == "${trialSpec.Name}"


def test_the_new_kfp_keys_are_in_params_yaml_with_the_code_defaults():
    from transferops.kubeflow.settings import KatibConfig, KfpConfig

    shipped = kfp([])
    assert shipped.katib == KatibConfig() and shipped.kueue_queue == KfpConfig().kueue_queue == ""
    assert "kueue_queue" in read_params(REPO / "params.yaml")["kfp"]


def test_the_katib_sweep_command_writes_a_manifest_katib_accepts(tmp_path, capsys, caplog):
    import yaml

    from transferops.cli import main

    params = read_params(REPO / "params.yaml")
    params["kfp"]["sweep_parallelism"] = 1
    params["base"]["state_uri"] = ""
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    args = ["sweep", "--params", str(tmp_path / "params.yaml"), "--engine", "katib", "--dry-run", "--name", "lr-x"]
    assert main([*args, "--grid", "finetune.lr=0.001,0.003"]) == 0
    m = yaml.safe_load(capsys.readouterr().out)
    assert katib_rules.all_errors(m) == []
    assert (m["spec"]["maxTrialCount"], m["spec"]["parallelTrialCount"], m["spec"]["maxFailedTrialCount"]) == (2, 1, 2)
    assert any("restarts training from scratch" in r.getMessage() for r in caplog.records)
