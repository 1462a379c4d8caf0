"""The generated benchmark tasks: new class sets and a 10:1 imbalanced target, built offline."""

from __future__ import annotations

from pathlib import Path

from transferops.config import Config
from transferops_bench.targets import (
    TARGETS,
    digits_imbalanced,
    handwritten_5to9,
    letters_colour,
    printed_0to4,
    target_config,
    variant_config,
)


def _counts(root: Path) -> dict[str, int]:
    return {d.name: len(list(d.glob("*.png"))) for d in sorted(root.iterdir())}


def test_the_imbalanced_target_has_a_10_to_1_long_tail(tmp_path):
    counts = _counts(digits_imbalanced(tmp_path / "t"))
    assert counts["0"] == 170 and counts["9"] == 17
    assert [counts[str(c)] for c in range(10)] == sorted(counts.values(), reverse=True)


def test_the_new_class_tasks_share_no_class_with_their_source(tmp_path):
    source = _counts(printed_0to4(tmp_path / "s", per_class=3))
    target = _counts(handwritten_5to9(tmp_path / "t"))
    assert set(source) == {"0", "1", "2", "3", "4"} and set(target) == {"5", "6", "7", "8", "9"}
    assert all(n >= 170 for n in target.values())
    letters = _counts(letters_colour(tmp_path / "l", per_class=2))
    assert set(letters) == set("ABCDEFGHIJ") and not set(letters) & set(map(str, range(10)))


def test_task_configs_replace_source_split_and_variant():
    cfg = Config()
    task = TARGETS["digits_imbalanced_10to1"]
    out = target_config(cfg, Path("/t"), "/a", 3, source=Path("/s"), split=task.split)
    assert out.ingest.source.kind == "image_folder" and out.ingest.source.path == "/s"
    assert out.ingest.target.split.labels_per_class is None and out.base.seed == 3
    v = variant_config(out, "full_finetune@sampler")
    assert v.finetune.method == "full_finetune" and v.finetune.class_balance == "sampler"
    assert variant_config(out, "recipe").finetune.class_balance == "none"
