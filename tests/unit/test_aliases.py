"""Alias moves under concurrency, on an in-memory registry that interleaves writes as a real server can.

The same races run for real against PostgreSQL in tests/services/test_mlflow_server.py; these pin down each
case deterministically.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from mlflow.exceptions import MlflowException

from transferops.registry import aliases
from transferops.registry.aliases import history, move_alias


class Registry:
    """The MlflowClient calls aliases.py makes, for one registered model, in memory.

    ``during_alias_write`` runs once, right after the next alias write: another process's whole move landing
    between this one's two writes. ``duplicate_inserts`` fails that many alias writes the way MLflow's SQL
    store does when a concurrent writer created the same alias first.
    """

    def __init__(self):
        self.aliases: dict[str, str] = {}
        self.tags: dict[str, str] = {}
        self.during_alias_write = None
        self.duplicate_inserts = 0

    def get_model_version_by_alias(self, name, alias):
        if alias not in self.aliases:
            raise MlflowException(f"alias {alias} not found")
        return SimpleNamespace(version=self.aliases[alias])

    def set_registered_model_alias(self, name, alias, version):
        if self.duplicate_inserts:
            self.duplicate_inserts -= 1
            self.aliases.setdefault(alias, "0")  # the other writer's insert
            raise MlflowException('duplicate key value violates unique constraint "registered_model_alias_pk"')
        self.aliases[alias] = version
        hook, self.during_alias_write = self.during_alias_write, None
        if hook:
            hook()

    def set_registered_model_tag(self, name, key, value):
        self.tags[key] = value

    def get_registered_model(self, name):
        return SimpleNamespace(tags=dict(self.tags), aliases=dict(self.aliases))


def test_moves_in_the_same_nanosecond_both_reach_the_history(monkeypatch):
    reg = Registry()
    monkeypatch.setattr(aliases.time, "time_ns", lambda: 1_700_000_000_000_000_000)
    move_alias(reg, "m", "champion", "1", "first")
    move_alias(reg, "m", "champion", "2", "second")
    events = history(reg, "m")
    assert sorted(e["to_version"] for e in events) == ["1", "2"]  # same time: the random part orders them
    assert reg.aliases["champion"] == events[-1]["to_version"]


def test_interleaved_moves_leave_the_alias_where_the_last_event_says():
    reg = Registry()
    # process A sets the alias to 1; before A writes its event, process B moves it to 2 (alias + event)
    reg.during_alias_write = lambda: move_alias(reg, "m", "champion", "2", "B")
    move_alias(reg, "m", "champion", "1", "A")
    events = history(reg, "m")
    assert [e["reason"] for e in events] == ["B", "A"]  # both recorded, in the order they were written
    assert reg.aliases["champion"] == events[-1]["to_version"] == "1"


def test_concurrent_first_creation_of_an_alias_is_retried():
    reg = Registry()
    reg.duplicate_inserts = 1
    move_alias(reg, "m", "champion", "3", "new")
    assert reg.aliases["champion"] == "3"
    assert [e["to_version"] for e in history(reg, "m")] == ["3"]


def test_other_alias_errors_are_not_retried():
    class Missing(Registry):
        def set_registered_model_alias(self, name, alias, version):
            raise MlflowException("RESOURCE_DOES_NOT_EXIST: model version 9 not found")

    with pytest.raises(MlflowException, match="not found"):
        move_alias(Missing(), "m", "champion", "9", "x")
