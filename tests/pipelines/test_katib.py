"""Katib Experiment: the manifest against the kubeflow.org/v1beta1 schema, what Katib does with it (parameter
substitution, the File collector's shell wrapping and TEXT parsing), and the API calls against a fake server."""

import copy
import json
import logging
import re
import shlex
from datetime import UTC, datetime

import pytest

from tests.conftest import REPO
from tests.kube_fake import condition
from transferops.config import load_config
from transferops.errors import ConfigError, TrainingError
from transferops.kubeflow import katib

pytest.importorskip("kubernetes")

EXPERIMENTS = "/apis/kubeflow.org/v1beta1/namespaces/ml/experiments"
BASE = ["transferops", "tune-trial", "--params", "/workspace/params.yaml"]
SPACE = {
    "finetune.lr": {"type": "double", "min": 1e-4, "max": 1e-2, "distribution": "logUniform"},
    "finetune.method": {"type": "categorical", "values": ["dann", "mcc"]},
    "finetune.batch_size": {"type": "discrete", "values": [32, 64]},
    "finetune.epochs": {"type": "int", "min": 2, "max": 8, "step": 2},
}
PLACEMENT = dict(
    resources={"requests": {"cpu": "4", "memory": "16Gi"}, "limits": {"nvidia.com/gpu": 1, "memory": "32Gi"}},
    node_selector={"cloud.google.com/gke-nodepool": "gpu-spot"},
    tolerations=[{"key": "nvidia.com/gpu", "operator": "Exists", "value": "", "effect": "NoSchedule"}],
    secret_env=[("mlflow-credentials", {"tracking_uri": "MLFLOW_TRACKING_URI"})],
    env={"TRANSFEROPS_PARENT_RUN_ID": "run-1"},
    shm_size="8Gi",
)


def manifest(**changes) -> dict:
    kwargs = dict(algorithm="tpe", max_trials=20, parallel_trials=4, max_failed_trials=2, goal=0.95, **PLACEMENT)
    kwargs.update(changes)
    return katib.experiment_manifest(
        "tune-run-1", "ml", "registry.example.com/transferops:1.4.0", BASE, SPACE, **kwargs
    )


TRIAL_COMMAND = [
    *BASE,
    "--set",
    "finetune.lr=${trialParameters.finetune__lr}",
    "--set",
    "finetune.method=${trialParameters.finetune__method}",
    "--set",
    "finetune.batch_size=${trialParameters.finetune__batch_size}",
    "--set",
    "finetune.epochs=${trialParameters.finetune__epochs}",
]


# ---------------------------------------------------------------------------------------------------------------
# the manifest


