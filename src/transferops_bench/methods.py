"""``transferops benchmark methods`` (``make bench-methods``): every transfer method on the same data, backbone
and budget, over several seeds.

Steps: :func:`prepare_seed` (ingest every k once, pretrain once: the source and the test split do not depend
on k) -> :func:`plan` (which method runs at which k) -> :func:`run_method` / :func:`score_source_only` /
:func:`score_from_scratch` for every seed -> :func:`curve_plan` (the label-efficiency curve, for the best
unsupervised method by its mean over all seeds) -> :func:`build_report` -> :func:`write_report`.

Supervised methods run at the default labels per class k; unsupervised domain adaptation methods at k = 0
(their primary setting) and also at the default k. One setting per method (its params section), the same for
every seed. Each run's test accuracy after every epoch is measured offline (benchmark only, never visible to
training) to report how often the label-free criterion ``snd`` would pick a better epoch than the last.
"""

from __future__ import annotations

import json
import logging
import shutil
import statistics
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from transferops.config import Config
from transferops.data.shards import Split
from transferops_bench.seeds import stats

log = logging.getLogger(__name__)

DEFAULT_CURVE = (0, 1, 2, 5, 10)
CURVE_SUPERVISED = ("full_finetune", "fixmatch")
"""Methods the label-efficiency curve follows at every k > 0 (when benchmarked), besides from-scratch and the
best unsupervised method."""
CRITERION = "snd"
"""The label-free selection criterion whose picks are compared with the last epoch."""


@dataclass(frozen=True)
class SeedData:
    """One seed's prepared artifacts: a directory per k (ingested, pretrained) and the target test split."""

    seed: int
    cfg: Config
    dirs: dict[int, str]
    test: Split


@dataclass
class Run:
    """One trained (or scored) model: its test accuracy and, for methods, what every epoch scored."""

    method: str
    k: int
    seed: int
    accuracy: float
    seconds: float | None = None
    epoch_accuracy: list[float] = field(default_factory=list)
    """Test accuracy after each epoch (offline: the benchmark's probe, invisible to training)."""
    criterion: list[float] = field(default_factory=list)
    """The label-free criterion after each epoch (from the run's history)."""
    best_epoch: int = -1


def with_k(cfg: Config, artifacts: str, k: int, method: str | None = None) -> Config:
    """``cfg`` writing under ``artifacts`` with ``k`` labelled target images per class (and ``method``)."""
    target = replace(cfg.ingest.target, split=replace(cfg.ingest.target.split, labels_per_class=k))
    out = replace(cfg, base=replace(cfg.base, artifacts_dir=artifacts), ingest=replace(cfg.ingest, target=target))
    return replace(out, finetune=replace(cfg.finetune, method=method)) if method else out


def prepare_seed(cfg: Config, seed: int, ks: list[int], root: Path) -> SeedData:
    """Ingest the data for every k and pretrain once; the other k directories get a copy of the source model."""
    from transferops.data.shards import load_split
    from transferops.paths import Paths
    from transferops.stages import ingest, pretrain

    seed_cfg = replace(cfg, base=replace(cfg.base, seed=seed))
    dirs = {k: str(root / f"seed{seed}" / f"k{k}") for k in ks}
    first = Paths.from_config(with_k(seed_cfg, dirs[ks[0]], ks[0]))
    for n, k in enumerate(ks):
        kcfg = with_k(seed_cfg, dirs[k], k)
        ingest.run(kcfg)
        if n == 0:
            pretrain.run(kcfg)
        else:
            shutil.copytree(first.stage("pretrain"), Paths.from_config(kcfg).stage("pretrain"))
    return SeedData(seed, seed_cfg, dirs, load_split(first.target_data, "test"))


def score_source_only(data: SeedData) -> Run:
    """The source model as is (its source head) on the target test split."""
    from transferops.models.inference import accuracy
    from transferops.models.io import load_model
    from transferops.paths import Paths

    kdir = next(iter(data.dirs.values()))
    model, _ = load_model(Paths.from_config(with_k(data.cfg, kdir, 0)).source_model)
    return Run("source_only", 0, data.seed, accuracy(model, data.test))


def score_from_scratch(data: SeedData, k: int) -> Run:
    """The same network trained on the k labelled target images per class only, with the finetune budget."""
    from transferops.models.inference import accuracy
    from transferops.models.io import load_model
    from transferops.paths import Paths
    from transferops.stages import baseline

    kcfg = with_k(data.cfg, data.dirs[k], k)
    t0 = time.perf_counter()
    baseline.run(kcfg)
    model, _ = load_model(Paths.from_config(kcfg).baseline_model)
    return Run("from_scratch", k, data.seed, accuracy(model, data.test), time.perf_counter() - t0)


