"""The promotion gate: the one function that decides what is registered and what becomes champion.

Every adapter (the CLI, the DVC stage, the Kubeflow component) reaches the registry through
:func:`register_candidate`, so the same inputs give the same versions, aliases and tags whichever way the
pipeline ran.

A registered model name stands for one **task**: an ordered class list and an input geometry. The first
registration claims the name for its task (a tag on the registered model); a candidate of another task is
refused before anything is logged, and its accuracy is never compared with the champion's: a letters model
scored on digits says nothing about either. Within a task, the gate is:

- below ``register.min_accuracy``: nothing is registered (the decision is still recorded in the model's
  event log and in ``registration.json``);
- otherwise a new version with alias ``challenger``; it also becomes ``champion`` when its accuracy is at
  least the current champion's, re-scored now on the same test split, plus ``register.min_delta``. A
  champion that cannot be re-scored is not replaced (fail closed).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from transferops.config import Config, RegisterConfig
from transferops.errors import GateError
from transferops.registry.aliases import (
    CHAMPION_SEEN_TAG,
    current_alias,
    history,
    move_alias,
    record_event,
    settle_champion,
)

log = logging.getLogger(__name__)

TASK_TAG = "transferops.task"
FINGERPRINT_TAG = "transferops.fingerprint"
ACCURACY_TAG = "transferops.accuracy"
PROMOTED_TAG = "transferops.promoted"
REASON_TAG = "transferops.gate_reason"


@dataclass(frozen=True)
class Task:
    """What a model does: its class names in output order and the (C, H, W) images it takes."""

    classes: tuple[str, ...]
    input_shape: tuple[int, int, int]

    def to_json(self) -> str:
        return json.dumps({"classes": list(self.classes), "input_shape": list(self.input_shape)})

    @classmethod
    def from_json(cls, text: str) -> Task:
        data = json.loads(text)
        return cls(tuple(data["classes"]), tuple(data["input_shape"]))

    def describe(self) -> str:
        c, h, w = self.input_shape
        return f"classes [{', '.join(self.classes)}] on {c}x{h}x{w} images"


@dataclass(frozen=True)
class GatePolicy:
    """The thresholds of the gate (``register`` section)."""

    min_accuracy: float
    min_delta: float
    champion_alias: str = "champion"
    challenger_alias: str = "challenger"
    metric: str = "accuracy"
    """What the candidate's and champion's scores are (``register.metric``); named in every reason."""

    @classmethod
    def from_config(cls, reg: RegisterConfig) -> GatePolicy:
        return cls(reg.min_accuracy, reg.min_delta, reg.champion_alias, reg.challenger_alias, reg.metric)


@dataclass(frozen=True)
class GateDecision:
    """What the gate decided and why (recorded on the version, in the event log and in registration.json)."""

    register: bool
    """False when the candidate is below the floor: no version is created."""
    promote: bool
    reason: str
    candidate_accuracy: float
    champion_accuracy: float | None = None
    champion_version: str | None = None


def decide(candidate: float, champion: float | None, champion_version: str | None, policy: GatePolicy) -> GateDecision:
    """The gate on numbers: floor first, then the re-scored champion plus ``min_delta``.

    ``champion`` is None when there is no champion, or when one exists but could not be re-scored (then
    ``champion_version`` is set and the candidate is registered but not promoted: fail closed).
    """
    floor, metric = policy.min_accuracy, policy.metric
    if not candidate >= floor:  # also catches nan
        reason = f"{metric} {candidate:.4f} < register.min_accuracy {floor:.4f}: not registered"
        return GateDecision(False, False, reason, candidate, champion, champion_version)
    if champion_version is None:
        reason = f"{metric} {candidate:.4f} >= floor {floor:.4f}; no champion yet"
        return GateDecision(True, True, reason, candidate)
    if champion is None:
        reason = f"champion v{champion_version} could not be re-scored on this test split: champion kept"
        return GateDecision(True, False, reason, candidate, None, champion_version)
    bar = champion + policy.min_delta
    versus = f"champion v{champion_version} {champion:.4f} (re-scored now) + min_delta {policy.min_delta:+.4f}"
    if candidate >= bar:
        return GateDecision(True, True, f"{metric} {candidate:.4f} >= {versus}", candidate, champion, champion_version)
    return GateDecision(True, False, f"{metric} {candidate:.4f} < {versus}", candidate, champion, champion_version)


# ------------------------------------------------------------------------------------------------ tasks
def model_name(cfg: Config) -> str:
    """``register.model_name``, or a name derived from the target dataset when it is empty.

    Deriving it from the target keeps models of different tasks apart by default (``transferops-digits``
    for the embedded target, ``transferops-<folder>`` for an image folder, ...).
    """
    if cfg.register.model_name:
        return cfg.register.model_name
    t = cfg.ingest.target
    derived = {
        "sklearn_digits": "digits",
        "synthetic_digits": "synthetic-digits",
        "torchvision": t.name.lower(),
    }.get(t.kind)
    if derived is None:  # image_folder: the folder, archive or prefix name
        tail = t.path.rstrip("/").rsplit("/", 1)[-1]
        for suffix in (".tar.gz", ".tgz", ".tar.bz2", ".tar.xz", ".tar", ".zip"):
            if tail.lower().endswith(suffix):
                tail = tail[: -len(suffix)]
        derived = tail
    slug = "".join(ch if ch.isalnum() else "-" for ch in derived.lower()).strip("-")
    return f"transferops-{slug or 'model'}"


def registered_task(client, name: str) -> Task | None:
    """The task a registered model name stands for; None when the name is not registered yet.

    Models registered before the task tag existed are read from their versions' class tags and the
    champion's signature; a mixed or unreadable legacy model raises :class:`GateError`.
    """
    from mlflow.exceptions import MlflowException

    try:
        model = client.get_registered_model(name)
    except MlflowException:
        return None
    if TASK_TAG in model.tags:
        return Task.from_json(model.tags[TASK_TAG])
    versions = client.search_model_versions(f"name = '{name}'")
    class_sets = {v.tags.get("transferops.classes") for v in versions}
    if not versions:
        return None
    if len(class_sets) != 1 or None in class_sets:
        raise GateError(
            f"registered model {name!r} has versions of several or unknown class sets "
            f"({sorted(map(str, class_sets))}); register under another register.model_name"
        )
    shape = _signature_shape(f"models:/{name}/{versions[0].version}")
    return Task(tuple(class_sets.pop().split(",")), shape)


def _signature_shape(model_uri: str) -> tuple[int, int, int]:
    import mlflow

    try:
        spec = mlflow.models.get_model_info(model_uri).signature.inputs.to_dict()[0]["tensor-spec"]["shape"]
        return int(spec[1]), int(spec[2]), int(spec[3])
    except Exception as exc:
        raise GateError(f"{model_uri}: cannot read the input shape of a legacy version ({exc})") from None


def claim_task(client, name: str, task: Task, description: str) -> None:
    """Make ``name`` stand for ``task``: create the registered model with its task tag, or check that it
    already stands for this task. Creation is atomic in the store, so two first registrations of
    different tasks cannot both claim the name."""
    from mlflow.exceptions import MlflowException

    existing = registered_task(client, name)
    if existing is None:
        try:
            client.create_registered_model(name, tags={TASK_TAG: task.to_json()}, description=description)
            return
        except MlflowException as exc:
            if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
            existing = registered_task(client, name)  # another process registered it first
    if existing is None:  # registered model without versions or tag (created by hand): claim it
        client.set_registered_model_tag(name, TASK_TAG, task.to_json())
        return
    if existing != task:
        raise GateError(
            f"register.model_name {name!r} holds another task: {existing.describe()}; this model has "
            f"{task.describe()}. Its champion is neither re-scored nor replaced: register under another "
            "register.model_name"
        )
    if TASK_TAG not in client.get_registered_model(name).tags:
        client.set_registered_model_tag(name, TASK_TAG, task.to_json())  # migrate a legacy model


# ------------------------------------------------------------------------------------------------ workflow
@dataclass
class Candidate:
    """A model offered to the registry."""

    task: Task
    accuracy: float
    """The gated metric (``register.metric``; accuracy by default) on the target test split, as the evaluate
    stage measured it (full precision)."""
    fingerprint: str
    """Identifies this exact model and gate settings: a retried registration finds its version by it."""
    tags: dict[str, str] = field(default_factory=dict)
    """Lineage tags put on the version."""


@dataclass(frozen=True)
class LoggedModel:
    """What logging a candidate's model produced: where it is, extra version tags, and a veto when a check of
    the logged artifacts failed (then the version is registered but never promoted)."""

    source: str
    model_id: str | None = None
    tags: dict[str, str] = field(default_factory=dict)
    veto: str | None = None
    int8: Any = None
    """The INT8 export's check (:class:`transferops.serving.quantize.Int8Export`), for the model card."""


