"""``transfer_pipeline``: the declared stage graph (:mod:`transferops.stages.graph`) as a Kubeflow DAG: ingest ->
rank -> schedule -> [retrain: pretrain -> finetune, baseline -> evaluate -> register (whose gate decides)].

Pipeline parameters default from ``params.yaml`` and the ``--set`` overrides given at compile time: the whole
resolved file travels as ``params_json`` (one line of JSON) and the knobs people turn most (seed, method,
labels per class) are parameters of their own in the KFP UI, plus free run-time ``overrides``
(``section.key=value``). Node pools, retries, caching, secrets and the schedule come from the ``kfp:`` section
(:mod:`transferops.kubeflow.settings`) and are compiled in: ``kfp.*`` overrides take effect at compile time
only, and a run-time ``kfp.*`` override is refused by the components.

Every task gets its run's id from its pod's ``pipeline/runid`` label (the Downward API) as
``TRANSFEROPS_RUN_KEY``: training state in ``base.state_uri`` and the MLflow parent run are keyed by it,
without a run-id input that would defeat caching.

    transferops pipeline compile [--out pipelines/transfer_pipeline.yaml]
    transferops pipeline run-local          # kfp.local, every component in this environment
    transferops pipeline submit --host URL
    transferops pipeline schedule --host URL [--cron "0 0 3 * * *"]
"""

import contextlib
import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

from kfp import compiler, dsl, kubernetes

from components import stages as c
from components.image import IMAGE
from transferops.config import apply_overrides, config_from_dict, read_params
from transferops.errors import PipelinesApiError
from transferops.kubeflow.launch import Launch, launch_for
from transferops.kubeflow.settings import KfpConfig, NodePoolConfig, kfp_from_dict
from transferops.stages import graph
from transferops.stages.graph import GRAPH, Stage
from transferops.training.state import RUN_KEY_ENV

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[1]
DEFAULT_PARAMS = Path(os.environ.get("TRANSFEROPS_PARAMS", REPO / "params.yaml"))
DEFAULT_OUT = REPO / "pipelines" / "transfer_pipeline.yaml"
RUN_ID_FIELD = "metadata.labels['pipeline/runid']"
"""The label KFP puts on every pod of a run (its run id), exposed to the tasks through the Downward API."""


def _place(task: dsl.PipelineTask, pool: NodePoolConfig, kfp: KfpConfig) -> dsl.PipelineTask:
    """Resources, node selection, /dev/shm, secrets and pull policy of one task."""
    task.set_cpu_request(pool.cpu_request).set_cpu_limit(pool.cpu_limit)
    task.set_memory_request(pool.memory_request).set_memory_limit(pool.memory_limit)
    if pool.accelerator_type and pool.accelerator_limit:
        task.set_accelerator_type(pool.accelerator_type).set_accelerator_limit(pool.accelerator_limit)
    for key, value in pool.node_selector.items():
        kubernetes.add_node_selector(task, key, value)
    for t in pool.tolerations:
        kubernetes.add_toleration(task, key=t.key, operator=t.operator, value=t.value or None, effect=t.effect or None)
    if pool.shm_size:
        kubernetes.empty_dir_mount(
            task, volume_name="dshm", mount_path="/dev/shm", medium="Memory", size_limit=pool.shm_size
        )
    for secret in kfp.secrets:
        kubernetes.use_secret_as_env(task, secret_name=secret.name, secret_key_to_env=dict(secret.env))
    kubernetes.set_image_pull_policy(task, kfp.image_pull_policy)
    kubernetes.use_field_path_as_env(task, env_name=RUN_KEY_ENV, field_path=RUN_ID_FIELD)
    return task


