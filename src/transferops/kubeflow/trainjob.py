"""Multi-node training as a Kubeflow Trainer TrainJob: build the manifest, create it, follow it, clean up.

The schema is ``trainer.kubeflow.org/v1alpha1`` as served by Kubeflow Trainer 2.2 and 2.3; the support floor
is :data:`MIN_TRAINER_VERSION` (tests/pipelines/test_kubeflow_schemas.py validates every manifest against the
upstream CRD of each supported release, vendored in tests/schemas/). What the manifest relies on:

- ``spec.runtimeRef`` names the ClusterTrainingRuntime (default ``torch-distributed``); its ``apiGroup``
  (``trainer.kubeflow.org``) and ``kind`` (``ClusterTrainingRuntime``) are the schema's defaults, written out.
- ``spec.trainer`` overrides the runtime's trainer, the replicated job and container both called ``node``:
  ``image``, ``command``, ``env``, ``numNodes``, ``numProcPerNode``, ``resourcesPerNode``.
- The torch runtime does **not** start torchrun itself. Its Torch plugin only sets torchrun's environment on
  the ``node`` container: ``PET_NNODES`` (numNodes), ``PET_NPROC_PER_NODE`` (numProcPerNode; ``auto`` when
  unset), ``PET_NODE_RANK`` (the pod's Job completion index), ``PET_MASTER_ADDR`` (``<job>-node-0-0.<job>``,
  node 0 behind the JobSet's headless service) and ``PET_MASTER_PORT`` (29500, opened on the container).
  torchrun reads each ``--option`` it is not given from ``PET_<OPTION>``, so :func:`torchrun_command` is plain
  ``torchrun --no-python transferops <stage> ...``: static rendezvous at node 0, and every one of the M x N
  processes gets ``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``, ``LOCAL_WORLD_SIZE``, ``MASTER_ADDR`` and
  ``MASTER_PORT`` from torchrun. The five ``PET_`` names are reserved: the webhook rejects a TrainJob setting one.
- Node selector, tolerations and the /dev/shm emptyDir reach the ``node`` pods through one
  ``spec.runtimePatches`` entry (manager :data:`PATCH_MANAGER`, applied as a strategic merge patch onto the
  runtime's JobSet template). Environment variables, secrets included, go in ``spec.trainer.env``: the webhook
  refuses env patches on the ``node`` container.
- An older Trainer's CRD does not declare ``runtimePatches`` (v2.1 has ``podTemplateOverrides`` instead), and a
  structural schema drops an undeclared field without a word: the job would run unplaced. So the launcher
  reads the job back after creating it (:func:`check_read_back`) and fails, naming the dropped field and the
  release that has it (:data:`FIELD_SINCE`), before any pod is scheduled in the wrong place.
- ``metadata.labels`` carries ``kueue.x-k8s.io/queue-name`` when a Kueue queue is set (:data:`KUEUE_QUEUE_LABEL`):
  Kueue then admits the job when its quota allows, and the job waits suspended until then.
- There is no field for the image pull policy in this schema: the runtime's container decides (Kubernetes'
  default: ``IfNotPresent`` unless the tag is ``latest``).
- ``status.conditions`` (metav1.Condition) carries ``Complete`` or ``Failed`` (copied from the JobSet's
  conditions) and ``Suspended``; ``status.jobsStatus`` counts the JobSet's child Jobs per replicated job (the
  torch runtime has one ``node`` Job holding all M pods: ``ready`` 1 means every node's pod is up).
- Names: DNS-1035 labels of at most 63 characters (CRD rule); JobSet also needs its longest pod name
  ``<job>-node-0-<M-1>-xxxxx`` to fit in 63, so :func:`job_name` stays within 40.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from transferops.errors import ConfigError, TrainingError
from transferops.kubeflow import kube

log = logging.getLogger(__name__)

GROUP = "trainer.kubeflow.org"
VERSION = "v1alpha1"
PLURAL = "trainjobs"
KIND = "TrainJob"
NODE = "node"
"""Replicated job and container of the trainer in the built-in runtimes (trainer's ``constants.Node``)."""
PATCH_MANAGER = "transferops.io/launcher"
"""Owner of our ``runtimePatches`` entry (the webhook wants a domain-prefixed path)."""
RESERVED_ENV = ("PET_NNODES", "PET_NPROC_PER_NODE", "PET_NODE_RANK", "PET_MASTER_ADDR", "PET_MASTER_PORT")
JOB_NAME_LENGTH = 40
MIN_TRAINER_VERSION = "v2.2.0"
"""The oldest Kubeflow Trainer release whose TrainJob schema keeps every field :func:`trainjob_manifest` writes."""
FIELD_SINCE = {"spec.runtimePatches": "v2.2.0"}
"""Fields of our manifests that older Trainer releases do not declare, with the first release that does
(a test derives this table from the vendored upstream schemas)."""
KUEUE_QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
LABEL_VALUE = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)?$")