@dataclass
class Outcome:
    """What :func:`register_candidate` did."""

    decision: GateDecision
    version: str | None
    aliases: list[str]
    retried: bool = False


def _existing_version(client, name: str, fingerprint: str):
    from mlflow.exceptions import MlflowException

    try:
        found = client.search_model_versions(f"name = '{name}' and tags.`{FINGERPRINT_TAG}` = '{fingerprint}'")
    except MlflowException:
        return None
    return found[0] if found else None


def _older_twin(client, name: str, fingerprint: str, version: str):
    """Another version of the same model created before ``version`` (version numbers only grow), or None."""
    twins = [
        v
        for v in client.search_model_versions(f"name = '{name}' and tags.`{FINGERPRINT_TAG}` = '{fingerprint}'")
        if int(v.version) < int(version)
    ]
    return min(twins, key=lambda v: int(v.version)) if twins else None


def _recorded(version) -> GateDecision:
    tags = version.tags
    return GateDecision(
        True,
        tags.get(PROMOTED_TAG) == "true",
        tags.get(REASON_TAG, "already registered"),
        float(tags.get(ACCURACY_TAG, "nan")),
        None,
        None if tags.get(CHAMPION_SEEN_TAG) in (None, "none") else tags[CHAMPION_SEEN_TAG],
    )


