"""Regenerate the vendored schemas from local clones of kubeflow/trainer and kubeflow/katib.

    python tests/schemas/extract.py <trainer git dir> <katib git dir>

Each file is the upstream schema with every ``description`` removed (they are most of the bytes and say
nothing a validator reads); nothing else is changed. The README beside this file lists tag, path and commit.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import yaml

HERE = Path(__file__).parent
TRAINER_TAGS = ("v2.1.0", "v2.2.0", "v2.2.1", "v2.3.0")
TRAINJOB_CRD = "manifests/base/crds/trainer.kubeflow.org_trainjobs.yaml"
KATIB_TAG = "v0.19.0"
KATIB_OPENAPI = "api/openapi-spec/swagger.json"
KATIB_ROOT = "v1beta1.ExperimentSpec"


def show(git_dir: str, tag: str, path: str) -> str:
    command = ["git", "-C", git_dir, "show", f"{tag}:{path}"]
    return subprocess.run(command, check=True, capture_output=True, text=True).stdout


def strip(node):
    if isinstance(node, dict):
        return {k: strip(v) for k, v in node.items() if not (k == "description" and isinstance(v, str))}
    if isinstance(node, list):
        return [strip(v) for v in node]
    return node


def refs(node, out: set[str]) -> set[str]:
    if isinstance(node, dict):
        if "$ref" in node:
            out.add(node["$ref"].rsplit("/", 1)[1])
        for v in node.values():
            refs(v, out)
    elif isinstance(node, list):
        for v in node:
            refs(v, out)
    return out


def write(path: Path, data) -> None:
    path.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")


def main(trainer: str, katib: str) -> None:
    for tag in TRAINER_TAGS:
        crd = yaml.safe_load(show(trainer, tag, TRAINJOB_CRD))
        (version,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1alpha1"]
        write(HERE / "trainer" / f"trainjob-{tag}.json", strip(version["schema"]["openAPIV3Schema"]))
    schemas = json.loads(show(katib, KATIB_TAG, KATIB_OPENAPI))["components"]["schemas"]
    keep, todo = {}, [KATIB_ROOT]
    while todo:
        name = todo.pop()
        if name not in keep:
            keep[name] = strip(schemas[name])
            todo.extend(refs(keep[name], set()))
    write(HERE / "katib" / f"experiment-spec-{KATIB_TAG}.json", keep)


if __name__ == "__main__":
    main(*sys.argv[1:3])
