"""Lineage: what every artifact records about where it came from (code, params, data)."""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path
from typing import Any

from transferops import __version__
from transferops.config import Config


def git_sha(cwd: Path | None = None) -> str:
    """HEAD's sha, suffixed ``-dirty`` when tracked files changed; ``unknown`` outside a git checkout."""
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{sha}-dirty" if dirty else sha


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def lineage(cfg: Config, **extra: Any) -> dict[str, Any]:
    """The lineage block saved in checkpoints, metrics and registry tags."""
    return {
        "git_sha": git_sha(),
        "package_version": __version__,
        "params_hash": cfg.section_hash(*cfg.to_dict().keys()),
        **extra,
    }