def register_candidate(
    client,
    name: str,
    candidate: Candidate,
    policy: GatePolicy,
    score_champion: Callable[[str], float],
    log_model: Callable[[], LoggedModel],
    describe: Callable[[GateDecision], str],
    model_description: str,
    run_id: str | None = None,
) -> Outcome:
    """Gate ``candidate`` and register it under ``name``.

    Args:
        score_champion: accuracy of a registered model URI on the candidate's test split.
        log_model: logs the candidate's model (called only when a version is created); a veto in what it
            returns (e.g. an ONNX export that disagrees with PyTorch) keeps the version from being promoted.
        describe: the version's description (model card) for a decision.
        model_description: the registered model's description, set when the name is first claimed.
    """
    existing = _existing_version(client, name, candidate.fingerprint)
    if existing is not None:
        log.info("register: this model is already version %s of %s (retry): nothing new", existing.version, name)
        _complete(client, name, existing, candidate, policy, score_champion, run_id)
        aliases = sorted(client.get_model_version(name, str(existing.version)).aliases)
        return Outcome(
            _recorded(client.get_model_version(name, str(existing.version))), str(existing.version), aliases, True
        )

    claim_task(client, name, candidate.task, model_description)
    champion_version = current_alias(client, name, policy.champion_alias)
    decision = decide(candidate.accuracy, _score(name, champion_version, score_champion), champion_version, policy)
    seen = f"v{champion_version}" if champion_version else "-"
    if not decision.register:
        record_event(client, name, "gate", seen, "-", "rejected", decision.reason, run_id)
        return Outcome(decision, None, [])

    logged = log_model()
    if logged.veto and decision.promote:
        decision = replace(decision, promote=False, reason=f"{logged.veto}; otherwise {decision.reason}")
    tags = {
        **candidate.tags,
        **logged.tags,
        FINGERPRINT_TAG: candidate.fingerprint,
        TASK_TAG: candidate.task.to_json(),
        "transferops.classes": ",".join(candidate.task.classes),
        ACCURACY_TAG: repr(candidate.accuracy),  # full precision: gates compare it
        PROMOTED_TAG: str(decision.promote).lower(),
        REASON_TAG: decision.reason,
        CHAMPION_SEEN_TAG: champion_version or "none",
    }
    mv = client.create_model_version(
        name, logged.source, run_id=run_id, tags=tags, description=describe(decision), model_id=logged.model_id
    )
    version = str(mv.version)
    twin = _older_twin(client, name, candidate.fingerprint, version)
    if twin is not None:  # the same model registered concurrently (two identical runs): keep the first
        client.delete_model_version(name, version)
        log.info(
            "register: the same model was registered concurrently as version %s; dropped %s", twin.version, version
        )
        aliases = sorted(client.get_model_version(name, str(twin.version)).aliases)
        return Outcome(_recorded(twin), str(twin.version), aliases, retried=True)
    kind = "promoted" if decision.promote else "challenger"
    record_event(client, name, "gate", seen, f"v{version}", kind, decision.reason, run_id)
    move_alias(client, name, policy.challenger_alias, version, "new candidate", run_id)
    if decision.promote:
        decision = _promote(client, name, version, candidate.accuracy, decision, policy, score_champion, run_id)
    aliases = sorted(client.get_model_version(name, version).aliases)
    return Outcome(decision, version, aliases)