def _stage_task(stage: Stage, produced: dict, cfg, kfp: KfpConfig, launch: Launch, **params) -> dsl.PipelineTask:
    """One task for a graph stage: its inputs wired to the tasks that produce them, placed on its node pool."""
    component = getattr(c, stage.name)
    inputs = {a: produced[a] for a in stage.inputs_for(cfg)}
    if stage.resumable:  # how it runs (one process, torchrun, a TrainJob) is compiled in
        inputs["launch"] = launch.to_json()
    task = component(**inputs, **params)
    pool = launch.launcher_pool if stage.resumable else stage.pool  # a TrainJob's task only stages and waits
    _place(task, {"cpu": kfp.cpu, "gpu": kfp.gpu}[pool], kfp)
    if stage.pool == "gpu":  # spot GPU nodes get preempted: training resumes from its durable state
        task.set_retry(
            num_retries=kfp.retries, backoff_duration=kfp.backoff_duration, backoff_factor=kfp.backoff_factor
        )
    cache = kfp.cache_training if stage.pool == "gpu" else kfp.cache_ingest
    task.set_caching_options(cache and stage.cacheable).set_display_name(stage.name)
    for artifact in stage.outputs:
        produced[artifact] = task.outputs[artifact]
    return task


def resolve(params_path: Path = DEFAULT_PARAMS, overrides: list[str] | tuple[str, ...] = ()) -> tuple[dict, KfpConfig]:
    """The params the pipeline is compiled from (``--set`` applied, core sections validated) and its ``kfp``."""
    data = apply_overrides(read_params(params_path), list(overrides))
    config_from_dict(data)  # validates every core section; errors name the key
    return data, kfp_from_dict(data)


def _named_params(cfg) -> dict[str, Any]:
    k = cfg.ingest.target.split.labels_per_class
    return {"seed": cfg.base.seed, "method": cfg.finetune.method, "labels_per_class": -1 if k is None else k}


def build_pipeline(params_path: Path = DEFAULT_PARAMS, overrides: list[str] | tuple[str, ...] = ()):
    """The pipeline function: one task per stage of :data:`~transferops.stages.graph.GRAPH`, in its order, each
    input wired to the task producing it; the stages after the gate (``schedule``) under a ``dsl.If``. Parameter
    defaults come from ``params_path`` plus ``overrides``."""
    data, kfp = resolve(params_path, overrides)
    cfg = config_from_dict(data)
    # one line of JSON: KFP copies defaults into a comment header, which a multi-line string would break
    params_text = json.dumps(data, separators=(",", ":"))
    named = _named_params(cfg)
    launch = launch_for(kfp, IMAGE)  # how the training tasks run: one process, torchrun or a TrainJob

    @dsl.pipeline(name=kfp.pipeline_name, description="Transfer a source-domain model to a target domain.")
    def transfer_pipeline(
        params_json: str = params_text,
        seed: int = named["seed"],
        method: str = named["method"],
        labels_per_class: int = named["labels_per_class"],
        overrides: list = [],  # noqa: B006 (a KFP default, not a Python mutable shared across calls)
    ):
        common = dict(
            params_json=params_json, seed=seed, method=method, labels_per_class=labels_per_class, overrides=overrides
        )
        produced: dict[str, Any] = {}
        with contextlib.ExitStack() as gated:
            for stage in GRAPH:
                task = _stage_task(stage, produced, cfg, kfp, launch, **common)
                if stage.gate:  # the library decides (schedule.retrain_when); the rest runs only on "retrain"
                    gated.enter_context(dsl.If(task.outputs["Output"] == True, name="retrain"))  # noqa: E712

    return transfer_pipeline