@dataclass(frozen=True)
class TrainJobSpec:
    """One distributed run of a transferops stage: what to run, on how many nodes, and where."""

    name: str
    """TrainJob name (see :func:`job_name`): a DNS-1035 label short enough for the JobSet's pod names."""
    namespace: str
    image: str
    """The pipeline's image: the same code as the KFP task that launches the job."""
    command: list[str]
    """The stage command, e.g. ``["transferops", "finetune", "--params", "/workspace/params.yaml"]``; it runs
    under torchrun on every node (see :func:`torchrun_command`)."""
    num_nodes: int = 1
    procs_per_node: int = 1
    """Processes per node, normally one per GPU; at most the node's ``nvidia.com/gpu`` count when set."""
    resources_per_node: dict[str, dict[str, Any]] = field(default_factory=dict)
    """``{"requests": {...}, "limits": {"nvidia.com/gpu": N, "cpu": ..., "memory": ...}}`` for each node's pod."""
    node_selector: dict[str, str] = field(default_factory=dict)
    tolerations: list[dict] = field(default_factory=list)
    """Kubernetes tolerations (``key``, ``operator``, ``value``, ``effect``); empty strings are left out."""
    secret_env: list[tuple[str, dict[str, str]]] = field(default_factory=list)
    """``(secret name, {secret key: ENV_NAME})`` pairs, exposed to the training container as variables."""
    env: dict[str, str] = field(default_factory=dict)
    shm_size: str = ""
    """Size of the in-memory /dev/shm for DataLoader workers (e.g. ``"8Gi"``); empty: the runtime's default."""
    runtime: str = "torch-distributed"
    """Name of the ClusterTrainingRuntime the job refers to."""
    labels: dict[str, str] = field(default_factory=lambda: {"app.kubernetes.io/managed-by": "transferops"})
    queue: str = ""
    """Kueue LocalQueue the job is submitted to (label :data:`KUEUE_QUEUE_LABEL`); empty: no Kueue."""

    def __post_init__(self):
        # JobSet names the last pod <name>-node-0-<num_nodes - 1>-xxxxx, and that must fit in 63 characters
        kube.check_dns_name(self.name, "TrainJob name", 63 - len(f"-{NODE}-0-{self.num_nodes - 1}-xxxxx"))
        kube.check_dns_name(self.namespace, "namespace")
        if not self.image or not self.command:
            raise ConfigError("TrainJob: image and command must not be empty")
        if self.num_nodes < 1 or self.procs_per_node < 1:
            raise ConfigError(f"TrainJob: num_nodes ({self.num_nodes}) and procs_per_node must be at least 1")
        gpus = kube.gpu_count(self.resources_per_node)
        if gpus and self.procs_per_node > gpus:
            raise ConfigError(f"TrainJob: {self.procs_per_node} processes per node but only {gpus} GPU(s) per node")
        reserved = sorted(set(self.env) & set(RESERVED_ENV))
        if reserved:
            raise ConfigError(f"TrainJob env: {', '.join(reserved)} are set by the torch runtime (reserved)")
        if not self.runtime:
            raise ConfigError("TrainJob: runtime must name a ClusterTrainingRuntime")
        if len(self.queue) > 63 or not LABEL_VALUE.match(self.queue):
            raise ConfigError(f"TrainJob: Kueue queue {self.queue!r} is not a label value of at most 63 characters")
        # fail here, not when the manifest is built: unknown resource sections, duplicate variables, bad tolerations
        kube.resource_requirements(self.resources_per_node)
        kube.env_vars(self.env, self.secret_env)
        kube.tolerations(self.tolerations)


def job_name(run_id: str, stage: str) -> str:
    """A stable TrainJob name for ``stage`` of pipeline run ``run_id``: a retried task computes the same one.

    ``<stage>-<run id slug>-<8 hex digits of a hash>``, a DNS-1035 label of at most 40 characters.
    """
    if not run_id or not stage:
        raise ConfigError("job_name: run_id and stage must not be empty")
    return kube.dns_name(stage, run_id, max_length=JOB_NAME_LENGTH)


