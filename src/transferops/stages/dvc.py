"""``dvc.yaml``, generated from the declared graph (:mod:`transferops.stages.graph`), so it cannot drift.

``transferops dvc-yaml`` rewrites the file; ``transferops dvc-yaml --check`` (and a test) fails when the
committed one differs. Each stage's command is ``bin/transferops <stage>`` (the project's venv whether or not it
is activated); its deps are the artifacts it reads, the decision of the schedule gate for the stages after it,
and the library (``src/transferops``: the benchmarks are a package of their own, ``transferops_bench``, so
editing one re-runs nothing); its params are the ones the graph declares. A consumer's dep on an artifact
names the artifact's folder when its producer tracks the folder whole, else the producer's first file in it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from transferops.paths import ARTIFACTS
from transferops.stages import graph

CODE = "src/transferops"
"""The library every stage runs."""
ARTIFACTS_DIR = "artifacts"
"""dvc.yaml's paths: the checkout's ``base.artifacts_dir`` as params.yaml ships it."""
COMMAND = "bin/transferops"
HEADER = """\
# GENERATED from src/transferops/stages/graph.py by `transferops dvc-yaml`: edit the graph, not this file
# (a test fails when the two differ). `dvc repro` runs the same stages, in the same order, as
# `transferops run --direct` and the Kubeflow DAG. Each command goes through bin/transferops, which uses the
# project's .venv when there is one, so `.venv/bin/dvc repro` works without activating it. Metrics and plots
# are small deterministic files committed to git (cache: false); timings and MLflow run ids live in run.json,
# which DVC does not track. The stages after `schedule` persist their outputs: when the schedule says no
# retraining, they keep them (--obey-schedule). `schedule` and `register` depend on the MLflow registry,
# whose state is outside DVC, so they always run.
"""


def dep_path(artifact: str) -> str:
    """What a consumer's DVC dep on ``artifact`` names (see the module docstring)."""
    folder = ARTIFACTS[artifact]
    producer = graph.BY_NAME[graph.producers()[artifact]]
    for f in producer.files:
        if folder == f.path or folder.startswith(f.path + "/"):
            return f"{ARTIFACTS_DIR}/{folder}"
    inside = [f for f in producer.files if f.path.startswith(folder + "/")]
    if not inside:
        raise ValueError(f"{producer.name}: no DVC file for its output {artifact!r}")
    return f"{ARTIFACTS_DIR}/{inside[0].path}"


def _entry(f: graph.Output, persist: bool) -> Any:
    flags: dict[str, Any] = {} if f.cache else {"cache": False}
    if persist:
        flags["persist"] = True
    flags.update(f.plot)
    path = f"{ARTIFACTS_DIR}/{f.path}"
    return {path: flags} if flags else path


def stage_entry(stage: graph.Stage) -> dict[str, Any]:
    gated = graph.gated(stage.name)
    entry: dict[str, Any] = {"cmd": f"{COMMAND} {stage.name}" + (" --obey-schedule" if gated else "")}
    if not stage.cacheable:
        entry["always_changed"] = True
    deps = [dep_path(a) for a in stage.all_inputs]
    if gated:
        deps.append(dep_path("decision"))
    entry["deps"] = [*deps, CODE]
    entry["params"] = list(stage.params)
    for kind, key in (("out", "outs"), ("metric", "metrics"), ("plot", "plots")):
        items = [_entry(f, gated) for f in stage.files if f.kind == kind]
        if items:
            entry[key] = items
    return entry


def render() -> str:
    """The text of ``dvc.yaml``."""
    stages = {s.name: stage_entry(s) for s in graph.GRAPH}
    return HEADER + yaml.safe_dump({"stages": stages}, sort_keys=False, width=120)


def write(path: Path) -> bool:
    """Write ``dvc.yaml`` at ``path``; True when it changed."""
    text = render()
    if path.is_file() and path.read_text() == text:
        return False
    path.write_text(text)
    return True