def test_experiment_fields_follow_the_v1beta1_schema():
    m = manifest()
    assert (m["apiVersion"], m["kind"]) == ("kubeflow.org/v1beta1", "Experiment")
    assert m["metadata"] == {
        "name": "tune-run-1",
        "namespace": "ml",
        "labels": {"app.kubernetes.io/managed-by": "transferops"},
    }
    spec = m["spec"]
    assert set(spec) == {
        "objective",
        "algorithm",
        "parallelTrialCount",
        "maxTrialCount",
        "maxFailedTrialCount",
        "parameters",
        "metricsCollectorSpec",
        "trialTemplate",
    }
    assert spec["objective"] == {
        "type": "maximize",
        "objectiveMetricName": "val_accuracy",
        "metricStrategies": [{"name": "val_accuracy", "value": "latest"}],
        "goal": 0.95,
    }
    assert spec["algorithm"] == {"algorithmName": "tpe"}
    assert (spec["maxTrialCount"], spec["parallelTrialCount"], spec["maxFailedTrialCount"]) == (20, 4, 2)
    assert spec["parameters"] == [
        {
            "name": "finetune__lr",
            "parameterType": "double",
            "feasibleSpace": {"min": "0.0001", "max": "0.01", "distribution": "logUniform"},
        },
        {"name": "finetune__method", "parameterType": "categorical", "feasibleSpace": {"list": ["dann", "mcc"]}},
        {"name": "finetune__batch_size", "parameterType": "discrete", "feasibleSpace": {"list": ["32", "64"]}},
        {"name": "finetune__epochs", "parameterType": "int", "feasibleSpace": {"min": "2", "max": "8", "step": "2"}},
    ]
    assert spec["metricsCollectorSpec"] == {
        "collector": {"kind": "File"},
        "source": {
            "fileSystemPath": {"path": "/var/log/katib/metrics.log", "kind": "File", "format": "TEXT"},
            "filter": {"metricsFormat": [r"([\w|-]+)\s*=\s*([+-]?\d*(\.\d+)?([Ee][+-]?\d+)?)"]},
        },
    }
    template = spec["trialTemplate"]
    assert template["primaryContainerName"] == "training"
    assert template["successCondition"] == 'status.conditions.#(type=="Complete")#|#(status=="True")#'
    assert template["failureCondition"] == 'status.conditions.#(type=="Failed")#|#(status=="True")#'
    assert template["trialParameters"] == [
        {"name": "finetune__lr", "description": "--set finetune.lr", "reference": "finetune__lr"},
        {"name": "finetune__method", "description": "--set finetune.method", "reference": "finetune__method"},
        {
            "name": "finetune__batch_size",
            "description": "--set finetune.batch_size",
            "reference": "finetune__batch_size",
        },
        {"name": "finetune__epochs", "description": "--set finetune.epochs", "reference": "finetune__epochs"},
        {"name": "trialName", "description": "TRANSFEROPS_RUN_KEY", "reference": "${trialSpec.Name}"},
    ]
    assert template["trialSpec"] == {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "spec": {
            "backoffLimit": 0,
            "podFailurePolicy": {
                "rules": [{"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]}]
            },
            "template": {
                "metadata": {
                    "annotations": {"sidecar.istio.io/inject": "false"},
                    "labels": {"app.kubernetes.io/managed-by": "transferops"},
                },
                "spec": {
                    "restartPolicy": "Never",
                    "containers": [
                        {
                            "name": "training",
                            "image": "registry.example.com/transferops:1.4.0",
                            "command": TRIAL_COMMAND,
                            "env": [
                                {"name": "TRANSFEROPS_PARENT_RUN_ID", "value": "run-1"},
                                {"name": "TRANSFEROPS_RUN_KEY", "value": "${trialParameters.trialName}"},
                                {
                                    "name": "MLFLOW_TRACKING_URI",
                                    "valueFrom": {
                                        "secretKeyRef": {"name": "mlflow-credentials", "key": "tracking_uri"}
                                    },
                                },
                            ],
                            "resources": {
                                "requests": {"cpu": "4", "memory": "16Gi"},
                                "limits": {"nvidia.com/gpu": "1", "memory": "32Gi"},
                            },
                            "volumeMounts": [{"name": "dshm", "mountPath": "/dev/shm"}],
                            "imagePullPolicy": "IfNotPresent",
                        }
                    ],
                    "nodeSelector": {"cloud.google.com/gke-nodepool": "gpu-spot"},
                    "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
                    "volumes": [{"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": "8Gi"}}],
                },
            },
        },
    }


def test_no_goal_and_algorithm_settings():
    m = manifest(goal=None, algorithm="random", algorithm_settings={"random_state": 7})
    assert "goal" not in m["spec"]["objective"]
    assert m["spec"]["algorithm"] == {
        "algorithmName": "random",
        "algorithmSettings": [{"name": "random_state", "value": "7"}],
    }


def test_manifest_and_trial_job_survive_the_api_models_unchanged():
    """The Katib models (0.19.0) and the batch/v1 Job model drop fields they do not know."""
    katib_models = pytest.importorskip("kubeflow_katib_api.models")
    k8s_models = pytest.importorskip("kubeflow_trainer_api.models")
    m = manifest()
    assert katib_models.V1beta1Experiment.from_dict(m).to_dict() == m
    job = m["spec"]["trialTemplate"]["trialSpec"]
    assert k8s_models.IoK8sApiBatchV1Job.from_dict(job).to_dict() == job
    misspelt = copy.deepcopy(m)
    misspelt["spec"]["maxTrialsCount"] = 3
    assert katib_models.V1beta1Experiment.from_dict(misspelt).to_dict() != misspelt  # the check can fail
    misspelt_job = copy.deepcopy(job)
    misspelt_job["spec"]["template"]["spec"]["containers"][0]["volumeMount"] = []
    assert k8s_models.IoK8sApiBatchV1Job.from_dict(misspelt_job).to_dict() != misspelt_job


def katib_substitute(m: dict, assignments: dict[str, str]) -> dict:
    """What Katib's trial controller does: replace ${trialParameters.<name>} by the suggested value of the
    parameter it references, in the JSON text of the trial template."""
    template = m["spec"]["trialTemplate"]
    text = json.dumps(template["trialSpec"])
    for p in template["trialParameters"]:
        text = text.replace(f"${{trialParameters.{p['name']}}}", assignments[p["reference"]])
    assert not re.search(r"\$\{trialParameters\..+?\}", text), "a placeholder has no trial parameter"
    return json.loads(text)


def test_a_trial_command_survives_katibs_substitution_and_shell_wrapping_and_sets_the_params():
    m = manifest()
    names = {p["name"] for p in m["spec"]["parameters"]}
    assert {p["reference"] for p in m["spec"]["trialTemplate"]["trialParameters"]} == names | {"${trialSpec.Name}"}
    suggestion = {
        "${trialSpec.Name}": "tune-run-1-x7k2m9",
        "finetune__lr": "0.0031",
        "finetune__method": "mcc",
        "finetune__batch_size": "32",
        "finetune__epochs": "4",
    }
    job = katib_substitute(m, suggestion)
    command = job["spec"]["template"]["spec"]["containers"][0]["command"]
    env = {e["name"]: e.get("value") for e in job["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["TRANSFEROPS_RUN_KEY"] == "tune-run-1-x7k2m9"  # a restarted trial pod finds its training state
    # the File collector runs: sh -c "<command joined by spaces> && echo completed > /var/log/katib/$$$$.pid"
    assert shlex.split(" ".join(command)) == command
    sets = [command[i + 1] for i, token in enumerate(command) if token == "--set"]
    assert sets == ["finetune.lr=0.0031", "finetune.method=mcc", "finetune.batch_size=32", "finetune.epochs=4"]
    cfg = load_config(REPO / "params.yaml", sets)
    assert (cfg.finetune.lr, cfg.finetune.method, cfg.finetune.batch_size, cfg.finetune.epochs) == (
        0.0031,
        "mcc",
        32,
        4,
    )


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"algorithm": "hyperband"}, "algorithm 'hyperband': expected one of random, grid, bayesianoptimization, tpe"),
        ({"parallel_trials": 30}, "1 <= parallel_trials <= max_trials (got 30)"),
        ({"max_failed_trials": -1}, "0 <= max_failed_trials <= max_trials (got -1)"),
        ({"max_failed_trials": 21}, "0 <= max_failed_trials <= max_trials (got 21)"),  # Katib's webhook rule
        ({"env": {"TRANSFEROPS_RUN_KEY": "x"}}, "TRANSFEROPS_RUN_KEY is set to the trial's name"),
        ({"early_stopping": {"algorithm": "median"}}, "early stopping algorithm 'median': expected one of medianstop"),
        ({"early_stopping": {"algorithm": "medianstop", "start": 2}}, "unknown setting(s) ['start']"),
        ({"algorithm": "grid"}, "finetune.lr: the grid algorithm needs a step for double parameters"),
        (
            {"image_pull_policy": "IfNeeded"},
            "image_pull_policy 'IfNeeded': expected one of Always, IfNotPresent, Never",
        ),
    ],
)
def test_invalid_settings_are_refused(changes, message):
    with pytest.raises(ConfigError) as err:
        manifest(**changes)
    assert message in str(err.value)