def _score(name: str, version: str | None, score_champion: Callable[[str], float]) -> float | None:
    """The champion re-scored on the candidate's test split; None when there is none or it cannot be read
    (then the gate keeps it: fail closed)."""
    if version is None:
        return None
    uri = f"models:/{name}/{version}"
    try:
        return score_champion(uri)
    except Exception as exc:
        log.warning("register: champion %s could not be re-scored (%s)", uri, str(exc).splitlines()[0][:200])
        return None


def _promote(
    client, name: str, version: str, accuracy: float, decision: GateDecision, policy: GatePolicy, score, run_id
) -> GateDecision:
    """Move ``champion`` to ``version``, but only if the champion it was gated against is still the champion.

    MLflow has no compare-and-set on aliases: a concurrent registration may have moved ``champion`` while this
    one was scoring. So the champion is read again; if it changed, the new one is scored and the gate decided
    again (recorded on the version and in the event log) before anything moves. Registrations gated against
    the same champion are then settled on the best of them (:func:`settle_champion`).
    """
    for _ in range(3):
        now = current_alias(client, name, policy.champion_alias)
        if now == decision.champion_version:
            break
        decision = decide(accuracy, _score(name, now, score), now, policy)
        client.set_model_version_tag(name, version, PROMOTED_TAG, str(decision.promote).lower())
        client.set_model_version_tag(name, version, REASON_TAG, decision.reason)
        client.set_model_version_tag(name, version, CHAMPION_SEEN_TAG, now or "none")
        kind = "promoted" if decision.promote else "challenger"
        record_event(client, name, "gate", f"v{now}" if now else "-", f"v{version}", kind, decision.reason, run_id)
        if not decision.promote:
            return decision
    move_alias(client, name, policy.champion_alias, version, decision.reason, run_id)
    settle_champion(client, name, policy.champion_alias, decision.champion_version or "none", run_id)
    return decision


def _complete(client, name: str, existing, candidate: Candidate, policy: GatePolicy, score, run_id) -> None:
    """Finish what a registration that died half-way left undone (its version exists, an alias move is missing):
    a retry then ends where an uninterrupted registration would have."""
    version = str(existing.version)
    moved = {(e["alias"], e["to_version"]) for e in history(client, name)}
    newest = max(int(v.version) for v in client.search_model_versions(f"name = '{name}'"))
    if (policy.challenger_alias, version) not in moved and int(version) == newest:
        move_alias(client, name, policy.challenger_alias, version, "new candidate (completed on retry)", run_id)
    decision = _recorded(existing)
    if decision.promote and (policy.champion_alias, version) not in moved:
        log.info("register: version %s was promoted but its champion move is missing: completing it", version)
        _promote(client, name, version, candidate.accuracy, decision, policy, score, run_id)


def outcome_dict(name: str, outcome: Outcome) -> dict[str, Any]:
    """The ``registration.json`` view of an outcome."""
    d = outcome.decision
    return {
        "model_name": name,
        "registered": outcome.version is not None,
        "version": outcome.version,
        "aliases": outcome.aliases,
        "promoted": d.promote,
        "reason": d.reason,
        "candidate_accuracy": d.candidate_accuracy,
        "champion_accuracy": d.champion_accuracy,
        "previous_champion_version": d.champion_version,
        "model_uri": f"models:/{name}/{outcome.version}" if outcome.version else None,
        "retried": outcome.retried,
    }
