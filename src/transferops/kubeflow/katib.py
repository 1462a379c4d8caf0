"""Hyper-parameter search as a Katib Experiment (``kubeflow.org/v1beta1``, Katib 0.19).

Each trial is a batch/v1 Job running the pipeline image with a base command plus one
``--set <key>=${trialParameters.<name>}`` per searched key; Katib substitutes the suggested values.

Metrics come from Katib's **File** metrics collector: its webhook adds a sidecar to each trial pod, mounts an
emptyDir on the *directory* of :data:`METRICS_FILE` in both containers, waits for the training process to exit,
then parses the file once and reports to the Katib DB. The format chosen is ``TEXT`` with :data:`METRIC_FILTER`;
one line per report, as :func:`metrics_line` writes it::

    2026-11-23T10:00:00.000000Z val_accuracy=0.9375

How the collector reads it (``pkg/metricscollector/v1beta1/file-metricscollector``): only lines containing the
metric's name are looked at; a first space-separated token that parses as RFC 3339 becomes the timestamp
(otherwise a warning and time zero); every match of the filter gives (name, value). With no line for the
objective the trial is reported as "unavailable". The objective strategy is ``latest``: the last line counts.

Why not ``JSON``: that parser needs one JSON object per line, aborts on any other line, and silently skips
numeric values (only ``{"val_accuracy": "0.9375"}``, a string, is read), so a stage's ordinary metrics.json
would be reported as unavailable.

A preempted trial resumes instead of failing: the trial Job's ``podFailurePolicy`` ignores pod failures with
the ``DisruptionTarget`` condition (preemption, eviction, node drain; they do not count towards
``backoffLimit`` 0, so the Job makes a new pod), and :data:`RUN_KEY_ENV` is the trial's name (Katib's
``${trialSpec.Name}`` meta reference), so the new pod finds the training state the old one saved under
``base.state_uri``. Any other failure fails the trial at once.

The collector also wraps the trial container's command in ``sh -c "<command joined by spaces> && echo
completed > <dir>/$$$$.pid"``: every token is pasted unquoted into a shell line, so the command and all
categorical values are checked to be shell-safe here.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

from transferops.errors import ConfigError, TrainingError
from transferops.kubeflow import kube
from transferops.training.state import RUN_KEY_ENV

log = logging.getLogger(__name__)

GROUP = "kubeflow.org"
VERSION = "v1beta1"
PLURAL = "experiments"
KIND = "Experiment"

ALGORITHMS = ("random", "grid", "bayesianoptimization", "tpe")
OBJECTIVE = "val_accuracy"
METRICS_FILE = "/var/log/katib/metrics.log"
"""Where a trial writes its metrics. Its directory becomes an emptyDir shared with the collector: keep it apart."""
METRIC_FILTER = r"([\w|-]+)\s*=\s*([+-]?\d*(\.\d+)?([Ee][+-]?\d+)?)"
"""``name=value`` (Katib's default TEXT filter, pinned here so the format does not depend on Katib's default)."""
TRIAL_CONTAINER = "training"
EXPERIMENT_NAME_LENGTH = 40
JOB_SUCCEEDED = 'status.conditions.#(type=="Complete")#|#(status=="True")#'
JOB_FAILED = 'status.conditions.#(type=="Failed")#|#(status=="True")#'
DISTRIBUTIONS = ("uniform", "logUniform", "normal", "logNormal")
PULL_POLICIES = ("Always", "IfNotPresent", "Never")
SHELL_SAFE = re.compile(r"^[A-Za-z0-9_@%+=:,./-]+$")
KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")
EARLY_STOPPING = {"medianstop": ("min_trials_required", "start_step")}
"""Early-stopping algorithms of a standard Katib install, with the settings each accepts."""
TRIAL_NAME_PARAMETER = "trialName"
"""Trial parameter bound to Katib's ``${trialSpec.Name}``: the trial's run key, so a restarted pod resumes."""
MIN_KATIB_VERSION = "v0.19.0"
"""The Katib release whose API and admission rules the manifests are checked against."""
SPACE_FIELDS = {
    "double": {"type", "min", "max", "step", "distribution"},
    "int": {"type", "min", "max", "step", "distribution"},
    "categorical": {"type", "values"},
    "discrete": {"type", "values"},
}


def parameter_name(key: str) -> str:
    """The Katib parameter (and trial parameter) name of a params key: dots become ``__`` (``finetune__lr``)."""
    if not KEY.match(key) or "__" in key:
        raise ConfigError(f"search space key {key!r}: expected a dotted params key such as 'finetune.lr'")
    return key.replace(".", "__")


def parameter_key(name: str) -> str:
    """The params key of a Katib parameter name (inverse of :func:`parameter_name`)."""
    return name.replace("__", ".")


def experiment_manifest(
    name: str,
    namespace: str,
    image: str,
    command: Sequence[str],
    search_space: Mapping[str, Mapping[str, Any]],
    *,
    algorithm: str = "random",
    algorithm_settings: Mapping[str, Any] | None = None,
    max_trials: int = 12,
    parallel_trials: int = 3,
    max_failed_trials: int = 3,
    early_stopping: Mapping[str, Any] | None = None,
    goal: float | None = None,
    resources: Mapping[str, Mapping[str, Any]] | None = None,
    node_selector: Mapping[str, str] | None = None,
    tolerations: Sequence[Any] = (),
    secret_env: Sequence[tuple[str, Mapping[str, str]]] = (),
    env: Mapping[str, str] | None = None,
    shm_size: str = "",
    image_pull_policy: str = "IfNotPresent",
    labels: Mapping[str, str] | None = None,
) -> dict:
    """The Experiment maximising ``val_accuracy`` over ``search_space``, one batch Job per trial.

    ``search_space`` maps params keys to ``{"type": "double"|"int", "min", "max"[, "step"][, "distribution"]}``
    or ``{"type": "categorical"|"discrete", "values": [...]}``. ``command`` is the trial's base command, e.g.
    ``["transferops", "tune-trial", "--params", "/workspace/params.yaml"]``; the trial must write
    :data:`METRICS_FILE` (see :func:`write_trial_metrics`). ``resources``, ``node_selector``, ``tolerations``,
    ``secret_env`` (``(secret, {key: ENV})``), ``env`` and ``shm_size`` place the trial pods as for the pipeline's
    GPU tasks. ``early_stopping``: ``{"algorithm": "medianstop", <setting>: value, ...}`` or None (off); Katib
    compares the objective lines a trial has written so far. Invalid input raises ConfigError naming the field.
    """
    kube.check_dns_name(name, "Experiment name", EXPERIMENT_NAME_LENGTH)
    kube.check_dns_name(namespace, "namespace")
    if algorithm not in ALGORITHMS:
        raise ConfigError(f"algorithm {algorithm!r}: expected one of {', '.join(ALGORITHMS)}")
    if max_trials < 1 or not 1 <= parallel_trials <= max_trials or not 0 <= max_failed_trials <= max_trials:
        raise ConfigError(
            f"trial counts: need max_trials >= 1 (got {max_trials}), 1 <= parallel_trials <= max_trials "
            f"(got {parallel_trials}) and 0 <= max_failed_trials <= max_trials (got {max_failed_trials})"
        )
    if not search_space:
        raise ConfigError("search space is empty")
    if image_pull_policy not in PULL_POLICIES:
        raise ConfigError(f"image_pull_policy {image_pull_policy!r}: expected one of {', '.join(PULL_POLICIES)}")
    for token in command:
        _check_shell_safe(token, "trial command")
    parameters = [_parameter(key, space, algorithm) for key, space in search_space.items()]

    objective: dict[str, Any] = {
        "type": "maximize",
        "objectiveMetricName": OBJECTIVE,
        "metricStrategies": [{"name": OBJECTIVE, "value": "latest"}],
    }
    if goal is not None:
        objective["goal"] = float(goal)
    algorithm_spec: dict[str, Any] = {"algorithmName": algorithm}
    if algorithm_settings:
        algorithm_spec["algorithmSettings"] = [{"name": k, "value": str(v)} for k, v in algorithm_settings.items()]
    labels = dict(labels or {"app.kubernetes.io/managed-by": "transferops"})
    trial_command = list(command)
    for p in parameters:
        trial_command += ["--set", f"{parameter_key(p['name'])}=${{trialParameters.{p['name']}}}"]
    trial_env = dict(env or {})
    if RUN_KEY_ENV in trial_env:
        raise ConfigError(f"trial env: {RUN_KEY_ENV} is set to the trial's name by the Experiment (reserved)")
    trial_env[RUN_KEY_ENV] = f"${{trialParameters.{TRIAL_NAME_PARAMETER}}}"
    trial_job = _trial_job(
        image, trial_command, resources or {}, node_selector or {}, tolerations, secret_env, trial_env, shm_size
    )
    trial_job["spec"]["template"]["metadata"]["labels"] = labels
    trial_job["spec"]["template"]["spec"]["containers"][0]["imagePullPolicy"] = image_pull_policy
    trial_parameters = [
        {"name": p["name"], "description": f"--set {parameter_key(p['name'])}", "reference": p["name"]}
        for p in parameters
    ]
    trial_parameters.append(
        {"name": TRIAL_NAME_PARAMETER, "description": RUN_KEY_ENV, "reference": "${trialSpec.Name}"}
    )
    manifest: dict[str, Any] = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": KIND,
        "metadata": {"name": name, "namespace": namespace, "labels": labels},
        "spec": {
            "objective": objective,
            "algorithm": algorithm_spec,
            "parallelTrialCount": parallel_trials,
            "maxTrialCount": max_trials,
            "maxFailedTrialCount": max_failed_trials,
            "parameters": parameters,
            "metricsCollectorSpec": {
                "collector": {"kind": "File"},
                "source": {
                    "fileSystemPath": {"path": METRICS_FILE, "kind": "File", "format": "TEXT"},
                    "filter": {"metricsFormat": [METRIC_FILTER]},
                },
            },
            "trialTemplate": {
                "primaryContainerName": TRIAL_CONTAINER,
                "successCondition": JOB_SUCCEEDED,
                "failureCondition": JOB_FAILED,
                "trialParameters": trial_parameters,
                "trialSpec": trial_job,
            },
        },
    }
    if early_stopping:
        manifest["spec"]["earlyStopping"] = _early_stopping(early_stopping)
    return manifest


def _early_stopping(settings: Mapping[str, Any]) -> dict:
    """``spec.earlyStopping`` from ``{"algorithm": name, <setting>: value, ...}``; settings are strings in Katib."""
    algorithm = settings.get("algorithm")
    if algorithm not in EARLY_STOPPING:
        raise ConfigError(f"early stopping algorithm {algorithm!r}: expected one of {', '.join(EARLY_STOPPING)}")
    rest = {k: v for k, v in settings.items() if k != "algorithm"}
    unknown = sorted(set(rest) - set(EARLY_STOPPING[algorithm]))
    if unknown:
        raise ConfigError(f"early stopping {algorithm}: unknown setting(s) {unknown}")
    return {"algorithmName": algorithm, "algorithmSettings": [{"name": k, "value": str(v)} for k, v in rest.items()]}


def _check_shell_safe(token: str, what: str) -> None:
    if not SHELL_SAFE.match(str(token)):
        raise ConfigError(
            f"{what}: {token!r} is pasted unquoted into a shell line by Katib's File collector; "
            "use only letters, digits and _ @ % + = : , . / -"
        )


def _number(value: Any, kind: str, what: str) -> str:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{what}: {value!r} is not a number") from None
    if not math.isfinite(number) or (kind == "int" and number != int(number)):
        raise ConfigError(f"{what}: {value!r} is not a finite {'integer' if kind == 'int' else 'number'}")
    return str(int(number)) if kind == "int" else repr(number)


def _discrete(value: Any, what: str) -> str:
    """A discrete value as text: integers stay integers (``32``, not ``32.0``) so ``--set`` parses them as int."""
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return _number(value, "double", what)


def _parameter(key: str, space: Mapping[str, Any], algorithm: str) -> dict:
    """One ``spec.parameters`` entry; feasible-space bounds and values are strings, as the schema wants."""
    name = parameter_name(key)
    kind = space.get("type")
    if kind not in SPACE_FIELDS:
        raise ConfigError(f"search space {key}: type {kind!r}, expected one of {', '.join(SPACE_FIELDS)}")
    unknown = sorted(set(space) - SPACE_FIELDS[kind])
    if unknown:
        raise ConfigError(f"search space {key}: unknown field(s) {unknown} for type {kind}")
    feasible: dict[str, Any]
    if kind in ("double", "int"):
        if "min" not in space or "max" not in space:
            raise ConfigError(f"search space {key}: {kind} needs min and max")
        low, high = _number(space["min"], kind, f"{key}.min"), _number(space["max"], kind, f"{key}.max")
        if float(low) >= float(high):
            raise ConfigError(f"search space {key}: min ({low}) must be below max ({high})")
        feasible = {"min": low, "max": high}
        if "step" in space:
            feasible["step"] = _number(space["step"], kind, f"{key}.step")
        elif algorithm == "grid" and kind == "double":
            raise ConfigError(f"search space {key}: the grid algorithm needs a step for double parameters")
        if "distribution" in space:
            if space["distribution"] not in DISTRIBUTIONS:
                raise ConfigError(f"search space {key}: distribution must be one of {', '.join(DISTRIBUTIONS)}")
            feasible["distribution"] = space["distribution"]
    else:
        values = list(space.get("values") or [])
        if not values:
            raise ConfigError(f"search space {key}: {kind} needs a non-empty list of values")
        texts = [_discrete(v, f"{key}.values") if kind == "discrete" else str(v) for v in values]
        if len(set(texts)) != len(texts):
            raise ConfigError(f"search space {key}: values repeat")
        for text in texts:
            _check_shell_safe(text, f"search space {key}")
        feasible = {"list": texts}
    return {"name": name, "parameterType": kind, "feasibleSpace": feasible}


def _trial_job(image, command, resources, node_selector, tolerations, secret_env, env, shm_size) -> dict:
    """The trial's batch/v1 Job: one pod; a failed pod fails the trial (it counts towards maxFailedTrialCount)
    unless it was disrupted (preempted, evicted), which gets a new pod that resumes from the saved state."""
    container: dict[str, Any] = {"name": TRIAL_CONTAINER, "image": image, "command": command}
    env_list = kube.env_vars(env, secret_env)
    if env_list:
        container["env"] = env_list
    requirements = kube.resource_requirements(resources)
    if requirements:
        container["resources"] = requirements
    pod: dict[str, Any] = {"restartPolicy": "Never", "containers": [container]}
    if node_selector:
        pod["nodeSelector"] = dict(node_selector)
    placed = kube.tolerations(tolerations)
    if placed:
        pod["tolerations"] = placed
    if shm_size:
        pod["volumes"] = [kube.shm_volume(shm_size)]
        container["volumeMounts"] = [dict(kube.SHM_VOLUME)]
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "spec": {
            "backoffLimit": 0,
            # a preempted or evicted pod is replaced without counting as a failure: the trial resumes
            "podFailurePolicy": {
                "rules": [{"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]}]
            },
            "template": {
                # with Istio, an injected proxy outlives the trial container and the Job never completes
                "metadata": {"annotations": {"sidecar.istio.io/inject": "false"}},
                "spec": pod,
            },
        },
    }


# ---------------------------------------------------------------------------------------------------------------
# the trial's side: the metrics file


def metrics_line(metrics: Mapping[str, float], when: datetime | None = None) -> str:
    """One line of :data:`METRICS_FILE`: ``<RFC 3339 UTC time> name=value ...`` (no newline)."""
    stamp = (when or datetime.now(UTC)).astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    pairs = []
    for name, value in metrics.items():
        if not re.fullmatch(r"[\w|-]+", name):
            raise ConfigError(f"metric name {name!r}: Katib's filter reads only letters, digits, _ and -")
        pairs.append(f"{name}={float(value)!r}")
    return " ".join([stamp, *pairs])


def write_trial_metrics(metrics: Mapping[str, float], path: str | Path = METRICS_FILE) -> Path:
    """Append one :func:`metrics_line` to the trial's metrics file (what Katib's File collector reads)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        f.write(metrics_line(metrics) + "\n")
    return path