@pytest.mark.parametrize(
    "space, message",
    [
        ({"finetune.lr": {"type": "float", "min": 0, "max": 1}}, "type 'float', expected one of"),
        ({"finetune.lr": {"type": "double", "min": 0.1, "max": 0.01}}, "min (0.1) must be below max (0.01)"),
        ({"finetune.lr": {"type": "double", "min": 0.1}}, "double needs min and max"),
        ({"finetune.lr": {"type": "double", "min": 0, "max": 1, "distribution": "log"}}, "distribution must be"),
        (
            {"finetune.epochs": {"type": "int", "min": 1.5, "max": 4}},
            "finetune.epochs.min: 1.5 is not a finite integer",
        ),
        ({"finetune.method": {"type": "categorical", "values": []}}, "needs a non-empty list of values"),
        ({"finetune.method": {"type": "categorical", "values": ["a", "a"]}}, "values repeat"),
        ({"finetune.method": {"type": "categorical", "values": ["a;rm -rf /"]}}, "pasted unquoted into a shell line"),
        ({"finetune.method": {"type": "categorical", "values": ["a"], "min": 1}}, "unknown field(s) ['min']"),
        ({"finetune..lr": {"type": "double", "min": 0, "max": 1}}, "expected a dotted params key"),
        ({"finetune__lr": {"type": "double", "min": 0, "max": 1}}, "expected a dotted params key"),
        ({}, "search space is empty"),
    ],
)
def test_invalid_search_spaces_are_refused_with_the_key_named(space, message):
    with pytest.raises(ConfigError) as err:
        katib.experiment_manifest("tune", "ml", "img:1", BASE, space)
    assert message in str(err.value)


