"""``transferops benchmark seeds`` (``make bench``): the default pipeline (every stage up to evaluate, from
:mod:`transferops.stages.graph`) once per seed, each in its own artifacts directory, without MLflow; reports the
target accuracy, both baselines, the transfer gain and the wall time per seed, their mean and standard deviation, into
``reports/seeds.json`` and ``reports/seeds.md``.
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


def stats(values: list[float | None]) -> dict[str, float | None]:
    vals = [v for v in values if v is not None]
    if not vals:
        return {"mean": None, "std": None}
    return {"mean": statistics.fmean(vals), "std": statistics.stdev(vals) if len(vals) > 1 else 0.0}


def seeds(cfg: Config, n: int, out_dir: Path = Path("reports")) -> dict[str, Any]:
    """Run the pipeline for seeds ``base.seed .. base.seed + n - 1``; write and return the report."""
    from transferops.paths import Paths
    from transferops.stages import graph, run_pipeline
    from transferops.stages.common import read_json
    from transferops.tracking import NullTracker

    rows = []
    with tempfile.TemporaryDirectory(prefix="transferops-bench-") as tmp:
        for i in range(n):
            seed = cfg.base.seed + i
            run_cfg = replace(cfg, base=replace(cfg.base, seed=seed, artifacts_dir=f"{tmp}/seed{seed}"))
            t0 = time.perf_counter()
            run_pipeline(run_cfg, lambda _: NullTracker(), graph.upstream("evaluate"))
            m = read_json(Paths.from_config(run_cfg).stage("evaluate") / "metrics.json")
            rows.append({"seed": seed, **{k: m[k] for k in KEYS[:-1]}, "seconds": time.perf_counter() - t0})
            log.info("seed %d: %s", seed, {k: round(v, 4) for k, v in rows[-1].items() if v is not None})
    report = {
        "runs": rows,
        "summary": {k: stats([r[k] for r in rows]) for k in KEYS},
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
