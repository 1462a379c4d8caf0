"""How a Kubeflow training task runs its stage: in its own process, under torchrun on its pod's GPUs, or as a
Kubeflow Trainer TrainJob across nodes. The choice is made when the pipeline is compiled (:func:`launch_for`)
and travels to the component as one JSON parameter; the stage code is the same in all three.

- one process: ``stages.run_stage`` in the task's process;
- ``kfp.gpu.accelerator_limit`` N > 1: ``torchrun --standalone --nproc_per_node=N -m transferops <stage>`` in the
  task's pod (DDP; rank 0 writes the outputs into the task's workspace);
- ``kfp.distributed.nodes`` M > 0: a TrainJob runs ``transferops remote-stage`` on M nodes x N GPUs. Its pods
  do not see the task's artifacts, so the task stages them under ``base.state_uri`` (S3 or a volume mounted
  everywhere): ``<state_uri>/<run key>/<stage>/staging/{params.yaml,inputs/<artifact>/,outputs/<artifact>/}``.
  The task uploads the inputs and the resolved params, follows the job (its status streams into the task
  log; a failed job fails the task with the job's reason), then downloads the outputs into its own output
  artifacts, exactly as the single-pod path leaves them. A preempted worker restarts the job, and training
  resumes from the durable state under the same key.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from transferops.config import Config, dump_config, load_config
from transferops.errors import ConfigError, TrainingError
from transferops.paths import ARTIFACTS, Paths
from transferops.stages import graph
from transferops.training.state import RUN_KEY_ENV

log = logging.getLogger(__name__)

TRAINING_STAGES = graph.RESUMABLE
"""The stages that may run under torchrun or as a TrainJob (what they stage in and out: their graph entry)."""


@dataclass(frozen=True)
class Launch:
    """How a training task runs its stage (see the module docstring)."""

    nproc: int = 1
    """Processes in the task's own pod (its GPUs); > 1 runs torchrun."""
    trainjob: dict[str, Any] = field(default_factory=dict)
    """TrainJob settings (empty: no TrainJob): image, namespace, nodes, gpus_per_node, runtime, resources,
    node_selector, tolerations, secret_env, shm_size, timeout_hours, queue."""

    @property
    def launcher_pool(self) -> str:
        """The ``kfp`` node pool (``"cpu"`` or ``"gpu"``) the launching KFP task of a training stage needs.

        With a TrainJob the task only stages files and follows the job, so it runs on the CPU pool and holds no
        accelerator while the job trains; in its own pod (one process or torchrun) it trains, on the GPU pool.
        """
        return "cpu" if self.trainjob else "gpu"

    def trainjob_spec(self, stage: str, run_key: str, staging: str):
        """The :class:`~transferops.kubeflow.trainjob.TrainJobSpec` that runs ``stage`` of run ``run_key``, its
        inputs and outputs staged under ``staging`` (see :func:`staging_uri`)."""
        from transferops.kubeflow.trainjob import TrainJobSpec, job_name

        settings = self.trainjob
        return TrainJobSpec(
            name=job_name(run_key, stage),
            namespace=settings["namespace"],
            image=settings["image"],
            command=["transferops", "remote-stage", stage, "--staging", staging],
            num_nodes=settings["nodes"],
            procs_per_node=settings["gpus_per_node"],
            resources_per_node=settings["resources"],
            node_selector=settings["node_selector"],
            tolerations=settings["tolerations"],
            secret_env=[tuple(s) for s in settings["secret_env"]],
            env={RUN_KEY_ENV: run_key},
            shm_size=settings["shm_size"],
            runtime=settings["runtime"],
            queue=settings.get("queue", ""),
        )

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> Launch:
        return cls(**json.loads(text or "{}"))


def launch_for(kfp, image: str) -> Launch:
    """The launch of the training tasks for a ``kfp:`` section (:class:`~transferops.kubeflow.settings.KfpConfig`)."""
    d, gpu = kfp.distributed, kfp.gpu
    if not d.enabled:
        return Launch(nproc=max(1, gpu.accelerator_limit) if gpu.accelerator_type else 1)
    limits = {"cpu": gpu.cpu_limit, "memory": gpu.memory_limit}
    if gpu.accelerator_type:
        limits[gpu.accelerator_type] = d.gpus_per_node
    return Launch(
        trainjob={
            "image": image,
            "namespace": kfp.namespace,
            "nodes": d.nodes,
            "gpus_per_node": d.gpus_per_node,
            "runtime": d.runtime,
            "resources": {"requests": {"cpu": gpu.cpu_request, "memory": gpu.memory_request}, "limits": limits},
            "node_selector": dict(gpu.node_selector),
            "tolerations": [asdict(t) for t in gpu.tolerations],
            "secret_env": [[s.name, dict(s.env)] for s in kfp.secrets],
            "shm_size": gpu.shm_size,
            "timeout_hours": d.timeout_hours,
            "queue": kfp.kueue_queue,
        }
    )


