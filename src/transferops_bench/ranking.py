"""Do the transferability scores predict fine-tuned accuracy on the embedded default? (``benchmark ranking``)

Candidates that can be built offline: the small CNN at several widths, shorter-pretrained and GroupNorm
variants, all pretrained on the source; the same CNN and two torchvision architectures with random weights
(ImageNet weights cannot be downloaded here). Each is scored on the labelled target images (one forward
pass), then fine-tuned with the default method and budget and scored on the target test split. The report
gives, per score, Kendall's tau and Spearman's rho between the score and the fine-tuned accuracy.
"""

from __future__ import annotations

import json
import logging
import shutil
import statistics
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

from transferops.config import Config

log = logging.getLogger(__name__)

CANDIDATES: dict[str, tuple[dict[str, Any], dict[str, Any] | None]] = {
    # name: (model overrides, pretrain overrides; None = random weights, no pretraining)
    "smallcnn-w32": ({"width": 32}, {}),
    "smallcnn-w16": ({"width": 16}, {}),
    "smallcnn-w8": ({"width": 8}, {}),
    "smallcnn-w32-1epoch": ({"width": 32}, {"epochs": 1}),
    "smallcnn-w32-groupnorm": ({"width": 32, "norm": "group"}, {}),
    "smallcnn-w32-random": ({"width": 32}, None),
    "resnet18-random": ({"name": "resnet18"}, None),
    "mobilenet_v3_small-random": ({"name": "mobilenet_v3_small"}, None),
}


def _candidate_source(cfg: Config, model: dict, pretrain: dict | None, root: Path, shared: Path) -> Config:
    """A config whose artifacts hold the shared ingest and this candidate's source model."""
    from transferops.data.shards import read_manifest
    from transferops.lineage import lineage
    from transferops.models import model_from_config
    from transferops.models.io import save_model
    from transferops.stages import pretrain as pretrain_stage

    c = replace(cfg, base=replace(cfg.base, artifacts_dir=str(root)), model=replace(cfg.model, **model))
    shutil.copytree(shared / "ingest", root / "ingest")
    if pretrain is not None:
        pretrain_stage.run(replace(c, pretrain=replace(c.pretrain, **pretrain)))
        return c
    manifest = read_manifest(root / "ingest" / "source")
    untrained = model_from_config(c.model, len(manifest["classes"]), manifest["image_shape"][0])
    (root / "pretrain").mkdir(parents=True)
    save_model(root / "pretrain" / "model.pt", untrained, c, manifest["classes"], manifest["image_shape"], lineage(c))
    return c


def validate(cfg: Config, seeds: int = 2, names: list[str] | None = None, out_dir: Path = Path("reports")) -> dict:
    """Score, fine-tune and correlate every candidate, for ``seeds`` seeds; write reports/ranking_validation.*"""
    from transferops.data.shards import load_split
    from transferops.evaluation.transferability import kendall_tau, spearman_rho
    from transferops.models.inference import accuracy
    from transferops.models.io import load_model
    from transferops.stages import finetune, ingest
    from transferops.stages.rank import score_candidates

    names = names or list(CANDIDATES)
    rows = []
    with tempfile.TemporaryDirectory(prefix="transferops-rankval-") as tmp:
        for i in range(seeds):
            seed_cfg = replace(cfg, base=replace(cfg.base, seed=cfg.base.seed + i, artifacts_dir=f"{tmp}/s{i}/shared"))
            ingest.run(seed_cfg)
            for name in names:
                model, pretrain = CANDIDATES[name]
                c = _candidate_source(seed_cfg, model, pretrain, Path(f"{tmp}/s{i}/{name}"), Path(f"{tmp}/s{i}/shared"))
                scores = score_candidates(c, [f"{c.model.name}@{c.base.artifacts_dir}/pretrain/model.pt"])
                finetune.run(c)
                tuned, _ = load_model(Path(c.base.artifacts_dir) / "finetune" / "model.pt")
                acc = accuracy(tuned, load_split(Path(c.base.artifacts_dir) / "ingest" / "target", "test"))
                rows.append({"seed": c.base.seed, "candidate": name, "accuracy": acc, **next(iter(scores.values()))})
                log.info("ranking validation seed %d %s: accuracy %.4f %s", c.base.seed, name, acc, rows[-1])
    score_names = [k for k in rows[0] if k not in ("seed", "candidate", "accuracy")]
    correlations = {}
    for s in score_names:
        per_seed = []
        for seed in sorted({r["seed"] for r in rows}):
            pairs = [(r[s], r["accuracy"]) for r in rows if r["seed"] == seed and r.get(s) is not None]
            if len(pairs) >= 3:
                a, b = zip(*pairs, strict=True)
                per_seed.append((kendall_tau(a, b), spearman_rho(a, b), len(pairs)))
        if per_seed:
            correlations[s] = {
                "kendall_tau": statistics.fmean(t for t, _, _ in per_seed),
                "spearman_rho": statistics.fmean(r for _, r, _ in per_seed),
                "candidates": per_seed[0][2],
            }
    report = {"seeds": seeds, "rows": rows, "correlations": correlations, "method": cfg.finetune.method}
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "ranking_validation.json").write_text(json.dumps(report, indent=2) + "\n")
    (out_dir / "ranking_validation.md").write_text(markdown(report))
    return report


def markdown(report: dict) -> str:
    lines = [
        f"Transferability scores against fine-tuned target accuracy ({report['method']}, mean over "
        f"{report['seeds']} seeds; a score with a trained head only for LEEP/NCE):",
        "",
        "| score | Kendall tau | Spearman rho | candidates |",
        "|---|---|---|---|",
    ]
    for s, c in report["correlations"].items():
        lines.append(f"| {s} | {c['kendall_tau']:+.2f} | {c['spearman_rho']:+.2f} | {c['candidates']} |")
    lines += ["", "| seed | candidate | fine-tuned accuracy % | logme | hscore |", "|---|---|---|---|---|"]
    for r in report["rows"]:
        lines.append(
            f"| {r['seed']} | {r['candidate']} | {100 * r['accuracy']:.1f} | {r['logme']:.4f} | {r['hscore']:.3f} |"
        )
    return "\n".join(lines) + "\n"
