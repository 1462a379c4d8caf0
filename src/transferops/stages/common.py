"""What every stage shares: its result type, all-or-nothing output directories, JSON files, and the pieces
the two training stages (pretrain, finetune) have in common: the training-state store and the outputs."""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from transferops.config import Config, dump_config
from transferops.training.checkpoint import atomic_write_text

log = logging.getLogger(__name__)


@dataclass
class StageResult:
    """What a stage returns to its caller (CLI, DVC, kfp component) and writes as ``result.json``."""

    stage: str
    outputs: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    run_id: str | None = None
    lineage: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_file(self) -> dict[str, Any]:
        """What ``result.json`` holds: everything but the MLflow run id, which differs on every run and would
        make the file (a DVC output) change when nothing else did. The run id is in ``run.json``."""
        return {k: v for k, v in asdict(self).items() if k != "run_id"}


def write_json(path: Path, data: Any) -> None:
    atomic_write_text(Path(path), json.dumps(data, indent=2, sort_keys=False, default=_json_default) + "\n")


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "tolist"):
        return obj.tolist()
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def read_json(path: Path) -> Any:
    return json.loads(Path(path).read_text())


@contextlib.contextmanager
def staged_output(out_dir: Path) -> Iterator[Path]:
    """Yield a scratch directory that replaces ``out_dir`` only when the block succeeds.

    A stage that fails half-way leaves no output directory at all (a previous complete one is removed
    first), so neither a later stage nor ``dvc repro`` can mistake partial outputs for finished ones.
    """
    out_dir = Path(out_dir)
    tmp = out_dir.with_name(out_dir.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.rmtree(out_dir, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    tmp.rename(out_dir)


def training_setup(cfg: Config, tracker):
    """(distributed info, device, tracker) of a training stage: under torchrun this process joins the group
    and takes its GPU; ranks other than 0 track nothing (rank 0 alone writes outputs and MLflow)."""
    from transferops.tracking import NullTracker
    from transferops.training import distributed
    from transferops.training.seeding import resolve_device

    dist, device = distributed.setup(resolve_device(cfg.base.device))
    return dist, device, (tracker if dist.is_main else NullTracker())


def state_store(cfg: Config, stage: str):
    """The store of a training stage's resumable state (``base.state_uri``, keyed by run and stage)."""
    from transferops.training.state import open_state_store, state_location

    return open_state_store(state_location(cfg.base.state_uri, cfg.base.artifacts_dir, stage))


def write_trained_model(
    stage: str,
    cfg: Config,
    model,
    classes: list[str],
    image_shape: list[int],
    fit,
    metrics: dict[str, Any],
    lin: dict[str, Any],
    tracker,
) -> StageResult:
    """Outputs of a training stage, all or nothing: checkpoint, metrics, per-epoch history, resolved params,
    result (all deterministic: DVC hashes them) and ``run.json`` (run id, seconds, throughput: they differ on
    every run, so DVC does not track them). Then the stage's MLflow run gets the selection as
    ``selected_val_accuracy`` (never into the per-epoch ``val_accuracy`` series) and the bookkeeping as tags."""
    from transferops.models.io import save_model
    from transferops.paths import Paths

    final = Paths.from_config(cfg).stage(stage)
    with staged_output(final) as out:
        save_model(out / "model.pt", model, cfg, classes, image_shape, lin)
        write_json(out / "metrics.json", metrics)
        write_json(out / "history.json", fit.history)
        save_resolved_config(cfg, out)
        result = StageResult(stage, {"model": str(final / "model.pt")}, metrics, tracker.run_id, lin)
        write_json(out / "result.json", result.to_file())
        run = {
            "mlflow_run_id": tracker.run_id,
            "seconds": round(fit.seconds, 2),
            "resumed_from_step": fit.resumed_from_step,
            "epochs": fit.timing,
        }
        write_json(out / "run.json", run)
    selected = next((v for k, v in metrics.items() if k.endswith("val_accuracy")), None)
    tracker.log_metrics({"selected_val_accuracy": selected, "resumed_from_step": fit.resumed_from_step})
    tracker.set_tags(
        {f"transferops.{k}": str(v) for k, v in metrics.items() if not k.endswith("val_accuracy")}
        | {"transferops.seconds": f"{fit.seconds:.1f}"}
    )
    tracker.log_artifact(final / "model.pt", "checkpoint")
    return result


def start_stage(cfg: Config) -> None:
    """Seed and configure torch for a stage (called at the top of every ``run``)."""
    import torch

    from transferops.training.seeding import seed_everything

    seed_everything(cfg.base.seed, cfg.base.deterministic)
    if cfg.base.num_threads:
        torch.set_num_threads(cfg.base.num_threads)
    else:
        warn_shared_cpu(torch.get_num_threads())


def warn_shared_cpu(threads: int) -> str | None:
    """A warning when torch's threads outnumber the idle cores: on a CPU other processes keep busy, intra-op
    threads wait on each other at every op (small models and batches suffer most), so a step can be many
    times slower than with one thread. The thread count is not changed here: it can change floating-point
    summation order, so a run's results must not depend on the machine's load."""
    import os

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    busy = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    if threads <= 1 or busy < cores:
        return None
    msg = (
        f"the CPU is shared (load {busy:.1f} on {cores} cores) and torch runs {threads} threads: they contend "
        "and training can be many times slower; set base.num_threads=1 (or fewer than the idle cores)"
    )
    log.warning("%s", msg)
    return msg


def save_resolved_config(cfg: Config, out_dir: Path) -> None:
    (Path(out_dir) / "params.resolved.yaml").write_text(dump_config(cfg))
