"""Experiment tracking behind a small interface: MLflow in the pipeline, a null tracker in unit tests.

The tracking URI is resolved when a tracker is constructed, never at import: ``mlflow.tracking_uri`` in params,
else ``$MLFLOW_TRACKING_URI``, else ``sqlite:///mlflow.db`` in the working directory with artifacts under
``./mlruns``. One pipeline execution is one parent run; each stage is a nested run under it. Stages run as
separate processes under DVC, so the parent's id travels in ``$TRANSFEROPS_PARENT_RUN_ID``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from transferops.config import Config, MlflowConfig, dump_config
from transferops.errors import TrackingError

log = logging.getLogger(__name__)

PARENT_ENV = "TRANSFEROPS_PARENT_RUN_ID"
EXECUTION_TAG = "transferops.execution"
POINT_ENV = "TRANSFEROPS_SWEEP_POINT"
DEFAULT_DB = "mlflow.db"
TRAINING_STAGES = frozenset({"pretrain", "finetune"})
"""Stages whose runs record system metrics (``mlflow.system_metrics``): where utilisation explains throughput."""


def resolve_tracking_uri(cfg: MlflowConfig) -> str:
    """params -> environment -> local sqlite file in the working directory."""
    if cfg.tracking_uri:
        return cfg.tracking_uri
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env
    return f"sqlite:///{Path.cwd() / DEFAULT_DB}"


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} -> {"a.b": 1} (MLflow params are flat)."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


class NullTracker:
    """Records nothing; lets the library run without MLflow (unit tests, quick experiments)."""

    run_id: str | None = None
    parent_run_id: str | None = None

    @contextlib.contextmanager
    def stage_run(
        self, stage: str, cfg: Config, tags: dict[str, str] | None = None, resume_run_id: str | None = None
    ) -> Iterator[NullTracker]:
        yield self

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        pass

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        pass

    def log_dict(self, data: dict[str, Any], name: str) -> None:
        pass

    def set_tags(self, tags: dict[str, str]) -> None:
        pass

    def log_datasets(self, manifests: dict[str, dict[str, Any]], root: Path | None = None) -> None:
        pass

    def log_to_parent(self, metrics: dict[str, float] | None = None, tags: dict[str, str] | None = None) -> None:
        pass


class MlflowTracker(NullTracker):
    """MLflow-backed tracker; see the module docstring for how the URI and parent run are chosen."""

    def __init__(self, cfg: MlflowConfig, parent_run_id: str | None = None) -> None:
        import mlflow

        # bounded: an unreachable server fails in seconds with a clear message instead of retrying for minutes
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")
        self.mlflow = mlflow
        self.uri = resolve_tracking_uri(cfg)
        mlflow.set_tracking_uri(self.uri)
        self.experiment_id = self._experiment(cfg.experiment)
        self.parent_run_id = parent_run_id or os.environ.get(PARENT_ENV) or None
        self.owns_parent_status = False
        self.run_id: str | None = None

    def _experiment(self, name: str) -> str:
        client = self.mlflow.MlflowClient()
        try:
            exp = client.get_experiment_by_name(name)
            if exp is not None:
                return exp.experiment_id
            location = None
            if self.uri.startswith("sqlite:///"):  # keep artifacts beside the database, not in ./mlruns of any cwd
                location = (Path(self.uri[len("sqlite:///") :]).parent / "mlruns").resolve().as_uri()
            try:
                return client.create_experiment(name, artifact_location=location)
            except self.mlflow.exceptions.MlflowException as exc:
                exp = client.get_experiment_by_name(name)  # another process created it first
                if exc.error_code == "RESOURCE_ALREADY_EXISTS" and exp is not None:
                    return exp.experiment_id
                raise
        except Exception as exc:  # network errors arrive as MlflowException or requests errors
            raise TrackingError(
                f"{safe_uri(self.uri)}: MLflow tracking server unreachable or refused ({_first_line(exc)})"
            ) from None

    def start_pipeline_run(
        self, name: str | None, cfg: Config, execution: str | None = None, pid: int | None = None
    ) -> str:
        """Create the parent run of one pipeline execution; returns its id (left open).

        Named ``<method>-k<labels>-seed<seed>`` unless ``name`` is given, with a description saying what ran;
        ``execution`` tags it so the stages of the same execution (DVC, Kubeflow) find it again.
        """
        client = self.mlflow.MlflowClient()
        tags = {
            "transferops.kind": "pipeline",
            "transferops.host": socket.gethostname(),
            "transferops.pid": str(pid or os.getpid()),
            "mlflow.note.content": pipeline_description(cfg),
        }
        if execution:
            tags[EXECUTION_TAG] = execution
        sweep = os.environ.get("TRANSFEROPS_SWEEP_PARENT")
        if sweep:  # a point of a sweep: its pipeline run nests under the sweep's run
            tags["mlflow.parentRunId"] = sweep
        run = client.create_run(self.experiment_id, run_name=name or pipeline_run_name(cfg), tags=tags)
        self.parent_run_id = run.info.run_id
        from mlflow.entities import Param

        params = [Param(k, str(v)[:6000]) for k, v in flatten(cfg.to_dict()).items()]
        for start in range(0, len(params), 100):  # the API's limit per batch
            client.log_batch(self.parent_run_id, params=params[start : start + 100])
        return self.parent_run_id

    def end_pipeline_run(self, status: str = "FINISHED") -> None:
        if self.parent_run_id:
            self.mlflow.MlflowClient().set_terminated(self.parent_run_id, status)

    def attach_execution(self, cfg: Config) -> None:
        """Find or create the parent run of the execution this stage belongs to (when it is not given).

        A DVC pipeline (``dvc repro``, ``dvc exp run``) is identified by its ``dvc`` process and a Kubeflow run
        by its run id (``TRANSFEROPS_RUN_KEY``): every stage of one execution then nests under one parent run,
        whichever path started it. The parent's status follows its stages (RUNNING while one runs).
        """
        if self.parent_run_id:
            return
        execution, owner = execution_key()
        if execution is None:
            return
        client = self.mlflow.MlflowClient()
        found = client.search_runs(
            [self.experiment_id], f"tags.`{EXECUTION_TAG}` = '{execution}'", max_results=1, order_by=["start_time ASC"]
        )
        if found:
            self.parent_run_id = found[0].info.run_id
            client.update_run(self.parent_run_id, status="RUNNING")
        else:
            self.start_pipeline_run(None, cfg, execution, pid=owner)
        self.owns_parent_status = True

    def log_to_parent(self, metrics: dict[str, float] | None = None, tags: dict[str, str] | None = None) -> None:
        """Headline results on the parent run (what a reviewer sees in the runs table)."""
        if not self.parent_run_id:
            return
        client = self.mlflow.MlflowClient()
        for key, value in (metrics or {}).items():
            if isinstance(value, int | float) and value == value:
                client.log_metric(self.parent_run_id, key, float(value))
        for key, value in (tags or {}).items():
            client.set_tag(self.parent_run_id, key, value)

    @contextlib.contextmanager
    def stage_run(
        self, stage: str, cfg: Config, tags: dict[str, str] | None = None, resume_run_id: str | None = None
    ) -> Iterator[MlflowTracker]:
        """A run for one stage, nested under the pipeline's parent run when there is one.

        ``resume_run_id`` (the run a saved training state names) continues that run instead of opening a new
        one, so a training killed and resumed is one run in the UI. Runs of this stage left RUNNING by a
        process of this machine that no longer exists are marked KILLED first. The runs of training stages
        (:data:`TRAINING_STAGES`) record MLflow's ``system/*`` metrics when ``mlflow.system_metrics`` is on.
        """
        self.attach_execution(cfg)
        self._reap_dead_runs(stage, keep=resume_run_id)
        resumed = resume_run_id is not None and self._run_exists(resume_run_id)
        all_tags = {
            "transferops.stage": stage,
            "transferops.host": socket.gethostname(),
            "transferops.pid": str(os.getpid()),
            **(tags or {}),
        }
        if self.parent_run_id and not resumed:
            all_tags["mlflow.parentRunId"] = self.parent_run_id
        system = self._system_metrics(stage, cfg.mlflow)
        if resumed:
            run = self.mlflow.start_run(run_id=resume_run_id, log_system_metrics=system)
            self.mlflow.set_tags(all_tags)
            log.info("%s: continuing MLflow run %s of the interrupted training", stage, resume_run_id)
        else:
            run = self.mlflow.start_run(
                experiment_id=self.experiment_id, run_name=stage, tags=all_tags, log_system_metrics=system
            )
        status = "FAILED"
        with run:
            self.run_id = run.info.run_id
            if not resumed:
                self.mlflow.log_params(flatten(cfg.to_dict()))
                self.mlflow.log_text(dump_config(cfg), "config/params.resolved.yaml")
            try:
                yield self
                status = "FINISHED"
            finally:
                self.run_id = None
                if self.owns_parent_status:
                    self.mlflow.MlflowClient().set_terminated(self.parent_run_id, status)

    def _system_metrics(self, stage: str, cfg: MlflowConfig) -> bool:
        """Whether this stage's run records system metrics; sets MLflow's sampling interval when it does.

        MLflow samples CPU, memory, disk and network with psutil, and NVIDIA GPUs through pynvml when that
        imports (its absence only drops the GPU series).
        """
        if not (cfg.system_metrics and stage in TRAINING_STAGES):
            return False
        self.mlflow.set_system_metrics_sampling_interval(cfg.system_metrics_interval)
        return True

    def _run_exists(self, run_id: str) -> bool:
        try:
            self.mlflow.MlflowClient().get_run(run_id)
            return True
        except self.mlflow.exceptions.MlflowException:
            log.warning("MLflow run %s of the saved training state is gone: opening a new run", run_id)
            return False

    def _reap_dead_runs(self, stage: str, keep: str | None = None) -> None:
        """Mark KILLED the runs still RUNNING whose process (on this machine) is gone: a stage or pipeline
        killed with SIGKILL never ends its run itself."""
        client = self.mlflow.MlflowClient()
        host = socket.gethostname()
        query = f"attributes.status = 'RUNNING' and tags.`transferops.host` = '{host}'"
        try:
            runs = client.search_runs([self.experiment_id], query, max_results=100)
        except self.mlflow.exceptions.MlflowException:
            return
        for run in runs:
            pid = run.data.tags.get("transferops.pid", "")
            if run.info.run_id == keep or not pid.isdigit() or _alive(int(pid)):
                continue
            client.set_terminated(run.info.run_id, "KILLED")
            name = run.data.tags.get("mlflow.runName", run.info.run_id)
            log.info("MLflow run %s (%s) was left RUNNING by a process that died: marked KILLED", run.info.run_id, name)

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        clean = {k: float(v) for k, v in metrics.items() if isinstance(v, int | float) and v == v}
        if clean:
            self.mlflow.log_metrics(clean, step=step)

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        self.mlflow.log_artifact(str(path), artifact_path)

    def log_dict(self, data: dict[str, Any], name: str) -> None:
        self.mlflow.log_text(json.dumps(data, indent=2, default=str), name)

    def set_tags(self, tags: dict[str, str]) -> None:
        self.mlflow.set_tags(tags)

    def log_datasets(self, manifests: dict[str, dict[str, Any]], root: Path | None = None) -> None:
        """Record each ingested dataset (name, kind, version as digest) as an MLflow dataset input of this run
        and of the pipeline's parent run: what fills the Dataset column of the runs table."""
        import warnings

        from mlflow.data.dataset_source_registry import resolve_dataset_source
        from mlflow.data.meta_dataset import MetaDataset
        from mlflow.entities import DatasetInput, InputTag

        inputs = []
        for domain, manifest in manifests.items():
            spec = manifest.get("spec", {})
            where = spec.get("path") or str((root or Path("artifacts/ingest")) / domain)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                source = resolve_dataset_source(where if "://" in where else str(Path(where).resolve()))
            name = f"{domain}-{spec.get('kind', 'data')}"
            dataset = MetaDataset(source, name=name, digest=manifest["version"])
            self.mlflow.log_input(dataset, context=domain)
            tag = InputTag(key="mlflow.data.context", value=domain)
            inputs.append(DatasetInput(dataset=dataset._to_mlflow_entity(), tags=[tag]))
        if self.parent_run_id:
            self.mlflow.MlflowClient().log_inputs(self.parent_run_id, datasets=inputs)


