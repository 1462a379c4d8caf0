"""The pipeline, declared once: every stage, what it reads and writes, and where it runs.

Every runtime reads this table instead of writing the pipeline out again:

- ``transferops run --direct`` runs :data:`GRAPH` in order (:func:`transferops.stages.run_pipeline`);
- ``dvc.yaml`` is generated from it (``transferops pipeline dvc-yaml``; a test holds the committed file to it);
- the Kubeflow DAG and the sweep DAG (``pipelines/transfer_pipeline.py``) create one task per stage and wire
  each input to the task that produces it; a test holds the compiled IR's tasks and edges to it;
- the Katib trial, ``benchmark seeds`` and the Trainer launcher (which artifacts a TrainJob must stage in and
  out) take their stage lists from it.

Adding a stage means one :class:`Stage` entry here plus its library module ``transferops.stages.<name>``
(with ``run(cfg, tracker) -> StageResult``), and a kfp component of the same name.

**The schedule gate.** ``schedule`` decides after ingest whether this run retrains (``schedule.retrain_when``).
Every stage after it is *gated*: ``run --direct`` stops, the Kubeflow DAG puts the gated tasks under a
``dsl.If``, and under ``dvc repro`` a gated stage whose decision says no keeps its previous outputs (DVC
``persist``), so a plain ``dvc repro`` obeys the same decision as the other runtimes.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Literal

from transferops.config import Config, TrainConfig

Pool = Literal["cpu", "gpu"]


def _uses_source_data(cfg: Config) -> bool:
    from transferops.transfer.choice import uses_source_data

    return uses_source_data(cfg)


@dataclass(frozen=True)
class Output:
    """One file (or folder) a stage writes, as DVC should track it."""

    path: str
    """Relative to ``base.artifacts_dir``."""
    kind: Literal["out", "metric", "plot"] = "out"
    cache: bool = True
    plot: Mapping[str, str] = field(default_factory=dict)
    """``dvc plots`` settings (x, y, template) of a plot."""


@dataclass(frozen=True)
class Stage:
    """One pipeline stage (see the module docstring)."""

    name: str
    help: str
    """One line: the CLI's help for the stage's subcommand."""
    inputs: tuple[str, ...] = ()
    """Artifacts (:data:`transferops.paths.ARTIFACTS`) the stage reads, produced by earlier stages."""
    outputs: tuple[str, ...] = ()
    """Artifacts the stage produces."""
    params: tuple[str, ...] = ()
    """The params.yaml sections or ``section.key`` entries the stage's result depends on."""
    files: tuple[Output, ...] = ()
    """The files DVC tracks for the outputs."""
    pool: Pool = "cpu"
    """The Kubeflow node pool (``kfp.cpu`` or ``kfp.gpu``) of its task."""
    resumable: bool = False
    """Keeps a resumable training state (``--restart`` discards it); may run under torchrun or a TrainJob."""
    cacheable: bool = True
    """False: its result depends on state outside the pipeline (the registry), so it always runs."""
    gate: bool = False
    """Decides whether the stages after it run (``schedule``)."""
    optional_inputs: Mapping[str, Callable[[Config], bool]] = field(default_factory=dict)
    """Inputs read only when the predicate says so (a source-free method's finetune needs no source data)."""

    def inputs_for(self, cfg: Config) -> tuple[str, ...]:
        """The artifacts this stage reads under ``cfg``."""
        return self.inputs + tuple(name for name, needed in self.optional_inputs.items() if needed(cfg))

    @property
    def all_inputs(self) -> tuple[str, ...]:
        """Every artifact the stage may read (DVC deps are declared for all of them)."""
        return self.inputs + tuple(self.optional_inputs)


def _training_outputs(stage: str) -> tuple[Output, ...]:
    return (
        Output(f"{stage}/model.pt"),
        Output(f"{stage}/result.json"),
        Output(f"{stage}/params.resolved.yaml"),
        Output(f"{stage}/metrics.json", "metric", cache=False),
        Output(f"{stage}/history.json", "plot", cache=False, plot={"x": "epoch", "y": "val_accuracy"}),
    )


BASELINE_FROM_PRETRAIN = ("lr", "optimizer", "weight_decay", "label_smoothing", "augment")
"""How the from-scratch baseline learns: as pretrain trains a model from random weights (its learning rate,
optimiser, weight decay, label smoothing and augmentation), not as finetune adapts pretrained ones. Finetune's
small learning rate and light augmentation suit weights worth keeping; a random network trained that way on a
handful of labels memorises them (measured: 18 % from scratch against 52 % with pretrain's augmentation on a
colour letters target, reports/user-tasks/), which would make any transfer look good."""
BASELINE_IGNORES = ("select_best", "log_every_steps", "prefetch", "checkpoint_every_steps")
"""Budget keys the baseline does not depend on: it always keeps the best val epoch; the others change when the
loss is read, how batches are assembled and how often state is saved, not what is learnt."""
BASELINE_BUDGET = (
    *(f"pretrain.{key}" for key in BASELINE_FROM_PRETRAIN),
    *(
        f"finetune.{f.name}"
        for f in dataclasses.fields(TrainConfig)
        if f.name not in (*BASELINE_IGNORES, *BASELINE_FROM_PRETRAIN)
    ),
)
"""The from-scratch baseline trains for finetune's budget (epochs, steps, batch, schedule; not its method) with
pretrain's way of learning (:data:`BASELINE_FROM_PRETRAIN`)."""