def torchrun_command(command: list[str]) -> list[str]:
    """``command`` under torchrun, which takes nodes, processes, rank and master from the runtime's PET_* env.

    ``--no-python`` runs the console script itself (``transferops``) instead of ``python <script>``. A command
    that already starts with ``torchrun`` is kept as given.
    """
    if command and command[0] == "torchrun":
        return list(command)
    return ["torchrun", "--no-python", *command]


def trainjob_manifest(spec: TrainJobSpec) -> dict:
    """The TrainJob object for ``spec`` (a plain dict, ready for the custom-objects API)."""
    trainer: dict[str, Any] = {
        "image": spec.image,
        "command": torchrun_command(spec.command),
        "numNodes": spec.num_nodes,
        "numProcPerNode": spec.procs_per_node,
    }
    resources = kube.resource_requirements(spec.resources_per_node)
    if resources:
        trainer["resourcesPerNode"] = resources
    env = kube.env_vars(spec.env, spec.secret_env)
    if env:
        trainer["env"] = env
    job_spec: dict[str, Any] = {
        "runtimeRef": {"name": spec.runtime, "apiGroup": GROUP, "kind": "ClusterTrainingRuntime"},
        "trainer": trainer,
    }
    pod_patch = _node_pod_patch(spec)
    if pod_patch:
        node_job = {"name": NODE, "template": {"spec": {"template": pod_patch}}}
        job_spec["runtimePatches"] = [
            {"manager": PATCH_MANAGER, "trainingRuntimeSpec": {"template": {"spec": {"replicatedJobs": [node_job]}}}}
        ]
    labels = dict(spec.labels)
    if spec.queue:
        labels[KUEUE_QUEUE_LABEL] = spec.queue
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": KIND,
        "metadata": {"name": spec.name, "namespace": spec.namespace, "labels": labels},
        "spec": job_spec,
    }


def _node_pod_patch(spec: TrainJobSpec) -> dict:
    """The ``node`` pods' template patch: placement and /dev/shm (empty when there is nothing to change)."""
    pod: dict[str, Any] = {}
    if spec.node_selector:
        pod["nodeSelector"] = dict(spec.node_selector)
    tolerations = kube.tolerations(spec.tolerations)
    if tolerations:
        pod["tolerations"] = tolerations
    if spec.shm_size:
        pod["volumes"] = [kube.shm_volume(spec.shm_size)]
        pod["containers"] = [{"name": NODE, "volumeMounts": [dict(kube.SHM_VOLUME)]}]
    return {"spec": pod} if pod else {}


def run_trainjob(
    spec: TrainJobSpec,
    api_client=None,
    poll_seconds: float = 10.0,
    timeout_seconds: float = 24 * 3600.0,
    keep: bool = False,
) -> dict:
    """Create the TrainJob (or attach to it if it exists), follow it to the end and return the final object.

    Each status change (conditions, child-job counts, progress) is logged once. A ``Failed`` condition raises
    TrainingError ``TrainJob <ns>/<name> failed: <reason>: <message>``; so do the timeout and API errors (one
    line naming the API server and the HTTP status). The job is deleted at the end, success or not, unless
    ``keep``. ``api_client``: a ``kubernetes.client.ApiClient``; default: in-cluster service account, else
    ~/.kube/config.
    """
    jobs = kube.CustomObjects(api_client, GROUP, VERSION, PLURAL, KIND)
    what = f"{KIND} {spec.namespace}/{spec.name}"
    manifest = trainjob_manifest(spec)
    obj, created = jobs.create(manifest, poll_seconds=poll_seconds, timeout_seconds=min(timeout_seconds, 600.0))
    try:
        if created:
            log.info(
                "%s created on %s: %d node(s) x %d process(es), runtime %s, image %s",
                what,
                jobs.host,
                spec.num_nodes,
                spec.procs_per_node,
                spec.runtime,
                spec.image,
            )
        else:
            log.warning("%s already exists (this task is a retry): following the running job", what)
            if (obj.get("spec") or {}).get("trainer") != manifest["spec"]["trainer"]:
                log.warning("%s: the existing job's trainer spec differs from this task's", what)
        # an existing job made from another spec is not this task's to judge (the warning above says so)
        checked = not created and (obj.get("spec") or {}).get("trainer") != manifest["spec"]["trainer"]

        def read() -> dict:  # the first read is compared with what was sent: a pruned field fails here
            nonlocal checked
            stored = jobs.get(spec.namespace, spec.name)
            if not checked:
                check_read_back(manifest, stored, what)
                checked = True
            return stored

        return kube.watch(
            read,
            describe,
            partial(_finished, what=what),
            what,
            poll_seconds,
            timeout_seconds,
        )
    finally:
        if not keep:
            _delete(jobs, spec, what)


