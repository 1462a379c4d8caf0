"""Alias moves with a history, and the promotion gate.

MLflow keeps no history of alias moves, so every move made through transferops is also appended to the
registered model's tags as ``transferops.alias_event.<time_ns>`` (JSON: alias, from, to, reason, run). That
log is what ``registry history`` prints and what ``rollback`` reads.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

EVENT_PREFIX = "transferops.alias_event."


@dataclass(frozen=True)
class GateDecision:
    """Whether a candidate is promoted, and why (recorded on the version and in registration.json)."""

    promoted: bool
    reason: str
    candidate_accuracy: float
    champion_accuracy: float | None
    champion_version: str | None


def decide(
    candidate: float, champion: float | None, champion_version: str | None, min_accuracy: float, min_delta: float
) -> GateDecision:
    """Promote when ``candidate >= min_accuracy`` and ``candidate >= champion + min_delta`` (if any champion)."""
    if candidate < min_accuracy:
        reason = f"accuracy {candidate:.4f} < register.min_accuracy {min_accuracy:.4f}"
        return GateDecision(False, reason, candidate, champion, champion_version)
    if champion is None:
        return GateDecision(
            True, f"accuracy {candidate:.4f} >= floor {min_accuracy:.4f}; no champion yet", candidate, None, None
        )
    bar = champion + min_delta
    if candidate >= bar:
        reason = f"accuracy {candidate:.4f} >= champion v{champion_version} {champion:.4f} + min_delta {min_delta:+.4f}"
        return GateDecision(True, reason, candidate, champion, champion_version)
    reason = f"accuracy {candidate:.4f} < champion v{champion_version} {champion:.4f} + min_delta {min_delta:+.4f}"
    return GateDecision(False, reason, candidate, champion, champion_version)


def current_alias(client, name: str, alias: str) -> str | None:
    """The version an alias points to, or None."""
    from mlflow.exceptions import MlflowException

    try:
        return str(client.get_model_version_by_alias(name, alias).version)
    except MlflowException:
        return None


def move_alias(client, name: str, alias: str, version: str, reason: str, run_id: str | None = None) -> dict[str, Any]:
    """Point ``alias`` at ``version`` and append the move to the model's alias history."""
    previous = current_alias(client, name, alias)
    client.set_registered_model_alias(name, alias, str(version))
    event = {
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "alias": alias,
        "from_version": previous,
        "to_version": str(version),
        "reason": reason,
        "run_id": run_id,
    }
    client.set_registered_model_tag(name, f"{EVENT_PREFIX}{time.time_ns()}", json.dumps(event))
    return event


def history(client, name: str) -> list[dict[str, Any]]:
    """Every recorded alias move of a registered model, oldest first."""
    tags = client.get_registered_model(name).tags
    keys = sorted((k for k in tags if k.startswith(EVENT_PREFIX)), key=lambda k: int(k[len(EVENT_PREFIX) :]))
    return [json.loads(tags[k]) for k in keys]


def passes_floor(cfg, accuracy: float) -> bool:
    """The part of the gate that needs no registry: accuracy >= register.min_accuracy (the DAG's dsl.If)."""
    return accuracy >= cfg.register.min_accuracy
