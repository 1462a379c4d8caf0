"""Choose the backbone before fine-tuning: rank candidates by transferability scores from one forward pass.

Fine-tuning every candidate costs GPU-days; LogME, H-score (on the candidate's features) and LEEP, NCE (on its
predictions over its own source classes, when it has a trained head) rank candidates from one pass over the
labelled target images (``labeled`` and ``val`` splits). See :mod:`transferops.evaluation.transferability`.

Outputs (``artifacts/rank``): ``ranking.json`` (scores and ranks per candidate) and ``choice.json`` (the winner
under ``rank.score``, and whether pretrain uses it: ``rank.apply``). With no candidates the stage is a no-op
and ``choice.json`` says so: pretrain then builds ``model:`` as configured.
"""

from __future__ import annotations

import logging
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from transferops.config import Config, ModelConfig
from transferops.data.shards import Split, load_split, read_manifest
from transferops.errors import ConfigError
from transferops.evaluation.transferability import rank_table, score_all
from transferops.paths import Paths
from transferops.stages.common import StageResult, read_json, staged_output, start_stage, write_json
from transferops.tracking import NullTracker

log = logging.getLogger(__name__)


def parse_candidate(text: str, default: ModelConfig) -> ModelConfig:
    """``name`` or ``name@weights`` as the model config it stands for (other settings from ``model:``)."""
    name, _, weights = text.strip().partition("@")
    return replace(default, name=name, weights=weights or "none")


def load_candidate(m: ModelConfig, num_classes: int, in_channels: int):
    """The candidate network, and whether its head predicts classes of its own (a trained source head)."""
    from transferops.models import model_from_config
    from transferops.models.factory import is_weights_path

    if is_weights_path(m.weights):
        from transferops.models.io import load_model

        model, _ = load_model(Path(m.weights))
        return model, True
    return model_from_config(m, num_classes, in_channels), False


def labelled(data_dir: Path) -> Split:
    """The labelled target images: the ``labeled`` and ``val`` splits."""
    parts = [load_split(data_dir, s) for s in ("labeled", "val")]
    parts = [p for p in parts if len(p)]
    return Split(np.concatenate([np.asarray(p.images) for p in parts]), np.concatenate([p.labels for p in parts]))


def score_candidates(cfg: Config, candidates: list[str]) -> dict[str, dict[str, float]]:
    """Every score each candidate has on the labelled target images."""
    from transferops.models.inference import predict_features, predict_proba

    target = Paths.from_config(cfg).target_data
    manifest = read_manifest(target)
    data = labelled(target)
    scores: dict[str, dict[str, float]] = {}
    for text in candidates:
        t0 = time.perf_counter()
        m = parse_candidate(text, cfg.model)
        model, has_head = load_candidate(m, len(manifest["classes"]), manifest["image_shape"][0])
        feats = predict_features(model, data)
        probs = predict_proba(model, data) if has_head else None
        scores[text] = score_all(feats, probs, data.labels)
        log.info(
            "rank %s: %s (%.1fs)", text, {k: round(v, 4) for k, v in scores[text].items()}, time.perf_counter() - t0
        )
    return scores


def choose(table: list[dict[str, Any]], score: str) -> str | None:
    """The candidate ranked first under ``score`` (``mean_rank``: the consensus)."""
    if score == "mean_rank":
        return table[0]["candidate"] if table else None
    ranked = [r for r in table if r.get(f"{score}_rank") is not None]
    return min(ranked, key=lambda r: (r[f"{score}_rank"], r["candidate"]))["candidate"] if ranked else None


def run(cfg: Config, tracker: NullTracker | None = None) -> StageResult:
    """Rank ``rank.candidates`` and write ``artifacts/rank`` (a no-op choice when there are none)."""
    tracker = tracker or NullTracker()
    start_stage(cfg)
    paths = Paths.from_config(cfg)
    candidates = list(cfg.rank.candidates)
    with tracker.stage_run("rank", cfg) if candidates else _nothing(), staged_output(paths.stage("rank")) as out:
        table = rank_table(score_candidates(cfg, candidates)) if candidates else []
        winner = choose(table, cfg.rank.score)
        choice = {"candidates": candidates, "score": cfg.rank.score, "winner": winner, "apply": cfg.rank.apply}
        write_json(out / "ranking.json", {"score": cfg.rank.score, "table": table})
        write_json(out / "choice.json", choice)
        if candidates:
            tracker.log_artifact(out / "ranking.json", "rank")
            tracker.set_tags({"transferops.rank_winner": str(winner), "transferops.rank_score": cfg.rank.score})
    if winner:
        log.info(
            "rank: %s ranks first under %s%s", winner, cfg.rank.score, " (pretrain uses it)" if cfg.rank.apply else ""
        )
    return StageResult("rank", {"ranking": str(paths.stage("rank") / "ranking.json")}, choice)


class _nothing:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


def applied_model(cfg: Config) -> ModelConfig:
    """``model:``, or the ranking's winner when ``rank.apply`` is on (what pretrain builds)."""
    if not cfg.rank.apply:
        return cfg.model
    path = Paths.from_config(cfg).stage("rank") / "choice.json"
    if not path.is_file():
        raise ConfigError(f"rank.apply: {path} not found (run `transferops rank` first: it writes the choice)")
    choice = read_json(path)
    if not choice.get("winner"):
        return cfg.model
    return parse_candidate(choice["winner"], cfg.model)


def markdown(table: list[dict[str, Any]]) -> str:
    if not table:
        return "no candidates\n"
    scores = [k for k in table[0] if k not in ("candidate", "mean_rank") and not k.endswith("_rank")]
    head = "| candidate | " + " | ".join(scores) + " | mean rank |"
    lines = [head, "|---" * (len(scores) + 2) + "|"]
    for r in table:
        cells = ["n/a" if r.get(s) is None else f"{r[s]:.4f} ({r[f'{s}_rank']})" for s in scores]
        lines.append(f"| {r['candidate']} | " + " | ".join(cells) + f" | {r['mean_rank']:.1f} |")
    return "\n".join(lines) + "\n"
