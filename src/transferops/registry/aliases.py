"""Alias moves with a history, and the registered model's event log.

MLflow keeps no history of alias moves or gate decisions, so transferops appends each one to the registered
model's tags as ``transferops.event.<time_ns>.<pid>``, one readable line per event:

    champion: v1 -> v2 (promote) | accuracy 0.8431 >= champion v1 0.8012 ... | run 3f2a... | 2026-11-23T19:04:11Z
    gate: v1 -> v3 (challenger) | accuracy 0.7900 < champion v1 ... | run 9c1d... | 2026-11-23T19:09:40Z

``registry history`` prints this log and ``rollback`` replays the alias moves in it.
"""

from __future__ import annotations

import re
import time
import uuid
from typing import Any

EVENT_PREFIX = "transferops.event."
CHAMPION_SEEN_TAG = "transferops.champion_seen"
"""The champion version a candidate's gate was decided against ("none" when there was none)."""

_EVENT = re.compile(
    r"^(?P<alias>[^:]+): (?P<from>\S+) -> (?P<to>\S+) \((?P<kind>[\w-]+)\) \| (?P<reason>.*) "
    r"\| run (?P<run>\S+) \| (?P<time>\S+)$"
)


def _v(version: str | None) -> str:
    return f"v{version}" if version else "-"


def _unv(text: str) -> str | None:
    return None if text == "-" else text.removeprefix("v")


def record_event(
    client, name: str, alias: str, from_: str, to: str, kind: str, reason: str, run_id: str | None = None
) -> dict[str, Any]:
    """Append one event to the model's log; returns it as a dict (``alias`` is ``gate`` for decisions)."""
    now = time.time_ns()
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now / 1e9))
    reason = " ".join(reason.split()).replace(" | ", " / ")
    text = f"{alias}: {from_} -> {to} ({kind}) | {reason} | run {run_id or '-'} | {stamp}"
    # time first (the history's order), then a random part: two writers in the same nanosecond, on two hosts
    # with coarse clocks, must not overwrite each other's event
    client.set_registered_model_tag(name, f"{EVENT_PREFIX}{now:020d}.{uuid.uuid4().hex[:8]}", text)
    return _parse(text)


def _parse(text: str) -> dict[str, Any]:
    m = _EVENT.match(text)
    if m is None:
        return {"alias": "?", "kind": "?", "from_version": None, "to_version": None, "reason": text, "run_id": None}
    return {
        "time": m["time"],
        "alias": m["alias"],
        "kind": m["kind"],
        "from_version": _unv(m["from"]),
        "to_version": _unv(m["to"]),
        "reason": m["reason"],
        "run_id": None if m["run"] == "-" else m["run"],
    }


def history(client, name: str) -> list[dict[str, Any]]:
    """Every recorded event of a registered model (alias moves and gate decisions), oldest first."""
    return _events(client.get_registered_model(name).tags)


def _events(tags: dict[str, str]) -> list[dict[str, Any]]:
    events = [(key[len(EVENT_PREFIX) :], _parse(value)) for key, value in tags.items() if key.startswith(EVENT_PREFIX)]
    return [e for _, e in sorted(events, key=lambda item: item[0])]


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
    """Point ``alias`` at ``version`` and append the move to the model's log.

    ``kind`` is ``promote`` for a move forward, ``rollback`` for a move back (what :func:`rollback` replays)
    and ``settle`` when concurrent registrations are settled.
    """
    previous = current_alias(client, name, alias)
    _set_alias(client, name, alias, str(version))
    event = record_event(client, name, alias, _v(previous), _v(str(version)), kind, reason, run_id)
    _agree_with_history(client, name, alias)
    return event


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
    """Leave ``alias`` on the version of the history's last move of it.

    A move is two writes (the alias, then its event). When two processes move one alias at once, their writes
    interleave: the alias can end on the move whose event sorts first, and ``rollback`` and ``registry
    history`` would then disagree with the registry. So each mover re-reads after writing its event and, while
    the alias and the last event disagree, sets the alias to that event's version. Every writer checks after
    its last write, so the last check sees every event and the final alias.
    """
    for _ in range(attempts):
        model = client.get_registered_model(name)
        moves = [e for e in _events(model.tags) if e["alias"] == alias]
        target = moves[-1]["to_version"] if moves else None
        actual = (getattr(model, "aliases", None) or {}).get(alias)
        if target is None or (actual is not None and str(actual) == target):
            return
        _set_alias(client, name, alias, target)


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
        seen = _v(None if champion_seen == "none" else champion_seen)
        reason = f"v{best} beat concurrent candidates gated against champion {seen}"
        move_alias(client, name, alias, best, reason, run_id, kind="settle")
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

    The history is replayed as a stack (a move forward pushes, a rollback pops, a settle replaces the transient
    concurrent peer on top), so repeated rollbacks walk further back instead of toggling between two versions.
    """
    from transferops.errors import TrackingError

    stack: list[str] = []
    for event in history(client, name):
        if event["alias"] != alias:
            continue
        if event.get("kind") == "rollback":
            stack.pop()
        elif event.get("kind") == "settle" and stack:  # the transient peer on top gives way to the winner
            stack.pop()
            if not stack or stack[-1] != event["to_version"]:
                stack.append(event["to_version"])
        elif event.get("to_version"):
            stack.append(event["to_version"])
    if len(stack) < 2:
        raise TrackingError(f"registered model {name!r}: no previous {alias} to roll back to")
    current, previous = stack[-1], stack[-2]
    return move_alias(client, name, alias, previous, f"rollback from version {current}", kind="rollback")
