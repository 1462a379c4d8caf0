"""The gate and the registry workflow on an in-memory registry: decisions, tasks, retries, races, history.

The property test at the end drives thousands of generated sequences (accuracies, class sets, ties, retries,
concurrent registrations) through :func:`register_candidate` and checks the invariants a production registry
needs: the champion never moves to a worse model or to another task, every decision is logged with its
reason, and a retry never creates a second version.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.unit.fake_registry import FakeRegistryClient
from transferops.config import config_from_dict
from transferops.errors import GateError
from transferops.registry.aliases import history, rollback
from transferops.registry.gate import (
    ACCURACY_TAG,
    TASK_TAG,
    Candidate,
    GatePolicy,
    LoggedModel,
    Task,
    decide,
    model_name,
    register_candidate,
)

DIGITS = Task(tuple("0123456789"), (1, 28, 28))
LETTERS = Task(("a", "b", "c"), (1, 28, 28))
DIGITS_RGB = Task(tuple("0123456789"), (3, 28, 28))
POLICY = GatePolicy(min_accuracy=0.5, min_delta=0.0)


class World:
    """A registry plus the true accuracy of every model on the shared test split (what a re-score returns)."""

    def __init__(self) -> None:
        self.client = FakeRegistryClient()
        self.truth: dict[str, float] = {}
        self.rescored: list[str] = []
        self.vetoes: dict[str, str] = {}

    def score(self, uri: str) -> float:
        name, version = uri.removeprefix("models:/").rsplit("/", 1)
        fingerprint = self.client.get_model_version(name, version).source.removeprefix("fake://")
        self.rescored.append(uri)
        return self.truth[fingerprint]

    def register(self, task: Task, acc: float, fp: str, policy: GatePolicy = POLICY, name="m", during_score=None):
        """Register a candidate; ``during_score`` runs while the champion is being re-scored (a concurrent peer)."""
        self.truth[fp] = acc

        def score(uri: str) -> float:
            if during_score is not None:
                during_score()
            return self.score(uri)

        return register_candidate(
            self.client,
            name,
            Candidate(task, acc, fp, {"transferops.method": "finetune"}),
            policy,
            score_champion=score,
            log_model=lambda: LoggedModel(f"fake://{fp}", veto=self.vetoes.get(fp)),
            describe=lambda d: f"card: {d.reason}",
            model_description="a test model",
            run_id="run" + fp,
        )

    def champion(self, name="m") -> str | None:
        try:
            return str(self.client.get_model_version_by_alias(name, "champion").version)
        except Exception:
            return None


# ---------------------------------------------------------------------------------------------- decisions
@pytest.mark.parametrize(
    ("candidate", "champion", "version", "delta", "register", "promote", "needle"),
    [
        (0.40, None, None, 0.0, False, False, "< register.min_accuracy 0.5000: not registered"),
        (float("nan"), None, None, 0.0, False, False, "not registered"),
        (0.60, None, None, 0.0, True, True, "no champion yet"),
        (0.80, 0.80, "3", 0.0, True, True, ">= champion v3 0.8000"),  # a tie promotes the newer model
        (0.79, 0.80, "3", 0.0, True, False, "< champion v3 0.8000"),
        (0.79, 0.80, "3", -0.02, True, True, "min_delta -0.0200"),
        (0.81, 0.80, "3", 0.05, True, False, "min_delta +0.0500"),
        (0.99, None, "3", 0.0, True, False, "could not be re-scored"),  # fail closed
    ],
)
def test_decide(candidate, champion, version, delta, register, promote, needle):
    d = decide(candidate, champion, version, GatePolicy(0.5, delta))
    assert (d.register, d.promote) == (register, promote)
    assert needle in d.reason


def test_model_name_is_derived_from_the_target_dataset():
    def cfg(**target):
        return config_from_dict({"ingest": {"target": target}})

    assert model_name(cfg(kind="sklearn_digits")) == "transferops-digits"
    assert model_name(cfg(kind="image_folder", path="/data/Hand Letters.tar.gz")) == "transferops-hand-letters"
    assert model_name(cfg(kind="image_folder", path="s3://bucket/sets/letters/")) == "transferops-letters"
    assert model_name(cfg(kind="torchvision", name="SVHN", path="/d")) == "transferops-svhn"
    explicit = config_from_dict(
        {"register": {"model_name": "prod-ocr"}, "ingest": {"target": {"kind": "image_folder", "path": "/x"}}}
    )
    assert model_name(explicit) == "prod-ocr"


# ---------------------------------------------------------------------------------------------- tasks
def test_a_champion_of_another_task_is_never_rescored_or_replaced():
    w = World()
    assert w.register(DIGITS, 0.837, "digits").decision.promote
    with pytest.raises(GateError) as e:
        w.register(LETTERS, 0.333, "letters", GatePolicy(0.0, 0.0))
    msg = str(e.value)
    assert "\n" not in msg
    assert "classes [0, 1, 2, 3, 4, 5, 6, 7, 8, 9] on 1x28x28 images" in msg  # the registered task
    assert "classes [a, b, c] on 1x28x28 images" in msg  # the candidate's
    assert w.rescored == []  # the digits champion was never scored on letters
    assert w.champion() == "1" and len(w.client.versions["m"]) == 1
    # the same classes on other input geometry are another task too; another name is fine
    with pytest.raises(GateError, match="3x28x28"):
        w.register(DIGITS_RGB, 0.9, "rgb")
    assert w.register(LETTERS, 0.9, "letters", name="letters-model").version == "1"


def test_a_legacy_model_without_task_tag_is_checked_from_its_versions(monkeypatch):
    import transferops.registry.gate as gate

    w = World()
    w.client.create_registered_model("m")
    w.client.create_model_version(
        "m", "fake://old", tags={"transferops.classes": "0,1,2,3,4,5,6,7,8,9", ACCURACY_TAG: "0.7"}
    )
    w.truth["old"] = 0.7
    w.client.set_registered_model_alias("m", "champion", "1")
    monkeypatch.setattr(gate, "_signature_shape", lambda uri: (1, 28, 28))
    with pytest.raises(GateError, match="classes \\[a, b, c\\]"):
        w.register(LETTERS, 0.9, "letters")
    out = w.register(DIGITS, 0.8, "new")
    assert out.decision.promote and out.decision.champion_accuracy == 0.7
    assert Task.from_json(w.client.get_registered_model("m").tags[TASK_TAG]) == DIGITS  # migrated


# ---------------------------------------------------------------------------------------------- workflow
def test_below_floor_registers_nothing_but_logs_the_decision():
    w = World()
    out = w.register(DIGITS, 0.3, "weak")
    assert out.version is None and not out.decision.register
    assert w.client.versions["m"] == []
    (event,) = history(w.client, "m")
    assert event["alias"] == "gate" and event["kind"] == "rejected" and "min_accuracy" in event["reason"]


def test_retry_returns_the_same_version_and_decision():
    w = World()
    first = w.register(DIGITS, 0.8, "a")
    again = w.register(DIGITS, 0.8, "a")
    assert again.retried and again.version == first.version == "1"
    assert again.decision.promote and again.decision.reason == first.decision.reason
    assert len(w.client.versions["m"]) == 1


def test_champion_that_cannot_be_rescored_is_kept():
    w = World()
    w.register(DIGITS, 0.8, "a")
    del w.truth["a"]  # its artifact is gone: scoring raises
    out = w.register(DIGITS, 0.99, "b")
    assert out.version == "2" and not out.decision.promote and w.champion() == "1"
    assert "could not be re-scored" in out.decision.reason


def test_history_is_readable_and_rollback_walks_back():
    w = World()
    for acc, fp in ((0.6, "a"), (0.7, "b"), (0.8, "c")):
        w.register(DIGITS, acc, fp)
    tags = w.client.get_registered_model("m").tags
    lines = [v for k, v in sorted(tags.items()) if k.startswith("transferops.event.")]
    assert lines[0].startswith(
        "gate: - -> v1 (promoted) | accuracy 0.6000 >= floor 0.5000; no champion yet | run runa |"
    )
    assert any(
        line.startswith("champion: v2 -> v3 (promote) | accuracy 0.8000 >= champion v2 0.7000") for line in lines
    )
    assert "{" not in "".join(lines)  # no raw JSON in the UI
    rollback(w.client, "m")
    assert w.champion() == "2"
    rollback(w.client, "m")
    assert w.champion() == "1"
    champion_moves = [e for e in history(w.client, "m") if e["alias"] == "champion"]
    assert [e["kind"] for e in champion_moves] == ["promote", "promote", "promote", "rollback", "rollback"]


def test_concurrent_promotions_gated_against_the_same_champion_settle_on_the_best():
    from transferops.registry.aliases import CHAMPION_SEEN_TAG, move_alias, settle_champion

    w = World()
    w.register(DIGITS, 0.7, "base")
    # two registrations both passed the gate against v1 and both moved champion before either saw the other
    for fp, acc in (("best", 0.9), ("worse", 0.75)):
        w.truth[fp] = acc
        v = w.client.create_model_version("m", f"fake://{fp}", tags={CHAMPION_SEEN_TAG: "1"})
        w.client.set_model_version_tag("m", v.version, "transferops.promoted", "true")
        w.client.set_model_version_tag("m", v.version, "transferops.accuracy", repr(acc))
        move_alias(w.client, "m", "champion", str(v.version), "passed")
    assert w.champion() == "3"  # the worse one moved last
    assert settle_champion(w.client, "m", "champion", "1") == "2"
    assert w.champion() == "2" and history(w.client, "m")[-1]["kind"] == "settle"


# ---------------------------------------------------------------------------------------------- property
TASKS = [DIGITS, LETTERS, DIGITS_RGB]
candidates = st.tuples(
    st.sampled_from([0, 0, 0, 1, 2]),  # mostly the registered task, sometimes another
    st.sampled_from([0.2, 0.45, 0.5, 0.6, 0.6, 0.7, 0.8, 0.8, 0.95]),  # ties on purpose
    st.integers(0, 12),  # fingerprint: repeats are retries of the same model
)
operations = st.lists(
    st.tuples(candidates, st.lists(candidates, max_size=2)),  # a registration, and peers racing inside it
    min_size=1,
    max_size=12,
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=operations, delta=st.sampled_from([0.0, 0.0, 0.02, 0.1]), floor=st.sampled_from([0.0, 0.5]))
def test_gate_invariants_hold_for_any_sequence(ops, delta, floor):
    w = World()
    policy = GatePolicy(floor, delta)
    accuracy_of: dict[str, float] = {}  # a fingerprint is one model: the same accuracy whenever it comes back
    task_of: dict[str, Task] = {}
    decisions = 0
    refused = 0
    versions_by_fp: dict[str, str] = {}

    def attempt(cand, peers=()) -> None:
        nonlocal decisions, refused
        t, acc, n = cand
        fp = f"fp{n}"
        task = task_of.setdefault(fp, TASKS[t])
        acc = accuracy_of.setdefault(fp, acc)
        before = w.champion()
        before_acc = w.truth[w.client.get_model_version("m", before).source[7:]] if before else None
        try:
            out = w.register(task, acc, fp, policy, during_score=lambda: [attempt(p) for p in peers])
        except GateError as exc:
            refused += 1
            registered = Task.from_json(w.client.get_registered_model("m").tags[TASK_TAG])
            assert task != registered and registered.describe() in str(exc)
            return
        if out.retried:
            assert out.version == versions_by_fp.get(fp)
            return
        decisions += 1
        if out.version:
            assert fp not in versions_by_fp  # a model is registered at most once
            versions_by_fp[fp] = out.version
        after = w.champion()
        if after is not None and before_acc is not None and after != before:
            # never to a worse model than the champion it replaced (re-scored on the same split)
            assert w.truth[w.client.get_model_version("m", after).source[7:]] >= before_acc + delta - 1e-12
        if not peers and not out.decision.promote:
            assert after == before  # nothing else ran: a candidate that was not promoted moved nothing

    for cand, peers in ops:
        attempt(cand, peers)

    if "m" not in w.client.models:
        return
    registered = Task.from_json(w.client.get_registered_model("m").tags[TASK_TAG])
    for v in w.client.versions["m"]:
        assert Task.from_json(v.tags[TASK_TAG]) == registered  # one name, one task
        assert v.tags["transferops.gate_reason"]
    champion = w.champion()
    if champion is not None:
        assert w.truth[w.client.get_model_version("m", champion).source[7:]] >= floor
    gate_events = [e for e in history(w.client, "m") if e["alias"] == "gate"]
    assert all(e["reason"] for e in gate_events)
    # every decision is logged: one event per rejection, at least one per version (a re-gate adds one)
    rejected = [e for e in gate_events if e["to_version"] is None]
    assert len(rejected) + len({e["to_version"] for e in gate_events if e["to_version"]}) == decisions
    assert len({v.source for v in w.client.versions["m"]}) == len(w.client.versions["m"])  # no duplicate


def test_a_champion_moved_while_a_candidate_was_scoring_is_scored_again_before_anything_moves():
    w = World()
    w.register(DIGITS, 0.6, "v1")
    # B was gated against v1 (0.6) and passes; while it scored, A (0.9) registered and took champion
    out = w.register(DIGITS, 0.7, "b", during_score=lambda: w.register(DIGITS, 0.9, "a"))
    assert not out.decision.promote and "champion v2 0.9000" in out.decision.reason
    assert w.champion() == "2"  # A stays: B never moved champion over a better model it had not been compared to
    b = w.client.get_model_version("m", out.version)
    assert b.tags["transferops.promoted"] == "false" and b.tags["transferops.champion_seen"] == "2"
    assert [e["kind"] for e in history(w.client, "m") if e["alias"] == "gate"][-2:] == ["promoted", "challenger"]


def test_a_retry_completes_a_registration_that_died_before_its_champion_move(monkeypatch):
    import transferops.registry.gate as gate

    w = World()
    w.register(DIGITS, 0.6, "v1")
    real = gate.move_alias

    def dies_on_champion(client, name, alias, *args, **kwargs):
        if alias == "champion":
            raise RuntimeError("process killed")
        return real(client, name, alias, *args, **kwargs)

    monkeypatch.setattr(gate, "move_alias", dies_on_champion)
    with pytest.raises(RuntimeError):
        w.register(DIGITS, 0.8, "new")
    assert w.champion() == "1"  # the version exists, promoted on paper, but champion did not move
    monkeypatch.setattr(gate, "move_alias", real)
    out = w.register(DIGITS, 0.8, "new")  # the retry
    assert out.retried and out.version == "2" and w.champion() == "2"
    assert len(w.client.versions["m"]) == 2


def test_a_vetoed_export_is_registered_but_never_promoted():
    w = World()
    w.register(DIGITS, 0.6, "v1")
    w.vetoes["bad"] = (
        "ONNX export disagrees with PyTorch (max |diff| 3.1e+00, argmax agreement 0.4000 on 10 test images)"
    )
    out = w.register(DIGITS, 0.95, "bad")
    assert out.version == "2" and not out.decision.promote and w.champion() == "1"
    assert (
        out.decision.reason.startswith("ONNX export disagrees")
        and "otherwise accuracy 0.9500 >=" in out.decision.reason
    )
