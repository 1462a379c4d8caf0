"""TrainJob launcher: the manifest against the trainer.kubeflow.org/v1alpha1 schema, and run_trainjob through the
real ``kubernetes`` client against a fake API server (tests/kube_fake.py)."""

import copy
import logging
import socket

import pytest

from tests.kube_fake import condition
from transferops.errors import ConfigError, TrainingError
from transferops.kubeflow import kube
from transferops.kubeflow.trainjob import TrainJobSpec, job_name, run_trainjob, trainjob_manifest

pytest.importorskip("kubernetes")

NAME = "finetune-run-1-0a1b2c3d"
JOBS = "/apis/trainer.kubeflow.org/v1alpha1/namespaces/ml/trainjobs"
COMMAND = ["transferops", "finetune", "--params", "/workspace/params.yaml"]


def gpu_spec(**changes) -> TrainJobSpec:
    """2 nodes x 4 GPUs on a tainted spot pool, with secrets and an 8 GiB /dev/shm."""
    fields = dict(
        name=NAME,
        namespace="ml",
        image="registry.example.com/transferops:1.4.0",
        command=COMMAND,
        num_nodes=2,
        procs_per_node=4,
        resources_per_node={
            "requests": {"cpu": "8", "memory": "32Gi", "nvidia.com/gpu": 4},
            "limits": {"cpu": 16, "memory": "64Gi", "nvidia.com/gpu": 4},
        },
        node_selector={"cloud.google.com/gke-nodepool": "gpu-spot"},
        tolerations=[
            {"key": "nvidia.com/gpu", "operator": "Exists", "value": "", "effect": "NoSchedule"},
            {"key": "spot", "operator": "Equal", "value": "true", "effect": "NoExecute", "tolerationSeconds": 300},
        ],
        secret_env=[
            ("mlflow-credentials", {"tracking_uri": "MLFLOW_TRACKING_URI", "password": "MLFLOW_TRACKING_PASSWORD"}),
            ("s3-credentials", {"access_key_id": "AWS_ACCESS_KEY_ID"}),
        ],
        env={"TRANSFEROPS_PARENT_RUN_ID": "run-1"},
        shm_size="8Gi",
    )
    fields.update(changes)
    return TrainJobSpec(**fields)


def job_status(active=0, ready=0, succeeded=0, failed=0) -> dict:
    return {"name": "node", "active": active, "ready": ready, "succeeded": succeeded, "failed": failed, "suspended": 0}


# ---------------------------------------------------------------------------------------------------------------
# the manifest


def test_manifest_fields_follow_the_v1alpha1_schema():
    m = trainjob_manifest(gpu_spec())
    assert m["apiVersion"] == "trainer.kubeflow.org/v1alpha1"
    assert m["kind"] == "TrainJob"
    assert m["metadata"] == {"name": NAME, "namespace": "ml", "labels": {"app.kubernetes.io/managed-by": "transferops"}}
    assert set(m["spec"]) == {"runtimeRef", "trainer", "runtimePatches"}
    assert m["spec"]["runtimeRef"] == {
        "name": "torch-distributed",
        "apiGroup": "trainer.kubeflow.org",
        "kind": "ClusterTrainingRuntime",
    }
    assert m["spec"]["trainer"] == {
        "image": "registry.example.com/transferops:1.4.0",
        "command": ["torchrun", "--no-python", *COMMAND],
        "numNodes": 2,
        "numProcPerNode": 4,
        "resourcesPerNode": {
            "requests": {"cpu": "8", "memory": "32Gi", "nvidia.com/gpu": "4"},
            "limits": {"cpu": "16", "memory": "64Gi", "nvidia.com/gpu": "4"},
        },
        "env": [
            {"name": "TRANSFEROPS_PARENT_RUN_ID", "value": "run-1"},
            {
                "name": "MLFLOW_TRACKING_URI",
                "valueFrom": {"secretKeyRef": {"name": "mlflow-credentials", "key": "tracking_uri"}},
            },
            {
                "name": "MLFLOW_TRACKING_PASSWORD",
                "valueFrom": {"secretKeyRef": {"name": "mlflow-credentials", "key": "password"}},
            },
            {
                "name": "AWS_ACCESS_KEY_ID",
                "valueFrom": {"secretKeyRef": {"name": "s3-credentials", "key": "access_key_id"}},
            },
        ],
    }
    assert "args" not in m["spec"]["trainer"]  # the whole command is in `command`: the runtime image's is replaced
    (patch,) = m["spec"]["runtimePatches"]
    assert patch["manager"] == "transferops.io/launcher"
    (node_job,) = patch["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"]
    assert node_job["name"] == "node"
    assert node_job["template"]["spec"]["template"] == {
        "spec": {
            "nodeSelector": {"cloud.google.com/gke-nodepool": "gpu-spot"},
            "tolerations": [
                {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"},
                {"key": "spot", "operator": "Equal", "value": "true", "effect": "NoExecute", "tolerationSeconds": 300},
            ],
            "volumes": [{"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": "8Gi"}}],
            "containers": [{"name": "node", "volumeMounts": [{"name": "dshm", "mountPath": "/dev/shm"}]}],
        }
    }