class ObjectiveReporter:
    """A tracker that also appends a :func:`metrics_line` of the objective each time a stage logs it (once per
    epoch), so Katib's median stop can compare a running trial with the finished ones; everything else goes to
    the wrapped tracker. Wrap only the stage whose ``val_accuracy`` is the objective (finetune)."""

    def __init__(self, tracker, path: str | Path = METRICS_FILE):
        self._tracker, self._path = tracker, path

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        self._tracker.log_metrics(metrics, step)
        if metrics.get(OBJECTIVE) is not None:
            write_trial_metrics({OBJECTIVE: metrics[OBJECTIVE]}, self._path)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._tracker, name)


# ---------------------------------------------------------------------------------------------------------------
# the API server


def _experiments(api_client) -> kube.CustomObjects:
    return kube.CustomObjects(api_client, GROUP, VERSION, PLURAL, KIND)


def create_experiment(manifest: dict, api_client=None) -> dict:
    """Create the Experiment; if one of that name exists (a retried task), return it instead."""
    meta = manifest["metadata"]
    experiments = _experiments(api_client)
    obj, created = experiments.create(manifest)
    if created:
        log.info("%s %s/%s created on %s", KIND, meta["namespace"], meta["name"], experiments.host)
    else:
        log.warning("%s %s/%s already exists (this task is a retry): using it", KIND, meta["namespace"], meta["name"])
    return obj


