"""Benchmarks that print figures (``make bench``); they assert nothing, CI does not time them.

``seeds``: the default pipeline (ingest -> pretrain -> finetune -> evaluate) once per seed, each in its own
artifacts directory, without MLflow; reports the target accuracy, both baselines, the transfer gain and the
wall time per seed, their mean and standard deviation, into ``reports/seeds.json`` and ``reports/seeds.md``.
"""

from __future__ import annotations

import json
import logging
import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from transferops.config import Config

log = logging.getLogger(__name__)

KEYS = ("accuracy", "source_only_accuracy", "from_scratch_accuracy", "transfer_gain", "seconds")


def _stats(values: list[float | None]) -> dict[str, float | None]:
    vals = [v for v in values if v is not None]
    if not vals:
        return {"mean": None, "std": None}
    return {"mean": statistics.fmean(vals), "std": statistics.stdev(vals) if len(vals) > 1 else 0.0}


def seeds(cfg: Config, n: int, out_dir: Path = Path("reports")) -> dict[str, Any]:
    """Run the pipeline for seeds ``base.seed .. base.seed + n - 1``; write and return the report."""
    from transferops.stages import evaluate, finetune, ingest, pretrain

    rows = []
    with tempfile.TemporaryDirectory(prefix="transferops-bench-") as tmp:
        for i in range(n):
            seed = cfg.base.seed + i
            run_cfg = replace(cfg, base=replace(cfg.base, seed=seed, artifacts_dir=f"{tmp}/seed{seed}"))
            t0 = time.perf_counter()
            for stage in (ingest, pretrain, finetune):
                stage.run(run_cfg)
            m = evaluate.run(run_cfg).metrics
            rows.append({"seed": seed, **{k: m[k] for k in KEYS[:-1]}, "seconds": time.perf_counter() - t0})
            log.info("seed %d: %s", seed, {k: round(v, 4) for k, v in rows[-1].items() if v is not None})
    report = {
        "runs": rows,
        "summary": {k: _stats([r[k] for r in rows]) for k in KEYS},
        "config": {"method": cfg.finetune.method, "labels_per_class": cfg.ingest.target.split.labels_per_class},
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "seeds.json").write_text(json.dumps(report, indent=2) + "\n")
    (out_dir / "seeds.md").write_text(seeds_markdown(report))
    return report


def seeds_markdown(report: dict[str, Any]) -> str:
    def f(v: float | None, pct: bool = True) -> str:
        return "n/a" if v is None else (f"{100 * v:.1f}" if pct else f"{v:.1f}")

    lines = [
        "| seed | target accuracy % | source-only % | from scratch % | transfer gain (points) | seconds |",
        "|---|---|---|---|---|---|",
    ]
    for r in report["runs"]:
        lines.append(f"| {r['seed']} | " + " | ".join(f(r[k], k != "seconds") for k in KEYS) + " |")
    s = report["summary"]
    lines.append(
        "| **mean ± std** | "
        + " | ".join(f"{f(s[k]['mean'], k != 'seconds')} ± {f(s[k]['std'], k != 'seconds')}" for k in KEYS)
        + " |"
    )
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------- methods
DEFAULT_CURVE = (0, 1, 2, 5, 10)


def _with(cfg: Config, artifacts: str, k: int, method: str | None = None) -> Config:
    target = replace(cfg.ingest.target, split=replace(cfg.ingest.target.split, labels_per_class=k))
    out = replace(cfg, base=replace(cfg.base, artifacts_dir=artifacts), ingest=replace(cfg.ingest, target=target))
    return replace(out, finetune=replace(cfg.finetune, method=method)) if method else out