def test_manifest_survives_the_trainer_api_models_unchanged():
    """kubeflow_trainer_api (2.3.0, generated from the CRD's OpenAPI) drops any field it does not know: a
    misspelt or misplaced field would not come back."""
    models = pytest.importorskip("kubeflow_trainer_api.models")
    m = trainjob_manifest(gpu_spec())
    assert models.TrainerV1alpha1TrainJob.from_dict(m).to_dict() == m
    misspelt = copy.deepcopy(m)
    misspelt["spec"]["trainer"]["numProcsPerNode"] = 4
    assert models.TrainerV1alpha1TrainJob.from_dict(misspelt).to_dict() != misspelt  # the check can fail


def test_a_plain_single_node_job_has_no_patches_and_no_env():
    spec = TrainJobSpec(
        name="pretrain-x-12345678", namespace="default", image="img:1", command=["transferops", "pretrain"]
    )
    m = trainjob_manifest(spec)
    assert m["spec"] == {
        "runtimeRef": {
            "name": "torch-distributed",
            "apiGroup": "trainer.kubeflow.org",
            "kind": "ClusterTrainingRuntime",
        },
        "trainer": {
            "image": "img:1",
            "command": ["torchrun", "--no-python", "transferops", "pretrain"],
            "numNodes": 1,
            "numProcPerNode": 1,
        },
    }


def test_the_command_reads_nodes_ranks_and_master_from_the_runtime_env(monkeypatch):
    """torchrun's own parser, given the PET_* variables the torch runtime sets on node 1 of 2."""
    run = pytest.importorskip("torch.distributed.run")
    command = trainjob_manifest(gpu_spec())["spec"]["trainer"]["command"]
    env = {
        "PET_NNODES": "2",
        "PET_NPROC_PER_NODE": "4",
        "PET_NODE_RANK": "1",
        "PET_MASTER_ADDR": f"{NAME}-node-0-0.{NAME}",
        "PET_MASTER_PORT": "29500",
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert command[0] == "torchrun"
    args = run.get_args_parser().parse_args(command[1:])
    assert (args.nnodes, args.nproc_per_node, args.node_rank) == ("2", "4", 1)
    assert (args.master_addr, args.master_port, args.rdzv_backend) == (f"{NAME}-node-0-0.{NAME}", 29500, "static")
    assert args.no_python is True
    assert [args.training_script, *args.training_script_args] == COMMAND


def test_a_command_that_starts_with_torchrun_is_kept():
    mine = ["torchrun", "--max-restarts=2", "--no-python", *COMMAND]
    assert trainjob_manifest(gpu_spec(command=mine))["spec"]["trainer"]["command"] == mine


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"name": "Finetune"}, "TrainJob name 'Finetune'"),
        ({"name": "9finetune"}, "TrainJob name '9finetune'"),
        ({"name": "a" * 49}, "at most 48 characters"),  # 2 nodes: <name>-node-0-1-xxxxx must fit in 63
        ({"num_nodes": 0}, "num_nodes (0)"),
        ({"procs_per_node": 8}, "8 processes per node but only 4 GPU(s)"),
        ({"env": {"PET_NNODES": "3"}}, "PET_NNODES are set by the torch runtime"),
        ({"env": {"AWS_ACCESS_KEY_ID": "x"}}, "set twice (env and secrets): AWS_ACCESS_KEY_ID"),
        ({"command": []}, "image and command must not be empty"),
        ({"tolerations": [{"key": "a", "operater": "Exists"}]}, "unknown field(s) ['operater']"),
        ({"resources_per_node": {"limits": {"nvidia.com/gpu": "four"}}}, "nvidia.com/gpu 'four' is not a whole number"),
        ({"resources_per_node": {"limit": {"cpu": "1"}}}, "unknown section(s) ['limit']"),
    ],
)
def test_invalid_specs_are_refused_with_the_field_named(changes, message):
    with pytest.raises(ConfigError) as err:
        gpu_spec(**changes)
    assert message in str(err.value)