def summarize(obj: dict) -> dict:
    """The state of an Experiment object, its trial counts and its best trial so far (params keys, dotted)."""
    status = obj.get("status") or {}
    meta = obj.get("metadata") or {}
    true = [c for c in status.get("conditions") or [] if str(c.get("status")) == "True"]
    optimal = status.get("currentOptimalTrial") or {}
    metrics = {
        m["name"]: {k: m[k] for k in ("min", "max", "latest") if k in m}
        for m in (optimal.get("observation") or {}).get("metrics") or []
    }
    objective = metrics.get(OBJECTIVE, {}).get("latest")
    return {
        "name": f"{meta.get('namespace')}/{meta.get('name')}",
        "state": true[-1]["type"] if true else "Pending",
        "reason": true[-1].get("reason", "") if true else "",
        "message": true[-1].get("message", "") if true else "",
        "trials": {
            key: int(status.get(field) or 0)
            for key, field in (
                ("total", "trials"),
                ("running", "trialsRunning"),
                ("pending", "trialsPending"),
                ("succeeded", "trialsSucceeded"),
                ("failed", "trialsFailed"),
                ("killed", "trialsKilled"),
                ("early_stopped", "trialsEarlyStopped"),
                ("metrics_unavailable", "trialMetricsUnavailable"),
            )
        },
        "best_trial": optimal.get("bestTrialName") or None,
        "parameters": {parameter_key(a["name"]): a.get("value") for a in optimal.get("parameterAssignments") or []},
        "metrics": metrics,
        OBJECTIVE: _float(objective),
    }