def test_names_and_commands_are_checked():
    with pytest.raises(ConfigError, match="Experiment name 'x{41}'.* at most 40 characters"):
        katib.experiment_manifest("x" * 41, "ml", "img:1", BASE, SPACE)
    with pytest.raises(ConfigError, match="trial command: 'a b' is pasted unquoted"):
        katib.experiment_manifest("tune", "ml", "img:1", [*BASE, "a b"], SPACE)


def test_parameter_names_map_dots_both_ways():
    assert katib.parameter_name("finetune.finetune.backbone_lr_mult") == "finetune__finetune__backbone_lr_mult"
    assert katib.parameter_key("finetune__finetune__backbone_lr_mult") == "finetune.finetune.backbone_lr_mult"


# ---------------------------------------------------------------------------------------------------------------
# the metrics file, read the way Katib's File collector reads TEXT


def katib_parse_text(text: str, metric_names: list[str], filters: list[str]) -> list[tuple[str, str, str]]:
    """(timestamp, name, value) for each metric Katib 0.19's parseLogsInTextFormat would report."""
    found = []
    for line in text.split("\n"):
        if not any(m in line for m in metric_names):
            continue
        head = line.split(" ", 1)[0]
        try:
            datetime.fromisoformat(head.replace("Z", "+00:00"))
            stamp = head
        except ValueError:
            stamp = "0001-01-01T00:00:00Z"
        for pattern in filters:
            for match in re.finditer(pattern, line):
                name, value = match.group(1).strip(), match.group(2).strip()
                if name in metric_names:
                    found.append((stamp, name, value))
    return found


def test_metrics_line_is_a_timestamp_and_name_value_pairs():
    when = datetime(2026, 11, 23, 10, 0, 0, tzinfo=UTC)
    assert katib.metrics_line({"val_accuracy": 0.9375}, when) == "2026-11-23T10:00:00.000000Z val_accuracy=0.9375"
    assert katib.metrics_line({"val_accuracy": 1, "val_loss": 2.5e-05}, when).endswith(
        "val_accuracy=1.0 val_loss=2.5e-05"
    )
    with pytest.raises(ConfigError, match="metric name 'val accuracy'"):
        katib.metrics_line({"val accuracy": 0.5})


def test_the_file_the_trial_writes_is_what_the_collector_reports(tmp_path):
    m = manifest()
    source = m["spec"]["metricsCollectorSpec"]["source"]
    path = tmp_path / "var/log/katib/metrics.log"
    katib.write_trial_metrics({"val_accuracy": 0.8125, "val_loss": 0.61}, path)
    katib.write_trial_metrics({"val_accuracy": 0.9375, "val_loss": 0.23}, path)
    lines = path.read_text().splitlines()
    assert len(lines) == 2
    assert all(
        re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z val_accuracy=\S+ val_loss=\S+", line) for line in lines
    )
    reported = katib_parse_text(path.read_text(), ["val_accuracy"], source["filter"]["metricsFormat"])
    assert [(name, value) for _, name, value in reported] == [("val_accuracy", "0.8125"), ("val_accuracy", "0.9375")]
    assert all(stamp != "0001-01-01T00:00:00Z" for stamp, _, _ in reported)  # the timestamps were understood
    strategy = m["spec"]["objective"]["metricStrategies"][0]
    assert strategy == {"name": "val_accuracy", "value": "latest"}  # so the trial's objective is 0.9375