def test_a_48_character_name_fits_two_nodes():
    assert trainjob_manifest(gpu_spec(name="a" * 48))["metadata"]["name"] == "a" * 48


def test_job_name_is_stable_valid_short_and_distinct():
    run_id = "7b5e2f7c-3f0e-4c1a-9a7e-0f5d1c2b3a4e"
    name = job_name(run_id, "finetune")
    assert name == job_name(run_id, "finetune")  # a retried task finds its job again
    assert kube.DNS_LABEL.match(name) and len(name) <= 40
    assert name.startswith("finetune-7b5e2f7c")
    assert job_name(run_id, "pretrain") != name
    assert job_name(run_id[:-1] + "f", "finetune") != name  # same 40-character prefix, different run
    odd = job_name("Run_2026/11/23 #7", "FineTune")
    assert kube.DNS_LABEL.match(odd) and len(odd) <= 40
    digits = job_name("123", "4")
    assert kube.DNS_LABEL.match(digits) and digits[0].isalpha()
    TrainJobSpec(name=name, namespace="ml", image="i", command=["x"], num_nodes=64)  # fits the JobSet pod names


# ---------------------------------------------------------------------------------------------------------------
# running it against the fake API server


def _messages(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name.startswith("transferops.kubeflow")]


def test_run_creates_follows_logs_each_change_once_and_deletes(kube, caplog):
    api, requests, fake = kube
    spec = gpu_spec()
    fake.at_get("trainjobs", NAME, 2, status={"jobsStatus": [job_status(active=1)]})
    fake.at_get("trainjobs", NAME, 3, status={"jobsStatus": [job_status(active=1, ready=1)]})
    done = condition("Complete", "AllJobsCompleted", "jobset completed successfully")
    fake.at_get("trainjobs", NAME, 5, status={"conditions": [done], "jobsStatus": [job_status(succeeded=1)]})
    caplog.set_level(logging.INFO, logger="transferops")

    final = run_trainjob(spec, api_client=api, poll_seconds=0.01)

    assert final["status"]["conditions"] == [done]
    assert [(r.method, r.path) for r in requests] == [("POST", JOBS)] + [("GET", f"{JOBS}/{NAME}")] * 5 + [
        ("DELETE", f"{JOBS}/{NAME}")
    ]
    assert requests[0].body == trainjob_manifest(spec)
    assert requests[-1].body == {"propagationPolicy": "Background"}
    assert fake.stored("trainjobs", "ml", NAME) is None
    host = api.configuration.host
    what = f"TrainJob ml/{NAME}"
    assert _messages(caplog) == [
        f"{what} created on {host}: 2 node(s) x 4 process(es), runtime torch-distributed, "
        "image registry.example.com/transferops:1.4.0",
        f"{what}: job node: 1 active, 0 ready, 0 succeeded, 0 failed, 0 suspended",
        f"{what}: job node: 1 active, 1 ready, 0 succeeded, 0 failed, 0 suspended",
        f"{what}: Complete=True AllJobsCompleted: jobset completed successfully",
        f"{what}: job node: 0 active, 0 ready, 1 succeeded, 0 failed, 0 suspended",
        f"{what} deleted",
    ]


def test_a_failed_job_raises_its_reason_and_message_on_one_line_and_is_deleted(kube, caplog):
    api, requests, fake = kube
    failed = condition("Failed", "FailedJobs", "jobset failed due to one or more job failures\nnode-0: exit code 1")
    fake.at_get("trainjobs", NAME, 2, status={"conditions": [failed]})
    with pytest.raises(TrainingError) as err:
        run_trainjob(gpu_spec(), api_client=api, poll_seconds=0.01)
    assert str(err.value) == (
        f"TrainJob ml/{NAME} failed: FailedJobs: jobset failed due to one or more job failures node-0: exit code 1"
    )
    assert [r.method for r in requests] == ["POST", "GET", "GET", "DELETE"]
    assert fake.stored("trainjobs", "ml", NAME) is None


def test_keep_leaves_the_job_in_place(kube):
    api, requests, fake = kube
    fake.at_get("trainjobs", NAME, 1, status={"conditions": [condition("Complete", "AllJobsCompleted")]})
    run_trainjob(gpu_spec(), api_client=api, poll_seconds=0.01, keep=True)
    assert [r.method for r in requests] == ["POST", "GET"]
    assert fake.stored("trainjobs", "ml", NAME)["spec"] == trainjob_manifest(gpu_spec())["spec"]


