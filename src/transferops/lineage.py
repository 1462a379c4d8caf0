"""Lineage: what every artifact records about where it came from (code, params, data).

The git sha is that of the **code** (the last commit touching :data:`CODE_PATHS`, ``-dirty`` when those
files differ from it), not of the whole repository: committing ``dvc.lock`` or a metrics file after a run
then changes nothing that a checkpoint records, so a fresh clone reproduces the same outputs byte for byte.
In an image without a ``.git`` (Kubeflow), the sha baked in at build time (``TRANSFEROPS_GIT_SHA``) is used.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
from pathlib import Path
from typing import Any

from transferops import __version__
from transferops.config import Config

CODE_PATHS = ("src/transferops", "pyproject.toml", "requirements.lock")
"""What makes the code of a run: the library and its pinned dependencies (not the benchmarks, which no stage
runs: ``src/transferops_bench``)."""
GIT_SHA_ENV = "TRANSFEROPS_GIT_SHA"


def git_sha(cwd: Path | None = None) -> str:
    """The code's commit, suffixed ``-dirty`` when its files changed; ``$TRANSFEROPS_GIT_SHA`` or ``unknown``
    outside a git checkout."""
    root = Path(__file__).resolve().parents[2] if cwd is None else cwd
    try:
        sha = subprocess.run(
            ["git", "log", "-1", "--format=%H", "--", *CODE_PATHS],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no", "--", *CODE_PATHS],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        sha, dirty = "", ""
    if not sha:
        return os.environ.get(GIT_SHA_ENV) or "unknown"
    return f"{sha}-dirty" if dirty else sha


def file_sha256(path: Path) -> str:
    """sha256 of a file, streamed (never the whole file in memory)."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def lineage(cfg: Config, **extra: Any) -> dict[str, Any]:
    """The lineage block saved in checkpoints, metrics and registry tags."""
    return {
        "git_sha": git_sha(),
        "package_version": __version__,
        "params_hash": cfg.section_hash(*cfg.to_dict().keys()),
        **extra,
    }