def methods(
    cfg: Config,
    n_seeds: int,
    names: list[str] | None = None,
    curve: tuple[int, ...] = DEFAULT_CURVE,
    out_dir: Path = Path("reports"),
    tracker=None,
) -> dict[str, Any]:
    """Every transfer method on the same data, backbone and budget, over ``n_seeds`` seeds.

    Supervised methods run at the default labels per class k; unsupervised domain adaptation methods at k=0
    (their primary setting) and also at the default k. Per seed, the source model is pretrained once and
    shared by every method and k. Also measures the label-efficiency curve (from scratch, finetune and the
    k=0 method that is best on the first seed, over ``curve``). Writes reports/methods.json, methods.md and
    label_efficiency.png.
    """
    import shutil

    from transferops.data.shards import load_split
    from transferops.models.inference import accuracy
    from transferops.models.io import load_model
    from transferops.paths import Paths
    from transferops.stages import finetune, ingest, pretrain
    from transferops.stages.common import start_stage
    from transferops.transfer import STRATEGIES

    names = names or sorted(STRATEGIES)
    unknown = [n for n in names if n not in STRATEGIES]
    if unknown:
        from transferops.errors import ConfigError

        raise ConfigError(f"--methods: unknown {unknown} (expected some of {', '.join(sorted(STRATEGIES))})")
    k_default = cfg.ingest.target.split.labels_per_class or 0
    unsupervised = [n for n in names if not STRATEGIES[n].uses_target_labels]
    results: dict[tuple[str, int], list[float]] = {}
    seconds: dict[tuple[str, int], list[float]] = {}

    def record(key: tuple[str, int], acc: float | None, secs: float | None = None) -> None:
        results.setdefault(key, []).append(acc)
        if secs is not None:
            seconds.setdefault(key, []).append(secs)

    with tempfile.TemporaryDirectory(prefix="transferops-methods-") as tmp:
        for i in range(n_seeds):
            seed = cfg.base.seed + i
            seed_cfg = replace(cfg, base=replace(cfg.base, seed=seed))
            ks = sorted({k_default, *curve, *([0] if unsupervised else [])})
            dirs = {k: f"{tmp}/seed{seed}/k{k}" for k in ks}
            for n, k in enumerate(ks):  # the source and the test split do not depend on k
                kcfg = _with(seed_cfg, dirs[k], k)
                ingest.run(kcfg)
                if n == 0:
                    pretrain.run(kcfg)
                    first = Paths.from_config(kcfg)
                else:
                    shutil.copytree(first.stage("pretrain"), Paths.from_config(kcfg).stage("pretrain"))
            test = load_split(first.target_data, "test")
            source_model, _ = load_model(first.source_model)
            record(("source_only", 0), accuracy(source_model, test))

            def run_method(name: str, k: int, seed_cfg=seed_cfg, dirs=dirs, test=test) -> float:
                acc, secs = _run_method(_with(seed_cfg, dirs[k], k, name), test)
                record((name, k), acc, secs)
                log.info("seed %d  %-12s k=%-2d accuracy %.4f  %.1fs", seed_cfg.base.seed, name, k, acc, secs)
                return acc

            for name in names:
                for k in [0, k_default] if name in unsupervised else [k_default]:
                    if (name, k) not in results or len(results[(name, k)]) <= i:
                        run_method(name, k)
            if i == 0:  # the curve follows one method: the best at k=0 on the first seed
                best_da = _best(results, unsupervised, 0)
            for k in curve:
                kcfg = _with(seed_cfg, dirs[k], k)
                if k > 0:
                    start_stage(kcfg)
                    model = finetune.from_scratch(kcfg)
                    record(("from_scratch", k), accuracy(model, test))
                    if "full_finetune" in names and len(results.get(("full_finetune", k), [])) <= i:
                        run_method("full_finetune", k)
                if best_da and len(results.get((best_da, k), [])) <= i:
                    run_method(best_da, k)

    report = _methods_report(cfg, results, seconds, names, unsupervised, k_default, curve, n_seeds)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "methods.json").write_text(json.dumps(report, indent=2) + "\n")
    (out_dir / "methods.md").write_text(methods_markdown(report))
    _curve_png(report["curve"], out_dir / "label_efficiency.png")
    _log_to_mlflow(cfg, report, tracker)
    return report


def _run_method(cfg: Config, test) -> tuple[float, float]:
    from transferops.models.inference import accuracy
    from transferops.models.io import load_model
    from transferops.paths import Paths
    from transferops.stages import finetune

    t0 = time.perf_counter()
    finetune.run(cfg)
    secs = time.perf_counter() - t0
    model, _ = load_model(Paths.from_config(cfg).target_model)
    return accuracy(model, test), secs


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


def _best(results, names: list[str], k: int) -> str | None:
    scored = [(statistics.fmean(results[(n, k)]), n) for n in names if results.get((n, k))]
    return max(scored)[1] if scored else None


