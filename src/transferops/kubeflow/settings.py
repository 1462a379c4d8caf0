"""The ``kfp:`` section of params.yaml: node pools, retries, caching, secrets, schedule, distribution.

Only the Kubeflow adapter reads it (the core :mod:`transferops.config` knows no cluster), with the same
parsing rules as every other section (:func:`transferops.config.build_section`). It ships in the library
because the Kubeflow components, which run in the image, need parts of it at run time.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from transferops.config import DEFAULT_PARAMS, apply_overrides, build_section, check_value, read_params
from transferops.errors import ConfigError


@dataclass(frozen=True)
class DistributedConfig:
    """Multi-node training on the cluster: pretrain and finetune run as a Kubeflow Trainer TrainJob."""

    nodes: int = 0
    """Nodes of the TrainJob; 0 = off (train in the task's own pod, on ``gpu.accelerator_limit`` GPUs)."""
    gpus_per_node: int = 1
    """Processes (one per GPU) on each node: M nodes x N GPUs run under torchrun."""
    runtime: str = "torch-distributed"
    """The ClusterTrainingRuntime the TrainJob refers to (installed with the Trainer)."""
    timeout_hours: float = 48.0
    """The task fails when the TrainJob has not finished after this long."""

    def __post_init__(self) -> None:
        check_value(self.nodes >= 0, "nodes", "an int >= 0", self.nodes)
        check_value(self.gpus_per_node >= 1, "gpus_per_node", "an int >= 1", self.gpus_per_node)
        check_value(self.timeout_hours > 0, "timeout_hours", "a float > 0", self.timeout_hours)

    @property
    def enabled(self) -> bool:
        return self.nodes > 0


@dataclass(frozen=True)
class EarlyStoppingConfig:
    """Katib's median stopping rule for sweep trials: a trial whose objective after ``start_step`` reports is
    below the median of the completed trials' at the same step is stopped (Katib's ``medianstop`` service)."""

    algorithm: Literal["", "medianstop"] = ""
    """``medianstop`` or empty (off)."""
    min_trials_required: int = 3
    """Completed trials needed before any trial is stopped."""
    start_step: int = 4
    """Reports of the objective a trial makes before it is compared."""

    def __post_init__(self) -> None:
        check_value(self.min_trials_required >= 1, "min_trials_required", "an int >= 1", self.min_trials_required)
        check_value(self.start_step >= 1, "start_step", "an int >= 1", self.start_step)


@dataclass(frozen=True)
class KatibConfig:
    """A sweep run as a Katib Experiment (``transferops sweep --engine katib``); parallelism is
    ``kfp.sweep_parallelism``."""

    max_failed_trials: int = 3
    """Failed trials that fail the Experiment; at most the number of trials (Katib's webhook refuses more)."""
    early_stopping: EarlyStoppingConfig = field(default_factory=EarlyStoppingConfig)

    def __post_init__(self) -> None:
        check_value(self.max_failed_trials >= 0, "max_failed_trials", "an int >= 0", self.max_failed_trials)


@dataclass(frozen=True)
class TolerationConfig:
    key: str = "nvidia.com/gpu"
    operator: Literal["Equal", "Exists"] = "Exists"
    value: str = ""
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute", ""] = "NoSchedule"


@dataclass(frozen=True)
class NodePoolConfig:
    """Where and with what resources a group of Kubeflow tasks runs."""

    accelerator_type: str = ""
    """e.g. nvidia.com/gpu; empty = no accelerator."""
    accelerator_limit: int = 0
    cpu_request: str = "1"
    cpu_limit: str = "2"
    memory_request: str = "2Gi"
    memory_limit: str = "4Gi"
    node_selector: dict[str, str] = field(default_factory=dict)
    tolerations: list[TolerationConfig] = field(default_factory=list)
    shm_size: str = ""
    """Size of an in-memory emptyDir mounted at /dev/shm (DataLoader workers need more than the default)."""


@dataclass(frozen=True)
class SecretConfig:
    """A Kubernetes secret whose keys become environment variables of every task."""

    name: str = ""
    env: dict[str, str] = field(default_factory=dict)
    """secret key -> environment variable name."""


@dataclass(frozen=True)
class KfpConfig:
    """The Kubeflow Pipelines DAG: node pools, retries, caching, secrets, schedule."""

    pipeline_name: str = "transferops-transfer"
    gpu: NodePoolConfig = field(
        default_factory=lambda: NodePoolConfig(
            "nvidia.com/gpu", 1, "4", "8", "16Gi", "32Gi", {}, [TolerationConfig()], "8Gi"
        )
    )
    """pretrain, finetune, evaluate."""
    cpu: NodePoolConfig = field(default_factory=NodePoolConfig)
    """ingest, register."""
    retries: int = 3
    """Retries of the GPU tasks: spot nodes get preempted. A retried pod resumes training from its state when
    base.state_uri points outside the pod (S3 or a mounted volume)."""
    backoff_duration: str = "60s"
    backoff_factor: float = 2.0
    cache_ingest: bool = True
    cache_training: bool = True
    """Cache pretrain/finetune/evaluate: the cache key is their inputs (params and upstream artifacts)."""
    secrets: list[SecretConfig] = field(default_factory=list)
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] = "IfNotPresent"
    cron: str = "0 0 3 * * *"
    """Recurring runs: KFP's 6-field cron (seconds first)."""
    max_concurrency: int = 1
    sweep_parallelism: int = 4
    """Points of a sweep (``transferops sweep --engine kubeflow``) trained at the same time."""
    catchup: bool = False
    namespace: str = "kubeflow"
    """Namespace of the Trainer jobs the pipeline creates when ``distributed`` is on."""
    distributed: DistributedConfig = field(default_factory=DistributedConfig)
    kueue_queue: str = ""
    """Kueue LocalQueue (in ``namespace``) the TrainJobs are submitted to, as label
    ``kueue.x-k8s.io/queue-name``; empty: no Kueue, the job starts at once."""
    katib: KatibConfig = field(default_factory=KatibConfig)

    def __post_init__(self) -> None:
        check_value(self.retries >= 0, "retries", "an int >= 0", self.retries)
        check_value(bool(self.namespace), "namespace", "a Kubernetes namespace", self.namespace)
        check_value(len(self.cron.split()) == 6, "cron", "a 6-field cron expression (seconds first)", self.cron)
        check_value(self.max_concurrency >= 1, "max_concurrency", "an int >= 1", self.max_concurrency)
        check_value(self.sweep_parallelism >= 1, "sweep_parallelism", "an int >= 1", self.sweep_parallelism)


def kfp_from_dict(data: dict[str, Any], overrides: list[str] | None = None) -> KfpConfig:
    """The ``kfp`` section of a parsed params mapping, with ``kfp.*`` overrides applied."""
    mine = [o for o in overrides or [] if o.split("=", 1)[0].strip().startswith("kfp.")]
    data = apply_overrides(data, mine)
    section = data.get("kfp") or {}
    if not isinstance(section, dict):
        raise ConfigError(f"kfp: expected a mapping (section), got {section!r}")
    return build_section(KfpConfig, section, "kfp")


def load_kfp_config(path: str | Path = DEFAULT_PARAMS, overrides: list[str] | None = None) -> KfpConfig:
    """Read and validate the ``kfp`` section of a params file; errors name the file and key."""
    try:
        return kfp_from_dict(read_params(path), overrides)
    except ConfigError as exc:
        raise ConfigError(f"{Path(path)}: {exc}") from None