def test_a_retried_task_attaches_to_the_existing_job(kube, caplog):
    api, requests, fake = kube
    existing = trainjob_manifest(gpu_spec())
    existing["status"] = {"jobsStatus": [job_status(active=1, ready=1)]}
    fake.seed("trainjobs", existing)
    fake.at_get("trainjobs", NAME, 3, status={"conditions": [condition("Complete", "AllJobsCompleted")]})
    caplog.set_level(logging.INFO, logger="transferops")

    final = run_trainjob(gpu_spec(), api_client=api, poll_seconds=0.01)

    assert final["metadata"]["uid"] == "00000000-0000-0000-0000-000000000001"  # the seeded job, not a new one
    assert [r.method for r in requests] == ["POST", "GET", "GET", "GET", "DELETE"]
    assert _messages(caplog)[:2] == [
        f"TrainJob ml/{NAME} already exists (this task is a retry): following the running job",
        f"TrainJob ml/{NAME}: job node: 1 active, 1 ready, 0 succeeded, 0 failed, 0 suspended",
    ]


def test_a_job_left_being_deleted_is_waited_out_and_created_again(kube):
    api, requests, fake = kube
    leftover = trainjob_manifest(gpu_spec())
    leftover["metadata"]["deletionTimestamp"] = "2026-11-23T00:00:00Z"
    fake.seed("trainjobs", leftover)
    fake.at_get("trainjobs", NAME, 2, delete=True)  # the garbage collector finishes
    fake.at_get("trainjobs", NAME, 4, status={"conditions": [condition("Complete", "AllJobsCompleted")]})

    final = run_trainjob(gpu_spec(), api_client=api, poll_seconds=0.01)

    assert "deletionTimestamp" not in final["metadata"]
    assert [r.method for r in requests] == ["POST", "GET", "POST", "GET", "POST", "GET", "GET", "DELETE"]


def test_an_api_error_on_create_is_one_line_naming_the_server_and_status(kube):
    api, requests, fake = kube
    fake.fail("POST", 500)
    with pytest.raises(TrainingError) as err:
        run_trainjob(gpu_spec(), api_client=api, poll_seconds=0.01)
    assert str(err.value) == (
        f"create TrainJob ml/{NAME}: Kubernetes API {api.configuration.host} answered HTTP 500 "
        "Internal Server Error: injected failure"
    )
    assert [r.method for r in requests] == ["POST"]  # nothing was created, nothing to delete


def test_a_refused_create_names_the_reason_from_the_status_body(kube):
    api, _, fake = kube
    fake.fail("POST", 403)
    with pytest.raises(TrainingError, match=r"answered HTTP 403 Forbidden: injected failure$"):
        run_trainjob(gpu_spec(), api_client=api, poll_seconds=0.01)


def test_a_transient_poll_error_is_retried(kube, caplog):
    api, requests, fake = kube
    fake.fail("GET", 503, times=1)
    fake.at_get("trainjobs", NAME, 2, status={"conditions": [condition("Complete", "AllJobsCompleted")]})
    run_trainjob(gpu_spec(), api_client=api, poll_seconds=0.01)
    assert [r.method for r in requests] == ["POST", "GET", "GET", "GET", "DELETE"]
    (warning,) = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert "answered HTTP 503" in warning and warning.endswith("(attempt 1 of 4, trying again)")


def test_persistent_poll_errors_raise_and_the_job_is_still_deleted(kube):
    api, requests, fake = kube
    fake.fail("GET", 503, times=100)
    with pytest.raises(TrainingError) as err:
        run_trainjob(gpu_spec(), api_client=api, poll_seconds=0.01)
    assert str(err.value).startswith(
        f"read TrainJob ml/{NAME}: Kubernetes API {api.configuration.host} answered HTTP 503"
    )
    assert [r.method for r in requests] == ["POST", "GET", "GET", "GET", "GET", "DELETE"]
    assert fake.stored("trainjobs", "ml", NAME) is None


def test_a_job_deleted_by_someone_else_stops_the_wait_at_once(kube):
    api, requests, fake = kube
    fake.at_get("trainjobs", NAME, 2, delete=True)
    with pytest.raises(TrainingError, match=r"^read TrainJob ml/\S+: Kubernetes API \S+ answered HTTP 404 Not Found: "):
        run_trainjob(gpu_spec(), api_client=api, poll_seconds=0.01)
    assert [r.method for r in requests] == ["POST", "GET", "GET", "DELETE"]


