"""Choosing the transfer method from the data: ``finetune.method: recipe`` and ``auto``.

A user nearly always has unlabelled target images besides the few labelled ones, and often a class set of
their own (a new head). ``recipe`` picks, when finetune runs, the best measured method for what the target
holds (reports/targets.md, reports/methods.md):

- k > 0 and unlabelled target images: ``fixmatch`` (semi-supervised: pseudo-labels on the unlabelled pool;
  works with a new class set, since it needs no source head);
- k > 0, no unlabelled images: ``full_finetune``;
- k = 0, unlabelled images and the source's own classes: ``shot`` (source-free adaptation of the source
  classifier); k = 0 with a new class set cannot be trained (nothing labels the new head): a one-line error.

``auto`` searches :class:`~transferops.config.AutoConfig` candidates on the labelled val split
(:func:`transferops.stages.finetune.search_method`); at k = 0 it falls back to the recipe. None of the
recipe's methods reads the source dataset, so the graph's optional ``source_data`` input follows the
candidates (:func:`uses_source_data`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from transferops.config import Config, FinetuneConfig
from transferops.errors import ConfigError

RECIPE, AUTO = "recipe", "auto"
CHOOSERS = (RECIPE, AUTO)
"""``finetune.method`` values that are resolved from the data when finetune runs."""


@dataclass(frozen=True)
class TargetFacts:
    """What the method choice may know about the target: image counts and whether its classes are the
    source's (the source head is meaningful). Never the test split."""

    labeled: int
    unlabeled: int
    same_classes: bool

    @classmethod
    def of(cls, manifest: dict, source_classes: list[str]) -> TargetFacts:
        splits = manifest["splits"]
        return cls(splits["labeled"]["count"], splits["unlabeled"]["count"], source_classes == manifest["classes"])


RECIPE_RULES: tuple[tuple[str, Callable[[TargetFacts], bool], str], ...] = (
    ("fixmatch", lambda f: f.labeled > 0 and f.unlabeled > 0, "k > 0 with unlabelled target images"),
    ("full_finetune", lambda f: f.labeled > 0, "k > 0 and no unlabelled target images"),
    ("shot", lambda f: f.unlabeled > 0 and f.same_classes, "k = 0 on the source's classes"),
)
"""The recipe, first rule that applies wins: (method, when, why)."""


@dataclass(frozen=True)
class Choice:
    """The method finetune trains, how it was chosen (``finetune.method`` as written) and why."""

    method: str
    chosen_by: str
    reason: str
    search: dict | None = None
    """``auto`` only: every candidate's val score, the skipped ones and the score spread."""


def resolve_recipe(facts: TargetFacts) -> Choice:
    """The recipe's method for this target (:data:`RECIPE_RULES`)."""
    for method, applies, why in RECIPE_RULES:
        if applies(facts):
            return Choice(method, RECIPE, f"recipe: {why} -> {method}")
    missing = "no unlabelled target images either" if facts.same_classes else "a new class set"
    raise ConfigError(
        f"finetune.method: recipe: no labelled target images (k = 0) and {missing}: nothing can train the "
        "classifier; label a few images per class (ingest.target.split.labels_per_class)"
    )


def possible_methods(finetune: FinetuneConfig) -> tuple[str, ...]:
    """Every method ``finetune.method`` may train (itself, or what the recipe / ``auto`` can choose)."""
    recipe = tuple(method for method, _, _ in RECIPE_RULES)
    chosen = {RECIPE: recipe, AUTO: (*finetune.auto.candidates, *recipe)}
    return tuple(dict.fromkeys(chosen.get(finetune.method, (finetune.method,))))


def uses_source_data(cfg: Config) -> bool:
    """Whether finetune may read the source dataset: conservative for ``recipe``/``auto`` (true when any
    method it may choose does)."""
    from transferops.transfer import STRATEGIES

    return any(STRATEGIES[m].uses_source_data for m in possible_methods(cfg.finetune))