def pipeline_run_name(cfg: Config) -> str:
    """``<method>-k<labels per class>-seed<seed>``: what a reviewer scans for in the runs table."""
    k = cfg.ingest.target.split.labels_per_class
    return f"{cfg.finetune.method}-k{'all' if k is None else k}-seed{cfg.base.seed}"


def pipeline_description(cfg: Config) -> str:
    """The parent run's description (markdown, shown on its page)."""
    k = cfg.ingest.target.split.labels_per_class
    src, tgt = cfg.ingest.source, cfg.ingest.target
    return (
        f"transferops pipeline: a `{cfg.model.name}` pretrained on `{src.kind}`{' ' + src.path if src.path else ''} "
        f"and transferred to `{tgt.kind}`{' ' + tgt.path if tgt.path else ''} with **{cfg.finetune.method}**, "
        f"{'all' if k is None else k} labelled target image(s) per class, seed {cfg.base.seed}. Each stage is a "
        "nested run; the headline metrics (accuracy, transfer gain, promoted) are on this run."
    )


def execution_key() -> tuple[str | None, int | None]:
    """(what identifies the pipeline execution this process belongs to, the pid that owns it) or (None, None).

    A Kubeflow run: its run id. A DVC execution: the ``dvc`` process that runs the stages (DVC sets
    ``DVC_STAGE`` for them), with its start time so a recycled pid is another execution.
    """
    run_key = os.environ.get("TRANSFEROPS_RUN_KEY")
    if run_key:
        point = os.environ.get(POINT_ENV)  # a sweep's point: its tasks are a pipeline run of their own
        return f"kfp:{run_key}" + (f":{point}" if point else ""), None
    if not os.environ.get("DVC_STAGE"):
        return None, None
    pid = os.getppid()
    for _ in range(8):  # dvc -> shell -> launcher -> python: a few levels at most
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return None, None
        if any(part.endswith((b"/dvc", b"dvc")) or part == b"dvc" for part in cmdline[:2]):
            return f"dvc:{socket.gethostname()}:{pid}:{stat[19]}", pid
        pid = int(stat[1])
        if pid <= 1:
            break
    return None, None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:300]


def safe_uri(uri: str) -> str:
    """A URI fit to print: any user:password@ and credential values masked."""
    from transferops.secrets import mask

    return mask(uri)


def make_tracker(cfg: Config, enabled: bool = True) -> NullTracker:
    """The tracker the stages use: MLflow unless disabled."""
    return MlflowTracker(cfg.mlflow) if enabled else NullTracker()