def _float(text: Any) -> float | None:
    try:
        return float(text)
    except (TypeError, ValueError):
        return None


def format_status(summary: dict) -> str:
    """One line for a log or a terminal: state, trial counts and the best trial."""
    return f"{KIND} {summary['name']}: {summary['state']}; {_progress(summary)}"


def _progress(summary: dict) -> str:
    t = summary["trials"]
    line = f"trials {t['total']} ({t['running']} running, {t['succeeded']} succeeded, {t['failed']} failed)"
    if summary["best_trial"]:
        params = ", ".join(f"{k}={v}" for k, v in summary["parameters"].items())
        line += f"; best {summary['best_trial']}: {OBJECTIVE}={summary[OBJECTIVE]} with {params}"
    return line


def experiment_status(name: str, namespace: str, api_client=None) -> dict:
    """:func:`summarize` of the Experiment as the API server has it now."""
    return summarize(_experiments(api_client).get(namespace, name))


def wait_experiment(
    name: str,
    namespace: str,
    api_client=None,
    poll_seconds: float = 30.0,
    timeout_seconds: float = 48 * 3600.0,
) -> dict:
    """Follow the Experiment until it Succeeded (return its :func:`summarize`) or Failed (TrainingError)."""
    experiments = _experiments(api_client)
    what = f"{KIND} {namespace}/{name}"

    def finished(obj: dict) -> bool:
        failed = kube.true_condition(obj, "Failed")
        if failed:
            reason = failed.get("reason") or "Failed"
            raise TrainingError(kube.one_line(f"{what} failed: {reason}: {failed.get('message') or 'no message'}"))
        return kube.true_condition(obj, "Succeeded") is not None

    def describe(obj: dict) -> list[str]:
        return kube.condition_lines(obj) + [_progress(summarize(obj))]

    get = partial(experiments.get, namespace, name)
    final = kube.watch(get, describe, finished, what, poll_seconds, timeout_seconds)
    return summarize(final)