# ------------------------------------------------------------------------------------------------ in the task
def run(stage: str, cfg: Config, ws: Path, launch: Launch, api_client=None):
    """Run ``stage`` for a Kubeflow task whose inputs are laid out in ``ws``; outputs end up in ``ws``.
    ``api_client`` (a ``kubernetes`` ApiClient) is for a TrainJob; default: the pod's service account."""
    from transferops.stages import run_stage
    from transferops.stages.common import StageResult, read_json
    from transferops.tracking import make_tracker

    cfg = replace(cfg, base=replace(cfg.base, artifacts_dir=str(ws)))
    if stage not in TRAINING_STAGES or (launch.nproc <= 1 and not launch.trainjob):
        return run_stage(stage, cfg, make_tracker(cfg))
    if launch.trainjob:
        _via_trainjob(stage, cfg, ws, launch.trainjob, api_client)
    else:
        _via_torchrun(stage, cfg, ws, launch.nproc)
    result = read_json(Paths(ws).stage(stage) / "result.json")
    return StageResult(**{k: v for k, v in result.items() if k in ("stage", "outputs", "metrics", "lineage")})


def _via_torchrun(stage: str, cfg: Config, ws: Path, nproc: int) -> None:
    params = ws / "params.yaml"
    params.write_text(dump_config(cfg))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
    cmd += ["-m", "transferops", stage, "--params", str(params)]
    log.info("%s: %d processes on this pod's GPUs: %s", stage, nproc, " ".join(cmd))
    rc = subprocess.call(cmd, cwd=ws)
    if rc != 0:
        raise TrainingError(f"{stage}: torchrun with {nproc} processes failed (exit code {rc}); see the log above")


def staging_uri(cfg: Config, stage: str) -> str:
    """Where a TrainJob's inputs and outputs are staged: beside the stage's durable training state."""
    from transferops.training.state import state_location

    run_key = os.environ.get(RUN_KEY_ENV, "")
    if not cfg.base.state_uri or not run_key:
        raise ConfigError(
            "kfp.distributed: the TrainJob's pods need base.state_uri (s3://bucket/prefix or a volume mounted on "
            f"every node) and the run key {RUN_KEY_ENV} to stage their inputs and outputs"
        )
    return state_location(cfg.base.state_uri, cfg.base.artifacts_dir, stage).rsplit("/", 1)[0] + "/staging"


def _via_trainjob(stage: str, cfg: Config, ws: Path, settings: dict[str, Any], api_client=None) -> None:
    from transferops.kubeflow.trainjob import run_trainjob

    staging = staging_uri(cfg, stage)
    layout = Paths(ws)
    remote_cfg = replace(cfg, base=replace(cfg.base, artifacts_dir="artifacts"))
    with tempfile.TemporaryDirectory(prefix="transferops-params-") as tmp:
        (Path(tmp) / "params.yaml").write_text(dump_config(remote_cfg))
        put_tree(Path(tmp), staging)
    for name in graph.stage(stage).inputs_for(cfg):
        put_tree(layout.artifact(name), f"{staging}/inputs/{name}")
    spec = Launch(trainjob=settings).trainjob_spec(stage, os.environ[RUN_KEY_ENV], staging)
    poll = float(settings.get("poll_seconds", 10.0))
    run_trainjob(spec, api_client, poll_seconds=poll, timeout_seconds=settings["timeout_hours"] * 3600)
    for name in graph.stage(stage).outputs:
        get_tree(f"{staging}/outputs/{name}", layout.artifact(name))


# ------------------------------------------------------------------------------------------------ in the job
def remote_stage(stage: str, staging: str) -> int:
    """Inside a TrainJob pod (every rank): fetch the staged params and inputs, run the stage under the DDP
    group torchrun formed, and (rank 0) put the outputs back for the Kubeflow task."""
    from transferops.stages import run_stage
    from transferops.tracking import make_tracker

    rank = int(os.environ.get("RANK", "0"))
    ws = Path(tempfile.mkdtemp(prefix=f"transferops-{stage}-rank{rank}-"))
    get_tree(staging, ws, only="params.yaml")
    cfg = load_config(ws / "params.yaml")
    cfg = replace(cfg, base=replace(cfg.base, artifacts_dir=str(ws / "artifacts")))
    layout = Paths(ws / "artifacts")
    for name in graph.stage(stage).inputs_for(cfg):
        get_tree(f"{staging}/inputs/{name}", layout.artifact(name))
    run_stage(stage, cfg, make_tracker(cfg, enabled=rank == 0))
    if rank == 0:
        for name in graph.stage(stage).outputs:
            put_tree(layout.artifact(name), f"{staging}/outputs/{name}")
    return 0


# ------------------------------------------------------------------------------------------------ staging
def put_tree(local: Path, uri: str) -> None:
    """Copy a folder's files to ``uri`` (``s3://...`` or a path), keeping relative paths."""
    files = [p for p in Path(local).rglob("*") if p.is_file()]
    if uri.startswith("s3://"):
        from transferops.data.s3 import client, split_url

        bucket, prefix = split_url(uri)
        s3 = client()
        for f in files:
            s3.upload_file(str(f), bucket, prefix + f.relative_to(local).as_posix())
        return
    for f in files:
        dest = Path(uri) / f.relative_to(local)
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(f, dest)


def get_tree(uri: str, local: Path, only: str | None = None) -> None:
    """Copy the files under ``uri`` into ``local`` (just ``only`` when given)."""
    local.mkdir(parents=True, exist_ok=True)
    if uri.startswith("s3://"):
        from transferops.data.s3 import client, split_url

        if only:
            bucket, prefix = split_url(uri)
            client().download_file(bucket, prefix + only, str(local / only))
            return
        from transferops.data.s3 import download_prefix

        download_prefix(uri, local)
        return
    source = Path(uri)
    if only:
        shutil.copy2(source / only, local / only)
        return
    shutil.copytree(source, local, dirs_exist_ok=True)


__all__ = ["ARTIFACTS", "Launch", "launch_for", "remote_stage", "run"]
