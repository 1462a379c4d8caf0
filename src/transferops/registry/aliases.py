"""Alias moves with a history, and the promotion gate.

MLflow keeps no history of alias moves, so every move made through transferops is also appended to the
registered model's tags as ``transferops.alias_event.<time_ns>.<random>`` (JSON: alias, from, to, reason, run).
That log is what ``registry history`` prints and what ``rollback`` reads; events written before the random
part was added (``<time_ns>`` alone) still sort in.
"""

from __future__ import annotations

import json
import time
import uuid
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
    if not clears_floor(candidate, min_accuracy):
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


def move_alias(
    client, name: str, alias: str, version: str, reason: str, run_id: str | None = None, kind: str = "promote"
) -> dict[str, Any]:
    """Point ``alias`` at ``version`` and append the move to the model's alias history.

    ``kind`` is ``promote`` for a move forward and ``rollback`` for a move back (what :func:`rollback` replays).
    Safe against another process moving the same alias at the same time: both moves are recorded, and the
    alias ends where the history's last event says (see :func:`_agree_with_history`).
    """
    previous = current_alias(client, name, alias)
    _set_alias(client, name, alias, str(version))
    event = {
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "alias": alias,
        "kind": kind,
        "from_version": previous,
        "to_version": str(version),
        "reason": reason,
        "run_id": run_id,
    }
    # time first (the history's order), then a random part: two writers in the same nanosecond (or on hosts
    # with a coarse clock) must not overwrite each other's event
    client.set_registered_model_tag(name, f"{EVENT_PREFIX}{time.time_ns()}.{uuid.uuid4().hex[:8]}", json.dumps(event))
    _agree_with_history(client, name, alias)
    return event


def _event_order(key: str) -> tuple[int, str]:
    stamp, _, tiebreak = key[len(EVENT_PREFIX) :].partition(".")
    return int(stamp), tiebreak


def _events(tags: dict[str, str]) -> list[dict[str, Any]]:
    keys = sorted((k for k in tags if k.startswith(EVENT_PREFIX)), key=_event_order)
    return [json.loads(tags[k]) for k in keys]


def history(client, name: str) -> list[dict[str, Any]]:
    """Every recorded alias move of a registered model, oldest first."""
    return _events(client.get_registered_model(name).tags)


_DUPLICATE_KEY = ("duplicate key", "unique constraint", "duplicate entry", "violation of primary key")


def _set_alias(client, name: str, alias: str, version: str, attempts: int = 3) -> None:
    """``set_registered_model_alias``, retried when a concurrent first creation of the alias won the insert.

    MLflow's SQL store sets an alias by select-then-insert; two writers creating the same alias at once both
    insert, and the database (PostgreSQL, MySQL, sqlite alike) rejects the second with a unique-key error. The
    alias exists by then, so the retry updates it.
    """
    from mlflow.exceptions import MlflowException

    for attempt in range(attempts):
        try:
            client.set_registered_model_alias(name, alias, version)
            return
        except MlflowException as exc:
            if attempt == attempts - 1 or not any(s in str(exc).lower() for s in _DUPLICATE_KEY):
                raise
            time.sleep(0.05 * (attempt + 1))


def _agree_with_history(client, name: str, alias: str, attempts: int = 5) -> None:
    """Leave ``alias`` on the version of the history's last event for it.

    A move is two writes (the alias, then its event). When two processes move one alias at once, their
    writes interleave: the alias can end on the move whose event sorts first, and ``rollback`` and
    ``registry history`` would then disagree with the registry. So each mover re-reads after writing its
    event and, while the alias and the last event disagree, sets the alias to that event's version. Every
    writer checks after its last write, so the last check sees every event and the final alias.
    """
    for _ in range(attempts):
        model = client.get_registered_model(name)
        moves = [e for e in _events(model.tags) if e["alias"] == alias]
        target = moves[-1]["to_version"] if moves else None
        actual = (model.aliases or {}).get(alias)
        if target is None or (actual is not None and str(actual) == target):
            return
        _set_alias(client, name, alias, target)


CHAMPION_SEEN_TAG = "transferops.champion_seen"
"""The champion version a candidate's gate was decided against ("none" when there was none)."""


def settle_champion(client, name: str, alias: str, champion_seen: str, run_id: str | None = None) -> str | None:
    """Resolve a race between registrations that were gated against the same champion; returns the winner.

    Two pipelines registering at once both decide against the champion they saw, so the one that moves the
    alias last would win whatever its accuracy. Each version records the champion it saw before it moves any
    alias; this step looks at the promoted versions that saw the same champion (the concurrent peers) and
    leaves the alias on the most accurate of them. Sequential registrations have no peers, so a promotion
    made under a negative ``min_delta`` is never undone here.
    """
    versions = client.search_model_versions(f"name = '{name}'")
    peers = [
        (float(v.tags["transferops.accuracy"]), int(v.version))
        for v in versions
        if v.tags.get("transferops.promoted") == "true" and v.tags.get(CHAMPION_SEEN_TAG) == champion_seen
    ]
    if not peers:
        return None
    best = str(max(peers)[1])
    current = current_alias(client, name, alias)
    if current != best and (current in {str(v) for _, v in peers} or current == champion_seen):
        move_alias(
            client,
            name,
            alias,
            best,
            f"settled: v{best} beat concurrent candidates gated against champion {champion_seen}",
            run_id,
        )
        return best
    return current


def promote(client, name: str, version: str, alias: str = "champion", reason: str = "manual promotion") -> dict:
    """Move ``alias`` to ``version`` by hand (recorded in the history)."""
    from mlflow.exceptions import MlflowException

    from transferops.errors import TrackingError

    try:
        client.get_model_version(name, str(version))
    except MlflowException:
        raise TrackingError(f"registered model {name!r} has no version {version}") from None
    return move_alias(client, name, alias, str(version), reason)


def rollback(client, name: str, alias: str = "champion") -> dict:
    """Move ``alias`` back to the version it pointed to before its current one.

    The history is replayed as a stack (a promotion pushes, a rollback pops), so repeated rollbacks walk
    further back instead of toggling between two versions.
    """
    from transferops.errors import TrackingError

    stack: list[str] = []
    for event in history(client, name):
        if event["alias"] != alias:
            continue
        if event.get("kind") == "rollback":
            stack.pop()
        else:
            stack.append(event["to_version"])
    if len(stack) < 2:
        raise TrackingError(f"registered model {name!r}: no previous {alias} to roll back to")
    current, previous = stack[-1], stack[-2]
    return move_alias(client, name, alias, previous, f"rollback from version {current}", kind="rollback")


def clears_floor(accuracy: float, min_accuracy: float) -> bool:
    """The part of the gate that needs no registry (the Kubeflow DAG's ``dsl.If`` uses it too)."""
    return accuracy >= min_accuracy