def test_timeout_raises_with_the_last_status_and_deletes(kube):
    api, requests, fake = kube
    fake.at_get("trainjobs", NAME, 1, status={"jobsStatus": [job_status(active=1)]})
    with pytest.raises(TrainingError) as err:
        run_trainjob(gpu_spec(), api_client=api, poll_seconds=0.01, timeout_seconds=0.2)
    assert str(err.value) == (
        f"TrainJob ml/{NAME} did not finish within 0.2 s "
        "(last status: job node: 1 active, 0 ready, 0 succeeded, 0 failed, 0 suspended)"
    )
    assert requests[-1].method == "DELETE"


def test_a_failed_delete_is_a_warning_not_a_failure(kube, caplog):
    api, _, fake = kube
    fake.at_get("trainjobs", NAME, 1, status={"conditions": [condition("Complete", "AllJobsCompleted")]})
    fake.fail("DELETE", 500)
    run_trainjob(gpu_spec(), api_client=api, poll_seconds=0.01)
    (warning,) = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warning.endswith(f"delete it by hand: kubectl delete trainjobs -n ml {NAME}")


def test_an_unreachable_server_is_one_line_naming_it():
    client = pytest.importorskip("kubernetes.client")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    api = client.ApiClient(client.Configuration(host=f"http://127.0.0.1:{port}"))
    with pytest.raises(TrainingError) as err:
        run_trainjob(gpu_spec(), api_client=api, poll_seconds=0.01)
    message = str(err.value)
    assert message.startswith(f"create TrainJob ml/{NAME}: Kubernetes API http://127.0.0.1:{port} unreachable: ")
    assert "\n" not in message


# ---------------------------------------------------------------------------------------------------------------
# the read-back check: a server that prunes like an older Trainer


def _trainer_schema(version: str):
    import json
    from pathlib import Path

    from tests.structural import Schema

    path = Path(__file__).parents[1] / "schemas" / "trainer" / f"trainjob-{version}.json"
    return Schema(json.loads(path.read_text()))


def test_a_trainer_without_runtime_patches_fails_the_launch_naming_the_field_and_version(kube):
    """On a cluster with Trainer v2.1.0 the placement would be dropped silently and the pods would run on
    the wrong nodes (or stay Pending on a tainted pool): the launch fails at the first read instead."""
    api, requests, fake = kube
    fake.prune_with("trainjobs", _trainer_schema("v2.1.0"))
    fake.at_get("trainjobs", NAME, 1, status={"conditions": [condition("Complete", "AllJobsCompleted")]})
    with pytest.raises(TrainingError) as err:
        run_trainjob(gpu_spec(), api_client=api, poll_seconds=0.01)
    assert str(err.value) == (
        f"TrainJob ml/{NAME}: the API server dropped spec.runtimePatches from the job as sent; "
        "it needs Kubeflow Trainer >= v2.2.0, this cluster's is older"
    )
    assert [r.method for r in requests] == ["POST", "GET", "DELETE"]  # and the misplaced job is deleted
    assert fake.stored("trainjobs", "ml", NAME) is None


@pytest.mark.parametrize("version", ["v2.2.0", "v2.2.1", "v2.3.0"])
def test_a_supported_trainer_keeps_the_job_as_sent(kube, version):
    api, requests, fake = kube
    fake.prune_with("trainjobs", _trainer_schema(version))
    fake.at_get("trainjobs", NAME, 1, status={"conditions": [condition("Complete", "AllJobsCompleted")]})
    run_trainjob(gpu_spec(queue="gpu-spot"), api_client=api, poll_seconds=0.01)
    assert [r.method for r in requests] == ["POST", "GET", "DELETE"]


def test_a_job_without_placement_runs_on_an_old_trainer_too(kube):
    api, _, fake = kube
    fake.prune_with("trainjobs", _trainer_schema("v2.1.0"))
    fake.at_get("trainjobs", NAME, 1, status={"conditions": [condition("Complete", "AllJobsCompleted")]})
    plain = gpu_spec(node_selector={}, tolerations=[], shm_size="")
    assert run_trainjob(plain, api_client=api, poll_seconds=0.01)["status"]["conditions"][0]["type"] == "Complete"