def run_method(data: SeedData, name: str, k: int) -> Run:
    """The finetune stage with ``name`` at ``k``; the test split is scored after every epoch, offline."""
    from transferops.models.inference import accuracy
    from transferops.models.io import load_model
    from transferops.paths import Paths
    from transferops.stages import finetune
    from transferops.stages.common import read_json

    cfg = with_k(data.cfg, data.dirs[k], k, name)
    epochs: list[float] = []
    t0 = time.perf_counter()
    result = finetune.run(cfg, epoch_probe=lambda model, epoch: epochs.append(accuracy(model, data.test)))
    seconds = time.perf_counter() - t0
    paths = Paths.from_config(cfg)
    model, _ = load_model(paths.target_model)
    history = read_json(paths.stage("finetune") / "history.json")
    run = Run(
        name,
        k,
        data.seed,
        accuracy(model, data.test),
        seconds,
        epochs,
        [h.get(f"target_{CRITERION}", float("nan")) for h in history],
        result.metrics.get("best_epoch", -1),
    )
    log.info("seed %d  %-13s k=%-2d accuracy %.4f  %.1fs", data.seed, name, k, run.accuracy, seconds)
    return run


def plan(names: list[str], unsupervised: list[str], k_default: int, k0_only: bool = False) -> list[tuple[str, int]]:
    """(method, k) of the table: supervised methods at the default k, unsupervised ones at 0 and the default k
    (only at 0 with ``k0_only``; methods that need labelled target images, e.g. fixmatch, are supervised here)."""
    runs = []
    for name in names:
        for k in dict.fromkeys(([0] if k0_only else [0, k_default]) if name in unsupervised else [k_default]):
            runs.append((name, k))
    return runs


def curve_plan(
    names: list[str], best_unsupervised: str | None, curve: tuple[int, ...], done: set[tuple[str, int]]
) -> list[tuple[str, int]]:
    """(method, k) the label-efficiency curve still needs: from-scratch and the supervised curve methods at
    every k > 0, the best unsupervised method at every k; runs the table already has are reused."""
    wanted = [("from_scratch", k) for k in curve if k > 0]
    wanted += [(n, k) for n in CURVE_SUPERVISED if n in names for k in curve if k > 0]
    if best_unsupervised:
        wanted += [(best_unsupervised, k) for k in curve]
    return [w for w in wanted if w not in done]


class Runs(list):
    """Every run of the benchmark, with the views the report needs."""

    def of(self, method: str, k: int) -> list[Run]:
        return [r for r in self if r.method == method and r.k == k]

    def keys(self) -> set[tuple[str, int]]:
        return {(r.method, r.k) for r in self}


def best_unsupervised(runs: Runs, unsupervised: list[str]) -> str | None:
    """The unsupervised method with the best mean test accuracy at k = 0 over every seed."""
    scored = [(statistics.fmean(r.accuracy for r in runs.of(n, 0)), n) for n in unsupervised if runs.of(n, 0)]
    return max(scored)[1] if scored else None


def methods(
    cfg: Config,
    n_seeds: int,
    names: list[str] | None = None,
    curve: tuple[int, ...] = DEFAULT_CURVE,
    out_dir: Path = Path("reports"),
    tracker=None,
    k0_only: bool = False,
) -> dict[str, Any]:
    """Run the benchmark for seeds ``base.seed .. base.seed + n_seeds - 1``; write and return the report
    (reports/methods.json, methods.md, label_efficiency.png; an MLflow parent run with a nested run per entry
    when ``tracker`` is an MLflow tracker)."""
    from transferops.errors import ConfigError
    from transferops.transfer import STRATEGIES

    names = names or sorted(STRATEGIES)
    unknown = [n for n in names if n not in STRATEGIES]
    if unknown:
        raise ConfigError(f"--methods: unknown {unknown} (expected some of {', '.join(sorted(STRATEGIES))})")
    k_default = cfg.ingest.target.split.labels_per_class or 0
    unsupervised = [n for n in names if not STRATEGIES[n].uses_target_labels]
    ks = sorted({k_default, *curve, *([0] if unsupervised else [])})
    runs = Runs()
    with tempfile.TemporaryDirectory(prefix="transferops-methods-") as tmp:
        seeds = [prepare_seed(cfg, cfg.base.seed + i, ks, Path(tmp)) for i in range(n_seeds)]
        for data in seeds:
            runs.append(score_source_only(data))
            runs.extend(run_method(data, name, k) for name, k in plan(names, unsupervised, k_default, k0_only))
        best = best_unsupervised(runs, unsupervised)
        # planned once, before any seed runs: planned per seed, the first seed's curve runs would make the
        # later seeds skip them (the curve had one seed)
        wanted = curve_plan(names, best, curve, runs.keys())
        if k_default and ("from_scratch", k_default) not in {*runs.keys(), *wanted}:
            wanted.append(("from_scratch", k_default))
        for data in seeds:
            for name, k in wanted:
                runs.append(score_from_scratch(data, k) if name == "from_scratch" else run_method(data, name, k))
    report = build_report(cfg, runs, names, unsupervised, k_default, curve, best, n_seeds)
    write_report(report, out_dir)
    _log_to_mlflow(cfg, report, tracker)
    return report