def sweep_stages(points: list[list[str]]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(shared, per point): the stages up to evaluate that a sweep runs once, and those it runs per point: every
    stage that reads a key the grid varies, or an output of such a stage."""
    made_by = graph.producers()
    varied = {o.split("=", 1)[0] for point in points for o in point}
    looped: set[str] = set()
    for name in graph.upstream("evaluate"):
        stage = graph.BY_NAME[name]
        if any(graph.reads(name, key) for key in varied) or any(made_by[a] in looped for a in stage.all_inputs):
            looped.add(name)
    stages = graph.upstream("evaluate")
    return tuple(n for n in stages if n not in looped), tuple(n for n in stages if n in looped)


def build_sweep_pipeline(params_path: Path, overrides, points: list[list[str]]):
    """The shared stages once, then a ``dsl.ParallelFor`` over the sweep's points of the others
    (:func:`sweep_stages`; the points only vary finetune.* and evaluate.*: :func:`transferops.sweep.check_shared`)."""
    from transferops.sweep import check_shared

    check_shared(points)
    data, kfp = resolve(params_path, overrides)
    cfg = config_from_dict(data)
    params_text = json.dumps(data, separators=(",", ":"))
    launch = launch_for(kfp, IMAGE)
    shared, per_point = sweep_stages(points)
    items = [{"overrides": p} for p in points]

    @dsl.pipeline(name=f"{kfp.pipeline_name}-sweep", description="A grid over finetune/evaluate settings.")
    def sweep_pipeline(params_json: str = params_text, seed: int = cfg.base.seed):
        named = {**_named_params(cfg), "seed": seed}
        produced: dict[str, Any] = {}
        for name in shared:
            _stage_task(graph.BY_NAME[name], produced, cfg, kfp, launch, params_json=params_json, overrides=[], **named)
        with dsl.ParallelFor(items=items, parallelism=kfp.sweep_parallelism) as point:
            for name in per_point:
                stage = graph.BY_NAME[name]
                _stage_task(
                    stage, produced, cfg, kfp, launch, params_json=params_json, overrides=point.overrides, **named
                )

    return sweep_pipeline


def compile_pipeline(params_path: Path = DEFAULT_PARAMS, out: Path = DEFAULT_OUT, overrides=()) -> Path:
    """Write the pipeline's IR YAML (``overrides`` applied: ``kfp.*`` ones too)."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    compiler.Compiler().compile(build_pipeline(params_path, overrides), str(out))
    log.info("compiled %s", out)
    return out


def run_local(
    params_path: Path = DEFAULT_PARAMS,
    pipeline_root: Path = Path("kfp-local"),
    arguments: dict[str, Any] | None = None,
    cache: bool = False,
    overrides=(),
):
    """Run the whole DAG with kfp.local in this environment (resources and kubernetes settings are ignored,
    so the run key a cluster would put in each pod is set here for the task processes)."""
    pipeline = build_pipeline(params_path, overrides)
    return run_local_pipeline(lambda: pipeline(**(arguments or {})), pipeline_root, cache)


def local_summary(params_path: Path, pipeline_root: Path, overrides=()) -> str:
    """The summary of the newest kfp.local run under ``pipeline_root`` (its own outputs, not artifacts/)."""
    from transferops.summary import summary_text
    from transferops.tracking import resolve_tracking_uri

    runs = sorted((p for p in Path(pipeline_root).iterdir() if p.is_dir()), key=lambda p: p.stat().st_mtime)
    run = runs[-1]
    cfg = config_from_dict(apply_overrides(read_params(params_path), list(overrides)))
    return summary_text(
        run / "evaluate" / "evaluation", run / "register" / "registration", f"{run}/", resolve_tracking_uri(cfg.mlflow)
    )


def run_local_pipeline(pipeline, pipeline_root: Path, cache: bool = False):
    """Run a built pipeline function under kfp.local (see :func:`run_local`)."""
    import uuid

    from kfp import local

    local.init(
        runner=local.SubprocessRunner(use_venv=False),
        pipeline_root=str(Path(pipeline_root).resolve()),
        enable_caching=cache,
    )
    previous = os.environ.get(RUN_KEY_ENV)
    os.environ[RUN_KEY_ENV] = previous or f"local-{uuid.uuid4().hex[:12]}"
    try:
        return pipeline()
    finally:
        if previous is None:
            os.environ.pop(RUN_KEY_ENV, None)


def submit_pipeline(host: str, pipeline, experiment: str = "transferops", run_name: str | None = None):
    """Compile a built pipeline function (the sweep DAG) and start one run of it on a KFP server."""
    with tempfile.TemporaryDirectory() as tmp:
        package = Path(tmp) / "pipeline.yaml"
        compiler.Compiler().compile(pipeline, str(package))
        return _start_run(host, package, "sweep submit", {}, run_name, experiment)


def _start_run(host: str, package: Path, action: str, arguments: dict, run_name: str | None, experiment: str):
    """One run of a compiled package on the KFP server at ``host``; failures are one line naming ``action``."""
    with _kfp_api(host, action):
        return _client(host).create_run_from_pipeline_package(
            str(package), arguments=arguments, run_name=run_name, experiment_name=experiment
        )


@contextlib.contextmanager
def _kfp_api(host: str, action: str):
    """Turn the KFP client's connection and HTTP failures into one line naming the host: the client raises
    urllib3's MaxRetryError (with the whole retry chain) from its constructor's health check when nothing
    answers, and kfp_server_api's ApiException (with the response headers) when the server refuses. The
    client's version FutureWarning and urllib3's per-retry warnings are held back meanwhile."""
    import warnings

    from kfp_server_api.exceptions import ApiException
    from urllib3.exceptions import HTTPError

    retries = logging.getLogger("urllib3.connectionpool")
    level = retries.level
    retries.setLevel(logging.ERROR)  # one warning per retry of the health check, the error below says it once
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", "This client only works with", FutureWarning)
            yield
    except ApiException as exc:
        raise PipelinesApiError(
            f"{action}: the KFP API at {host} refused the request: HTTP {exc.status} {exc.reason}"
        ) from None
    except (HTTPError, OSError) as exc:
        reason = getattr(exc, "reason", None) or exc
        raise PipelinesApiError(f"{action}: cannot reach the KFP API at {host} ({reason})") from None
    finally:
        retries.setLevel(level)


def _client(host: str, namespace: str | None = None):
    import kfp

    return kfp.Client(host=host, namespace=namespace)


def submit(
    host: str,
    params_path: Path = DEFAULT_PARAMS,
    arguments: dict[str, Any] | None = None,
    experiment: str = "transferops",
    run_name: str | None = None,
    overrides=(),
):
    """Compile (``overrides`` applied) and start one run on a KFP server."""
    with tempfile.TemporaryDirectory() as tmp:
        package = compile_pipeline(params_path, Path(tmp) / "pipeline.yaml", overrides)
        return _start_run(host, package, "pipeline submit", arguments or {}, run_name, experiment)


def schedule(
    host: str,
    params_path: Path = DEFAULT_PARAMS,
    cron: str | None = None,
    experiment: str = "transferops",
    job_name: str = "transferops-nightly",
    arguments: dict[str, Any] | None = None,
    overrides=(),
):
    """Create a recurring run (6-field cron, max concurrency and catch-up from ``kfp:``), compiled with
    ``overrides`` applied."""
    _, kfp = resolve(params_path, overrides)
    with tempfile.TemporaryDirectory() as tmp:
        package = compile_pipeline(params_path, Path(tmp) / "pipeline.yaml", overrides)
        with _kfp_api(host, "pipeline schedule"):
            client = _client(host)
            exp = client.create_experiment(name=experiment)
            return client.create_recurring_run(
                experiment_id=exp.experiment_id,
                job_name=job_name,
                cron_expression=cron or kfp.cron,
                max_concurrency=kfp.max_concurrency,
                no_catchup=not kfp.catchup,
                pipeline_package_path=str(package),
                params=arguments or {},
            )


transfer_pipeline = build_pipeline() if DEFAULT_PARAMS.is_file() else None
"""Module-level pipeline for `kfp dsl compile --py pipelines/transfer_pipeline.py`."""

if __name__ == "__main__":
    compile_pipeline()
