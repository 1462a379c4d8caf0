"""One Kubeflow Pipelines component per stage of :data:`transferops.stages.graph.GRAPH`, of the same name, whose
artifact inputs and outputs are the stage's (a test holds them to the graph).

Each component is an interface (typed inputs and outputs the KFP UI understands) plus one call into the
library: ``transferops.kubeflow.kfp_io`` links the input artifacts into the layout the stage expects, runs the stage's
``run`` and copies its outputs into the output artifacts. There is no ML logic here. The bodies import
``transferops`` themselves because KFP ships each function's source, not this module, into the container.
"""

from typing import Optional

from kfp import dsl
from kfp.dsl import HTML, Artifact, ClassificationMetrics, Dataset, Input, Metrics, Model, Output

from components.image import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def ingest(
    params_json: str,
    seed: int,
    method: str,
    labels_per_class: int,
    overrides: list,
    source_data: Output[Dataset],
    target_data: Output[Dataset],
    validation: Output[Metrics],
):
    """Read, validate, split and shard the source and target datasets (transferops.stages.ingest)."""

    from transferops.kubeflow import kfp_io

    cfg = kfp_io.component_config(params_json, seed, method, labels_per_class, overrides)
    outputs = {"source_data": source_data.path, "target_data": target_data.path}
    result, _ = kfp_io.run_stage_in_workspace("ingest", cfg, {}, outputs)
    kfp_io.record_metrics(validation, result.metrics)


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def rank(
    params_json: str,
    seed: int,
    method: str,
    labels_per_class: int,
    overrides: list,
    target_data: Input[Dataset],
    ranking: Output[Artifact],
):
    """Rank rank.candidates by transferability on the labelled target images (transferops.stages.rank); with
    rank.apply, pretrain builds the winner. A no-op choice without candidates."""

    from transferops.kubeflow import kfp_io

    cfg = kfp_io.component_config(params_json, seed, method, labels_per_class, overrides)
    kfp_io.run_stage_in_workspace("rank", cfg, {"target_data": target_data.path}, {"ranking": ranking.path})


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def schedule(
    params_json: str,
    seed: int,
    method: str,
    labels_per_class: int,
    overrides: list,
    target_data: Input[Dataset],
    decision: Output[Artifact],
) -> bool:
    """Whether this run retrains (schedule.retrain_when against the current champion: transferops.stages.schedule);
    never cached, since the registry it asks changes between runs."""

    from transferops.kubeflow import kfp_io

    cfg = kfp_io.component_config(params_json, seed, method, labels_per_class, overrides)
    inputs, outputs = {"target_data": target_data.path}, {"decision": decision.path}
    result, _ = kfp_io.run_stage_in_workspace("schedule", cfg, inputs, outputs)
    decision.metadata.update({k: result.metrics[k] for k in ("retrain", "reason")})
    return bool(result.metrics["retrain"])


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def pretrain(
    params_json: str,
    seed: int,
    method: str,
    labels_per_class: int,
    overrides: list,
    launch: str,
    source_data: Input[Dataset],
    ranking: Input[Artifact],
    source_model: Output[Model],
    metrics: Output[Metrics],
):
    """Train the model on the labelled source domain (transferops.stages.pretrain); ``launch`` (compiled in)
    runs it in this pod, under torchrun on its GPUs, or as a Kubeflow Trainer job."""

    from transferops.kubeflow import kfp_io

    cfg = kfp_io.component_config(params_json, seed, method, labels_per_class, overrides)
    inputs = {"source_data": source_data.path, "ranking": ranking.path}
    outputs = {"source_model": source_model.path}
    result, _ = kfp_io.run_stage_in_workspace("pretrain", cfg, inputs, outputs, launch)
    kfp_io.record_metrics(metrics, kfp_io.training_metrics(result, source_model.path))


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def finetune(
    params_json: str,
    seed: int,
    method: str,
    labels_per_class: int,
    overrides: list,
    launch: str,
    target_data: Input[Dataset],
    source_model: Input[Model],
    target_model: Output[Model],
    metrics: Output[Metrics],
    source_data: Optional[Input[Dataset]] = None,  # noqa: UP045 (KFP reads this annotation)
):
    """Transfer the source model to the target domain with the configured method (transferops.stages.finetune);
    ``launch`` (compiled in) runs it in this pod, under torchrun on its GPUs, or as a Kubeflow Trainer job.
    ``source_data`` is left unconnected for a source-free method (``shot``): the source model alone travels."""

    from transferops.kubeflow import kfp_io

    cfg = kfp_io.component_config(params_json, seed, method, labels_per_class, overrides)
    inputs = {"target_data": target_data.path, "source_model": source_model.path}
    inputs.update(kfp_io.source_data_input(cfg, source_data and source_data.path))
    outputs = {"target_model": target_model.path}
    result, _ = kfp_io.run_stage_in_workspace("finetune", cfg, inputs, outputs, launch)
    target_model.metadata["method"] = result.lineage.get("method", method)
    kfp_io.record_metrics(metrics, kfp_io.training_metrics(result, target_model.path))


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def baseline(
    params_json: str,
    seed: int,
    method: str,
    labels_per_class: int,
    overrides: list,
    target_data: Input[Dataset],
    ranking: Input[Artifact],
    baseline_model: Output[Model],
):
    """Train the same architecture from scratch on the labelled target only, with the finetune budget
    (transferops.stages.baseline); cached on what it depends on, so a new method does not retrain it."""

    from transferops.kubeflow import kfp_io

    cfg = kfp_io.component_config(params_json, seed, method, labels_per_class, overrides)
    inputs = {"target_data": target_data.path, "ranking": ranking.path}
    kfp_io.run_stage_in_workspace("baseline", cfg, inputs, {"baseline_model": baseline_model.path})


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def evaluate(
    params_json: str,
    seed: int,
    method: str,
    labels_per_class: int,
    overrides: list,
    target_data: Input[Dataset],
    source_model: Input[Model],
    target_model: Input[Model],
    baseline_model: Input[Model],
    evaluation: Output[Artifact],
    metrics: Output[Metrics],
    confusion_matrix: Output[ClassificationMetrics],
    report: Output[HTML],
):
    """Score on the target test split against the source-only and from-scratch baselines
    (transferops.stages.evaluate); the gate itself is the register step's."""
    from pathlib import Path

    from transferops.kubeflow import kfp_io

    cfg = kfp_io.component_config(params_json, seed, method, labels_per_class, overrides)
    inputs = {
        "target_data": target_data.path,
        "source_model": source_model.path,
        "target_model": target_model.path,
        "baseline_model": baseline_model.path,
    }
    result, _ = kfp_io.run_stage_in_workspace("evaluate", cfg, inputs, {"evaluation": evaluation.path})
    kfp_io.record_metrics(metrics, result.metrics)
    classes, matrix = kfp_io.confusion(Path(evaluation.path))
    confusion_matrix.log_confusion_matrix(classes, matrix)
    Path(report.path).write_text(kfp_io.evaluation_report_html(Path(evaluation.path)))


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def register(
    params_json: str,
    seed: int,
    method: str,
    labels_per_class: int,
    overrides: list,
    target_data: Input[Dataset],
    target_model: Input[Model],
    evaluation: Input[Artifact],
    registration: Output[Artifact],
) -> str:
    """Gate, register and alias the candidate (transferops.registry.gate.register_candidate, as the CLI and DVC
    do): below register.min_accuracy nothing is registered; returns the version ("" when none)."""
    import json
    from pathlib import Path

    from transferops.kubeflow import kfp_io

    cfg = kfp_io.component_config(params_json, seed, method, labels_per_class, overrides)
    inputs = {"target_data": target_data.path, "target_model": target_model.path, "evaluation": evaluation.path}
    result, _ = kfp_io.run_stage_in_workspace("register", cfg, inputs, {"registration": registration.path})
    reg = json.loads((Path(registration.path) / "registration.json").read_text())
    registration.metadata.update({k: reg[k] for k in ("model_name", "version", "promoted", "reason")})
    return str(reg["version"] or "")