# ------------------------------------------------------------------------------------------- the report
def entry(runs: list[Run], k: int) -> dict[str, Any]:
    """Mean, standard deviation and per-seed values of some runs (one per seed)."""
    s = stats([r.accuracy for r in runs])
    out = {
        "accuracy_mean": s["mean"],
        "accuracy_std": s["std"],
        "labels_per_class": k,
        "runs": len(runs),
        "per_seed": {str(r.seed): r.accuracy for r in runs},
    }
    secs = [r.seconds for r in runs if r.seconds is not None]
    if secs:
        out["seconds"] = statistics.fmean(secs)
    return out


def selection_report(runs: Runs, unsupervised: list[str]) -> dict[str, Any]:
    """At k = 0, per unsupervised method: how often the epoch the criterion prefers scores better, the same,
    or worse on the test split than the last epoch, and the mean difference (points)."""
    per_method: dict[str, Any] = {}
    for name in unsupervised:
        deltas = []
        for r in runs.of(name, 0):
            valid = [(c, -i) for i, c in enumerate(r.criterion) if c == c]  # first epoch among equal scores
            if not valid or len(r.epoch_accuracy) != len(r.criterion):
                continue
            picked = -max(valid)[1]
            deltas.append(r.epoch_accuracy[picked] - r.epoch_accuracy[-1])
        if deltas:
            per_method[name] = {
                "better": sum(d > 1e-9 for d in deltas),
                "same": sum(abs(d) <= 1e-9 for d in deltas),
                "worse": sum(d < -1e-9 for d in deltas),
                "mean_delta": statistics.fmean(deltas),
            }
    total = {key: sum(m[key] for m in per_method.values()) for key in ("better", "same", "worse")}
    n = sum(total.values())
    total["mean_delta"] = (
        sum(m["mean_delta"] * (m["better"] + m["same"] + m["worse"]) for m in per_method.values()) / n if n else None
    )
    return {"criterion": CRITERION, "k": 0, "methods": per_method, "total": total}


def build_report(cfg, runs: Runs, names, unsupervised, k_default, curve, best, n_seeds) -> dict[str, Any]:
    def curve_of(name: str, key: str) -> list[float | None]:
        return [entry(runs.of(name, k), k)[key] if runs.of(name, k) else None for k in curve]

    followed = ["from_scratch", *(n for n in CURVE_SUPERVISED if n in names), *([best] if best else [])]
    k_of = {n: 0 if n in unsupervised else k_default for n in names}
    return {
        "baselines": {
            "source_only": entry(runs.of("source_only", 0), 0),
            "from_scratch": entry(runs.of("from_scratch", k_default), k_default),
        },
        "methods": {n: entry(runs.of(n, k_of[n]), k_of[n]) for n in names},
        "extra": [
            {"method": n, **entry(runs.of(n, k_default), k_default)}
            for n in unsupervised
            if k_default and runs.of(n, k_default)
        ],
        "curve": {"labels_per_class": list(curve), **{n: curve_of(n, "accuracy_mean") for n in followed}},
        "curve_std": {n: curve_of(n, "accuracy_std") for n in followed},
        "selection": selection_report(runs, unsupervised),
        "best_unsupervised": best,
        "seeds": n_seeds,
        "config": {
            "model": cfg.model.name,
            "default_labels_per_class": k_default,
            "finetune_epochs": cfg.finetune.epochs,
            "steps_per_epoch": cfg.finetune.steps_per_epoch,
            "batch_size": cfg.finetune.batch_size,
            "select": cfg.finetune.select,
            "pretrain_augment": cfg.pretrain.augment,
            "seed0": cfg.base.seed,
        },
    }


def write_report(report: dict[str, Any], out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "methods.json").write_text(json.dumps(report, indent=2) + "\n")
    (out_dir / "methods.md").write_text(methods_markdown(report))
    curve_png(report["curve"], report["curve_std"], out_dir / "label_efficiency.png")


def _pct(m: dict[str, Any]) -> str:
    if m["accuracy_mean"] is None:
        return "n/a"
    return f"{100 * m['accuracy_mean']:.1f} ± {100 * (m['accuracy_std'] or 0):.1f}"