def _methods_report(cfg, results, seconds, names, unsupervised, k_default, curve, n_seeds) -> dict[str, Any]:
    def entry(key: tuple[str, int]) -> dict[str, Any]:
        accs = [a for a in results.get(key, []) if a is not None]
        s = _stats(accs)
        out = {"accuracy_mean": s["mean"], "accuracy_std": s["std"], "labels_per_class": key[1], "runs": len(accs)}
        if key in seconds:
            out["seconds"] = statistics.fmean(seconds[key])
        return out

    best_da = _best(results, unsupervised, 0)
    curve_da = next((n for n in unsupervised if len(results.get((n, curve[-1]), [])) == n_seeds), None)

    def curve_of(name: str) -> list[float | None]:
        return [entry((name, k))["accuracy_mean"] if results.get((name, k)) else None for k in curve]

    return {
        "baselines": {
            "source_only": entry(("source_only", 0)),
            "from_scratch": entry(("from_scratch", k_default)),
        },
        "methods": {n: entry((n, 0 if n in unsupervised else k_default)) for n in names},
        "extra": [{"method": n, **entry((n, k_default))} for n in unsupervised if k_default],
        "curve": {
            "labels_per_class": list(curve),
            "from_scratch": curve_of("from_scratch"),
            **({"full_finetune": curve_of("full_finetune")} if "full_finetune" in names else {}),
            **({curve_da: curve_of(curve_da)} if curve_da else {}),
        },
        "best_unsupervised": best_da,
        "seeds": n_seeds,
        "config": {
            "model": cfg.model.name,
            "default_labels_per_class": k_default,
            "finetune_epochs": cfg.finetune.epochs,
            "steps_per_epoch": cfg.finetune.steps_per_epoch,
            "batch_size": cfg.finetune.batch_size,
            "seed0": cfg.base.seed,
        },
    }


def methods_markdown(report: dict[str, Any]) -> str:
    def pct(m: dict[str, Any]) -> str:
        if m["accuracy_mean"] is None:
            return "n/a"
        return f"{100 * m['accuracy_mean']:.1f} ± {100 * (m['accuracy_std'] or 0):.1f}"

    src = report["baselines"]["source_only"]["accuracy_mean"]
    rows = [
        f"Target test accuracy (%), mean ± std over {report['seeds']} seeds; k = labelled target images per class.",
        "",
        "| method | k | accuracy % | vs source-only (points) | seconds |",
        "|---|---|---|---|---|",
    ]
    for name, m in [
        ("source_only", report["baselines"]["source_only"]),
        ("from_scratch", report["baselines"]["from_scratch"]),
    ]:
        rows.append(f"| {name} (baseline) | {m['labels_per_class']} | {pct(m)} | | |")
    entries = [(n, m) for n, m in report["methods"].items()] + [(e["method"], e) for e in report["extra"]]
    for name, m in entries:
        delta = "n/a" if m["accuracy_mean"] is None else f"{100 * (m['accuracy_mean'] - src):+.1f}"
        rows.append(f"| {name} | {m['labels_per_class']} | {pct(m)} | {delta} | {m.get('seconds', 0):.1f} |")
    c = report["curve"]
    rows += [
        "",
        "Label efficiency (accuracy %, mean over seeds):",
        "",
        "| k | " + " | ".join(n for n in c if n != "labels_per_class") + " |",
        "|---" * len(c) + "|",
    ]
    for i, k in enumerate(c["labels_per_class"]):
        vals = ["n/a" if c[n][i] is None else f"{100 * c[n][i]:.1f}" for n in c if n != "labels_per_class"]
        rows.append(f"| {k} | " + " | ".join(vals) + " |")
    return "\n".join(rows) + "\n"


def _curve_png(curve: dict[str, list], path: Path) -> None:
    from transferops.evaluation.plots import pyplot

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    ks = curve["labels_per_class"]
    for name, vals in curve.items():
        if name == "labels_per_class":
            continue
        pts = [(k, 100 * v) for k, v in zip(ks, vals, strict=True) if v is not None]
        if pts:
            ax.plot(*zip(*pts, strict=True), marker="o", label=name)
    ax.set_xlabel("labelled target images per class")
    ax.set_ylabel("target test accuracy (%)")
    ax.set_xscale("symlog", linthresh=1)
    ax.set_xticks(ks, [str(k) for k in ks])
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title("How many labels do I need?")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