def test_read_back_names_an_unknown_field_without_a_version():
    from transferops.kubeflow.trainjob import check_read_back

    sent = trainjob_manifest(gpu_spec(queue="q"))
    stored = copy.deepcopy(sent)
    del stored["spec"]["trainer"]["env"][1:]
    del stored["metadata"]["labels"]["kueue.x-k8s.io/queue-name"]
    stored["spec"]["managedBy"] = "trainer.kubeflow.org/trainjob-controller"  # a default the server adds: fine
    with pytest.raises(TrainingError) as err:
        check_read_back(sent, stored, "TrainJob ml/x")
    assert str(err.value) == (
        "TrainJob ml/x: the API server dropped spec.trainer.env[1], spec.trainer.env[2], spec.trainer.env[3], "
        "metadata.labels.kueue.x-k8s.io/queue-name from the job as sent; this cluster's Trainer does not declare "
        "it (supported: Kubeflow Trainer >= v2.2.0)"
    )
    check_read_back(sent, {**sent, "status": {"conditions": []}}, "TrainJob ml/x")  # unchanged: no error


def test_a_kueue_queue_becomes_the_queue_name_label():
    m = trainjob_manifest(gpu_spec(queue="team-a-gpu"))
    assert m["metadata"]["labels"] == {
        "app.kubernetes.io/managed-by": "transferops",
        "kueue.x-k8s.io/queue-name": "team-a-gpu",
    }
    assert "kueue.x-k8s.io/queue-name" not in trainjob_manifest(gpu_spec())["metadata"]["labels"]
    with pytest.raises(ConfigError, match="Kueue queue 'team a'"):
        gpu_spec(queue="team a")


# ---------------------------------------------------------------------------------------------------------------
# which pool the launching KFP task needs


def _kfp(overrides):
    from tests.conftest import REPO
    from transferops.config import read_params
    from transferops.kubeflow.settings import kfp_from_dict

    return kfp_from_dict(read_params(REPO / "params.yaml"), overrides)


@pytest.mark.parametrize(
    "overrides, pool, nproc",
    [
        (["kfp.distributed.nodes=2", "kfp.distributed.gpus_per_node=4"], "cpu", 1),  # TrainJob: the task only waits
        (["kfp.distributed.nodes=0", "kfp.gpu.accelerator_limit=4"], "gpu", 4),  # torchrun in the task's pod
        (["kfp.distributed.nodes=0"], "gpu", 1),  # one process in the task's pod
    ],
)
def test_the_launching_task_holds_a_gpu_only_when_it_trains(overrides, pool, nproc):
    from transferops.kubeflow.launch import Launch, launch_for

    launch = launch_for(_kfp(overrides), "img:1")
    assert (launch.launcher_pool, launch.nproc) == (pool, nproc)
    assert Launch.from_json(launch.to_json()).launcher_pool == pool  # what the component receives


def test_launch_for_carries_the_kueue_queue_to_the_spec():
    from transferops.kubeflow.launch import launch_for

    launch = launch_for(_kfp(["kfp.distributed.nodes=2", "kfp.kueue_queue=gpu-spot"]), "img:1")
    spec = launch.trainjob_spec("finetune", "run-1", "s3://b/state/run-1/finetune/staging")
    assert spec.queue == "gpu-spot" and spec.num_nodes == 2
    assert spec.command == [
        "transferops",
        "remote-stage",
        "finetune",
        "--staging",
        "s3://b/state/run-1/finetune/staging",
    ]
    assert spec.env == {"TRANSFEROPS_RUN_KEY": "run-1"}


def test_a_retry_checks_the_job_an_earlier_attempt_left_on_an_old_trainer(kube):
    """The first attempt died before its first read: the retry finds the pruned job and fails as it would have."""
    api, requests, fake = kube
    pruned, _ = _trainer_schema("v2.1.0").prune(trainjob_manifest(gpu_spec()))
    fake.seed("trainjobs", pruned)
    with pytest.raises(TrainingError, match="dropped spec.runtimePatches"):
        run_trainjob(gpu_spec(), api_client=api, poll_seconds=0.01)
    assert [r.method for r in requests] == ["POST", "GET", "GET", "DELETE"]


def test_an_existing_job_from_another_spec_is_followed_with_a_warning_only(kube, caplog):
    api, _, fake = kube
    fake.seed("trainjobs", trainjob_manifest(gpu_spec(procs_per_node=2, node_selector={}, tolerations=[])))
    fake.at_get("trainjobs", NAME, 2, status={"conditions": [condition("Complete", "AllJobsCompleted")]})
    run_trainjob(gpu_spec(), api_client=api, poll_seconds=0.01)
    assert f"TrainJob ml/{NAME}: the existing job's trainer spec differs from this task's" in _messages(caplog)