def methods_markdown(report: dict[str, Any]) -> str:
    """The report as markdown: the methods table, the label-efficiency curve, the selection criterion."""
    src = report["baselines"]["source_only"]["accuracy_mean"]
    rows = [
        f"Target test accuracy (%), mean ± std over {report['seeds']} seeds; k = labelled target images per class; "
        f"selection `finetune.select: {report['config'].get('select', 'val')}`.",
        "",
        "| method | k | accuracy % | vs source-only (points) | per seed % | seconds |",
        "|---|---|---|---|---|---|",
    ]
    for name, m in report["baselines"].items():
        per = " ".join(f"{100 * v:.1f}" for v in m.get("per_seed", {}).values())
        rows.append(f"| {name} (baseline) | {m['labels_per_class']} | {_pct(m)} | | {per} | |")
    entries = [(n, m) for n, m in report["methods"].items()] + [(e["method"], e) for e in report["extra"]]
    for name, m in entries:
        delta = "n/a" if m["accuracy_mean"] is None or src is None else f"{100 * (m['accuracy_mean'] - src):+.1f}"
        per = " ".join(f"{100 * v:.1f}" for v in m.get("per_seed", {}).values())
        rows.append(f"| {name} | {m['labels_per_class']} | {_pct(m)} | {delta} | {per} | {m.get('seconds', 0):.1f} |")
    c, cs = report["curve"], report.get("curve_std", {})
    names = [n for n in c if n != "labels_per_class"]
    rows += ["", "Label efficiency (accuracy %, mean ± std over seeds):", "", "| k | " + " | ".join(names) + " |"]
    rows.append("|---" * (len(names) + 1) + "|")
    for i, k in enumerate(c["labels_per_class"]):
        vals = []
        for n in names:
            mean, std = c[n][i], (cs.get(n) or [None] * len(c[n]))[i]
            vals.append("n/a" if mean is None else f"{100 * mean:.1f} ± {100 * (std or 0):.1f}")
        rows.append(f"| {k} | " + " | ".join(vals) + " |")
    sel = report.get("selection")
    if sel and sel["methods"]:
        rows += [
            "",
            f"Label-free selection at k = 0: the epoch `{sel['criterion']}` prefers vs the last epoch, scored on the "
            "test split offline (runs where it picks a better / the same / a worse epoch; mean difference in points):",
            "",
            "| method | better | same | worse | mean difference |",
            "|---|---|---|---|---|",
        ]
        for name, m in [*sel["methods"].items(), ("**all**", sel["total"])]:
            delta = "n/a" if m["mean_delta"] is None else f"{100 * m['mean_delta']:+.2f}"
            rows.append(f"| {name} | {m['better']} | {m['same']} | {m['worse']} | {delta} |")
    return "\n".join(rows) + "\n"


def curve_png(curve: dict[str, list], std: dict[str, list], path: Path) -> None:
    """Accuracy against labels per class, one line per method, error bars = one standard deviation."""
    from transferops.evaluation.plots import pyplot

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    ks = curve["labels_per_class"]
    for name, vals in curve.items():
        if name == "labels_per_class":
            continue
        errs = std.get(name) or [None] * len(vals)
        pts = [(k, 100 * v, 100 * (e or 0)) for k, v, e in zip(ks, vals, errs, strict=True) if v is not None]
        if pts:
            x, y, e = zip(*pts, strict=True)
            ax.errorbar(x, y, yerr=e, marker="o", capsize=3, label=name)
    ax.set_xlabel("labelled target images per class")
    ax.set_ylabel("target test accuracy (%)")
    ax.set_xscale("symlog", linthresh=1)
    ax.set_xticks(ks, [str(k) for k in ks])
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title("How many labels do I need? (mean ± std over seeds)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _log_to_mlflow(cfg: Config, report: dict[str, Any], tracker) -> None:
    """One parent run for the benchmark, one nested run per method and baseline."""
    from transferops.tracking import MlflowTracker

    if not isinstance(tracker, MlflowTracker):
        return
    import mlflow

    parent = tracker.start_pipeline_run("benchmark-methods", cfg)
    client = mlflow.MlflowClient()
    client.log_text(parent, methods_markdown(report), "methods.md")
    entries = {**{f"baseline/{k}": v for k, v in report["baselines"].items()}, **report["methods"]}
    entries.update({f"{e['method']}@k={e['labels_per_class']}": e for e in report["extra"]})
    for name, m in entries.items():
        run = client.create_run(tracker.experiment_id, run_name=name, tags={"mlflow.parentRunId": parent})
        client.log_param(run.info.run_id, "labels_per_class", m["labels_per_class"])
        for key in ("accuracy_mean", "accuracy_std", "seconds"):
            if m.get(key) is not None:
                client.log_metric(run.info.run_id, key, m[key])
        client.set_terminated(run.info.run_id)
    tracker.end_pipeline_run()