def test_a_stage_metrics_json_would_not_be_read_by_the_text_filter():
    """The reason the trial writes its own line: the stage's pretty JSON has no name=value pairs."""
    pretty = json.dumps({"val_accuracy": 0.9375, "steps": 100}, indent=2)
    assert katib_parse_text(pretty, ["val_accuracy"], [katib.METRIC_FILTER]) == []


# ---------------------------------------------------------------------------------------------------------------
# the API server


def test_create_posts_the_manifest(kube, caplog):
    api, requests, fake = kube
    caplog.set_level(logging.INFO, logger="transferops")
    m = manifest()
    created = katib.create_experiment(m, api_client=api)
    assert [(r.method, r.path) for r in requests] == [("POST", EXPERIMENTS)]
    assert requests[0].body == m
    assert created["spec"] == m["spec"] and created["metadata"]["uid"]
    assert fake.stored("experiments", "ml", "tune-run-1")["spec"] == m["spec"]
    assert f"Experiment ml/tune-run-1 created on {api.configuration.host}" in caplog.messages


def test_create_returns_the_existing_experiment_on_conflict(kube, caplog):
    api, requests, fake = kube
    existing = manifest()
    existing["status"] = {"trials": 3}
    fake.seed("experiments", existing)
    got = katib.create_experiment(manifest(), api_client=api)
    assert got["status"] == {"trials": 3}
    assert [(r.method, r.path) for r in requests] == [("POST", EXPERIMENTS), ("GET", f"{EXPERIMENTS}/tune-run-1")]
    assert "Experiment ml/tune-run-1 already exists (this task is a retry): using it" in caplog.messages


def test_create_api_error_is_one_line(kube):
    api, _, fake = kube
    fake.fail("POST", 500)
    with pytest.raises(TrainingError) as err:
        katib.create_experiment(manifest(), api_client=api)
    assert str(err.value) == (
        f"create Experiment ml/tune-run-1: Kubernetes API {api.configuration.host} answered HTTP 500 "
        "Internal Server Error: injected failure"
    )


def finished_status() -> dict:
    return {
        "conditions": [
            condition("Created", "ExperimentCreated", "Experiment is created"),
            condition("Running", "ExperimentRunning", "Experiment is running", status="False"),
            condition(
                "Succeeded",
                "ExperimentMaxTrialsReached",
                "Experiment has succeeded because max trial count has reached",
            ),
        ],
        "currentOptimalTrial": {
            "bestTrialName": "tune-run-1-x7k2p9qz",
            "parameterAssignments": [
                {"name": "finetune__lr", "value": "0.0031"},
                {"name": "finetune__method", "value": "mcc"},
            ],
            "observation": {"metrics": [{"name": "val_accuracy", "min": "0.91", "max": "0.91", "latest": "0.91"}]},
        },
        "trials": 20,
        "trialsRunning": 0,
        "trialsSucceeded": 18,
        "trialsFailed": 2,
    }


def test_experiment_status_reads_the_best_trial(kube):
    api, requests, fake = kube
    obj = manifest()
    obj["status"] = finished_status()
    fake.seed("experiments", obj)
    summary = katib.experiment_status("tune-run-1", "ml", api_client=api)
    assert summary == {
        "name": "ml/tune-run-1",
        "state": "Succeeded",
        "reason": "ExperimentMaxTrialsReached",
        "message": "Experiment has succeeded because max trial count has reached",
        "trials": {
            "total": 20,
            "running": 0,
            "pending": 0,
            "succeeded": 18,
            "failed": 2,
            "killed": 0,
            "early_stopped": 0,
            "metrics_unavailable": 0,
        },
        "best_trial": "tune-run-1-x7k2p9qz",
        "parameters": {"finetune.lr": "0.0031", "finetune.method": "mcc"},
        "metrics": {"val_accuracy": {"min": "0.91", "max": "0.91", "latest": "0.91"}},
        "val_accuracy": 0.91,
    }
    assert katib.format_status(summary) == (
        "Experiment ml/tune-run-1: Succeeded; trials 20 (0 running, 18 succeeded, 2 failed); "
        "best tune-run-1-x7k2p9qz: val_accuracy=0.91 with finetune.lr=0.0031, finetune.method=mcc"
    )
    assert [r.path for r in requests] == [f"{EXPERIMENTS}/tune-run-1"]