GRAPH: tuple[Stage, ...] = (
    Stage(
        "ingest",
        "read, validate, split and shard the source and target datasets",
        outputs=("source_data", "target_data"),
        params=("base", "ingest"),
        files=(Output("ingest"),),
    ),
    Stage(
        "rank",
        "rank rank.candidates by transferability on the labelled target images (a no-op without candidates)",
        inputs=("target_data",),
        outputs=("ranking",),
        params=("base", "model", "rank"),
        files=(Output("rank/choice.json", cache=False), Output("rank/ranking.json", cache=False)),
    ),
    Stage(
        "schedule",
        "decide whether this run retrains (schedule.retrain_when against the current champion)",
        inputs=("target_data",),
        outputs=("decision",),
        params=("schedule", "register", "mlflow"),
        files=(Output("schedule/gate.json", cache=False), Output("schedule/decision.json", cache=False)),
        cacheable=False,
        gate=True,
    ),
    Stage(
        "pretrain",
        "train the model on the labelled source domain",
        inputs=("source_data", "ranking"),
        outputs=("source_model",),
        params=("base", "ingest", "model", "pretrain", "rank"),
        files=_training_outputs("pretrain"),
        pool="gpu",
        resumable=True,
    ),
    Stage(
        "finetune",
        "transfer the source model to the target domain with finetune.method",
        inputs=("target_data", "source_model"),
        optional_inputs={"source_data": _uses_source_data},
        outputs=("target_model",),
        params=("base", "ingest", "model", "finetune"),
        files=_training_outputs("finetune"),
        pool="gpu",
        resumable=True,
    ),
    Stage(
        "baseline",
        "train the same architecture from scratch on the labelled target only, for the finetune budget",
        inputs=("target_data", "ranking"),
        outputs=("baseline_model",),
        params=(
            "base",
            "model",
            *BASELINE_BUDGET,
            "finetune.class_balance",
            "evaluate.from_scratch_baseline",
        ),
        files=(Output("baseline"),),
        pool="gpu",
    ),
    Stage(
        "evaluate",
        "score on the target test split against the source-only and from-scratch baselines",
        inputs=("target_data", "source_model", "target_model", "baseline_model"),
        outputs=("evaluation",),
        params=("base", "evaluate"),
        files=(
            Output("evaluate/metrics.json", "metric", cache=False),
            Output("evaluate/result.json"),
            Output("evaluate/params.resolved.yaml"),
            Output("evaluate/confusion_matrix.json"),
            Output(
                "evaluate/predictions.csv",
                "plot",
                cache=False,
                plot={"template": "confusion", "x": "actual", "y": "predicted"},
            ),
            Output("evaluate/calibration.csv", "plot", cache=False, plot={"x": "confidence", "y": "accuracy"}),
            Output("evaluate/confusion_matrix.png", "plot", cache=False),
            Output("evaluate/reliability.png", "plot", cache=False),
            Output("evaluate/review"),  # the reviewer's panels: saliency, most-confused pairs (review.json)
        ),
        pool="gpu",
    ),
    Stage(
        "register",
        "log to MLflow, register, alias challenger, promote to champion if the gate passes",
        inputs=("target_data", "target_model", "evaluation"),
        outputs=("registration",),
        params=("register", "mlflow"),
        cacheable=False,
    ),
)
"""The stages in the order they run (each input is produced by an earlier stage)."""

BY_NAME: dict[str, Stage] = {s.name: s for s in GRAPH}
NAMES: tuple[str, ...] = tuple(BY_NAME)
RESUMABLE: tuple[str, ...] = tuple(s.name for s in GRAPH if s.resumable)


def stage(name: str) -> Stage:
    from transferops.errors import ConfigError

    if name not in BY_NAME:
        raise ConfigError(f"unknown stage {name!r} (expected one of {', '.join(NAMES)})")
    return BY_NAME[name]


def producers() -> dict[str, str]:
    """Artifact -> the stage that produces it."""
    return {a: s.name for s in GRAPH for a in s.outputs}


def gated(name: str) -> bool:
    """Whether ``name`` runs only when the gate (``schedule``) says this run retrains."""
    names = list(NAMES)
    gates = [i for i, s in enumerate(GRAPH) if s.gate]
    return bool(gates) and names.index(name) > gates[0]


def upstream(name: str, cfg: Config | None = None) -> tuple[str, ...]:
    """The stages ``name`` needs, itself included, in pipeline order (``cfg``: only the inputs it reads)."""
    made_by = producers()
    needed, todo = {name}, [name]
    while todo:
        s = BY_NAME[todo.pop()]
        for artifact in s.inputs_for(cfg) if cfg is not None else s.all_inputs:
            if made_by[artifact] not in needed:
                needed.add(made_by[artifact])
                todo.append(made_by[artifact])
    return tuple(n for n in NAMES if n in needed)


def edges(cfg: Config) -> set[tuple[str, str, str]]:
    """(producer stage, consumer stage, artifact) for every input under ``cfg``."""
    made_by = producers()
    return {(made_by[a], s.name, a) for s in GRAPH for a in s.inputs_for(cfg)}


def reads(stage_name: str, key: str) -> bool:
    """Whether the stage's result depends on the param ``key`` (``section.key...``)."""
    return any(key == p or key.startswith(p + ".") for p in BY_NAME[stage_name].params)