def dropped_fields(sent: Any, stored: Any, path: str = "") -> list[str]:
    """Paths of ``sent`` that are missing from ``stored`` (what the server pruned); additions are ignored,
    since the server and its webhooks add defaults. Lists are compared item by item."""
    if isinstance(sent, dict) and isinstance(stored, dict):
        out = []
        for key, value in sent.items():
            child = f"{path}.{key}" if path else key
            out += dropped_fields(value, stored[key], child) if key in stored else [child]
        return out
    if isinstance(sent, list) and isinstance(stored, list):
        if len(stored) < len(sent):
            return [f"{path}[{i}]" for i in range(len(stored), len(sent))]
        pairs = enumerate(zip(sent, stored, strict=False))
        return [p for i, (a, b) in pairs for p in dropped_fields(a, b, f"{path}[{i}]")]
    return []


def check_read_back(sent: dict, stored: dict, what: str) -> None:
    """Raise TrainingError (one line) if the server dropped any field of ``sent``'s spec or labels: the fields
    named, with the Trainer release that declares them (:data:`FIELD_SINCE`)."""
    labels = {"labels": (sent.get("metadata") or {}).get("labels") or {}}
    stored_labels = {"labels": (stored.get("metadata") or {}).get("labels") or {}}
    missing = dropped_fields({"spec": sent.get("spec") or {}}, {"spec": stored.get("spec") or {}})
    missing += [f"metadata.{p}" for p in dropped_fields(labels, stored_labels)]
    if not missing:
        return
    since = {v for v in map(_since, missing) if v}
    needs = (
        f"it needs Kubeflow Trainer >= {max(since, key=_version_key)}, this cluster's is older"
        if since
        else f"this cluster's Trainer does not declare it (supported: Kubeflow Trainer >= {MIN_TRAINER_VERSION})"
    )
    raise TrainingError(
        kube.one_line(f"{what}: the API server dropped {', '.join(missing)} from the job as sent; {needs}")
    )


def _since(path: str) -> str | None:
    """The release that declares ``path`` or the field above it (list indices ignored), if :data:`FIELD_SINCE` knows."""
    plain = re.sub(r"\[\d+\]", "", path)
    for known, version in FIELD_SINCE.items():
        if plain == known or plain.startswith(known + "."):
            return version
    return None


def _version_key(version: str) -> tuple[int, ...]:
    return tuple(int(n) for n in re.findall(r"\d+", version))


def describe(obj: dict) -> list[str]:
    """The status lines worth logging: conditions, child Jobs per replicated job, trainer progress."""
    status = obj.get("status") or {}
    lines = kube.condition_lines(obj)
    for job in status.get("jobsStatus") or []:
        counts = ", ".join(f"{job.get(k) or 0} {k}" for k in ("active", "ready", "succeeded", "failed", "suspended"))
        lines.append(f"job {job.get('name')}: {counts}")
    progress = (status.get("trainerStatus") or {}).get("progressPercentage")
    if progress is not None:
        eta = status["trainerStatus"].get("estimatedRemainingSeconds")
        lines.append(f"progress {progress}%" + (f", about {eta} s left" if eta is not None else ""))
    return lines


def _finished(obj: dict, what: str) -> bool:
    failed = kube.true_condition(obj, "Failed")
    if failed:
        reason = failed.get("reason") or "Failed"
        raise TrainingError(kube.one_line(f"{what} failed: {reason}: {failed.get('message') or 'no message'}"))
    return kube.true_condition(obj, "Complete") is not None


def _delete(jobs: kube.CustomObjects, spec: TrainJobSpec, what: str) -> None:
    """Delete the job; a failure to do so is logged, never raised (it must not hide the run's own outcome)."""
    try:
        if jobs.delete(spec.namespace, spec.name):
            log.info("%s deleted", what)
    except TrainingError as exc:
        log.warning("%s; delete it by hand: kubectl delete %s -n %s %s", exc, PLURAL, spec.namespace, spec.name)