def test_a_new_experiment_has_no_best_trial_yet():
    summary = katib.summarize(manifest())
    assert (summary["state"], summary["best_trial"], summary["parameters"], summary["val_accuracy"]) == (
        "Pending",
        None,
        {},
        None,
    )


def test_wait_follows_the_experiment_to_success(kube, caplog):
    api, _, fake = kube
    fake.seed("experiments", manifest())
    running = {"conditions": [condition("Running", "ExperimentRunning", "Experiment is running")], "trials": 4}
    fake.at_get("experiments", "tune-run-1", 2, status={**running, "trialsRunning": 4})
    fake.at_get("experiments", "tune-run-1", 4, status=finished_status())
    caplog.set_level(logging.INFO, logger="transferops")
    summary = katib.wait_experiment("tune-run-1", "ml", api_client=api, poll_seconds=0.01)
    assert summary["best_trial"] == "tune-run-1-x7k2p9qz"
    what = "Experiment ml/tune-run-1"
    assert [m for m in caplog.messages if m.startswith(what)] == [
        f"{what}: trials 0 (0 running, 0 succeeded, 0 failed)",
        f"{what}: Running=True ExperimentRunning: Experiment is running",
        f"{what}: trials 4 (4 running, 0 succeeded, 0 failed)",
        f"{what}: Created=True ExperimentCreated: Experiment is created",
        f"{what}: Running=False ExperimentRunning: Experiment is running",
        f"{what}: Succeeded=True ExperimentMaxTrialsReached: "
        "Experiment has succeeded because max trial count has reached",
        f"{what}: trials 20 (0 running, 18 succeeded, 2 failed); best tune-run-1-x7k2p9qz: val_accuracy=0.91 "
        "with finetune.lr=0.0031, finetune.method=mcc",
    ]


def test_wait_raises_the_failure_reason(kube):
    api, _, fake = kube
    fake.seed("experiments", manifest())
    failed = condition("Failed", "ExperimentFailed", "Experiment has failed because max failed count has reached")
    fake.at_get("experiments", "tune-run-1", 2, status={"conditions": [failed]})
    with pytest.raises(TrainingError) as err:
        katib.wait_experiment("tune-run-1", "ml", api_client=api, poll_seconds=0.01)
    assert str(err.value) == (
        "Experiment ml/tune-run-1 failed: ExperimentFailed: Experiment has failed because max failed count has reached"
    )


def test_the_objective_reporter_writes_one_line_per_epoch_for_median_stop(tmp_path):
    """Median stop compares the objective lines a running trial has written; the reporter adds one per
    logged epoch and passes everything on to the real tracker."""
    from transferops.tracking.tracker import NullTracker

    seen = []

    class Recording(NullTracker):
        run_id = "r1"

        def log_metrics(self, metrics, step=None):
            seen.append((dict(metrics), step))

    path = tmp_path / "metrics.log"
    reporter = katib.ObjectiveReporter(Recording(), path)
    for epoch, acc in enumerate([0.5, 0.625, 0.75], start=1):
        reporter.log_metrics({"train_loss": 1.0 / epoch, "val_accuracy": acc}, epoch)
    reporter.log_metrics({"epoch_seconds": 3.0}, 4)  # no objective: no line
    assert reporter.run_id == "r1" and len(seen) == 4
    reported = katib_parse_text(path.read_text(), ["val_accuracy"], [katib.METRIC_FILTER])
    assert [value for _, name, value in reported if name == "val_accuracy"] == ["0.5", "0.625", "0.75"]
