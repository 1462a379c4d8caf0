"""Shared fixtures: a tiny but complete config that runs the whole pipeline on CPU in seconds."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

from transferops.config import Config, config_from_dict

REPO = Path(__file__).resolve().parents[1]

TINY = [
    "ingest.source.samples_per_class=40",
    "ingest.source.split.val_per_class=4",
    "ingest.target.split.labels_per_class=2",
    "ingest.target.split.val_per_class=3",
    "ingest.target.split.test_fraction=0.2",
    "model.width=8",
    "pretrain.epochs=3",
    "pretrain.lr=0.01",
    "pretrain.batch_size=32",
    "pretrain.augment=affine",  # a width-8 model in 3 epochs cannot afford photometric invariance as well
    "finetune.epochs=2",
    "finetune.steps_per_epoch=4",
    "finetune.method=full_finetune",  # the recipe (FixMatch) is tested on its own: tests/unit/test_choice.py
    "register.min_accuracy=0.1",
    "mlflow.system_metrics=false",  # a sampling thread per training run; tests/unit/test_tracking.py turns it on
]


def tiny_dict(tmp_path: Path) -> dict:
    """params.yaml as shipped, made tiny, writing under ``tmp_path``."""
    data = yaml.safe_load((REPO / "params.yaml").read_text())
    from transferops.config import apply_overrides

    return apply_overrides(
        data,
        TINY
        + [f"base.artifacts_dir={tmp_path / 'artifacts'}", f"mlflow.tracking_uri=sqlite:///{tmp_path / 'mlflow.db'}"],
    )


def dvc_repo(tmp_path: Path, tracking_uri: str) -> tuple[Path, dict[str, str]]:
    """A throwaway git + DVC repo holding the real dvc.yaml, bin/ launcher, .gitignore, the library and a tiny
    params.yaml, with ``.venv`` pointing at this interpreter's venv, as in a checkout after ``make install``.

    Returns the repo and the environment to run ``<repo>/.venv/bin/dvc`` in: the venv is **not** on PATH,
    as for a user who did not activate it (the README's commands must work so).
    """
    import shutil
    import subprocess
    import sys

    repo = tmp_path / "repo"
    repo.mkdir()
    for name in ("dvc.yaml", ".gitignore", ".dvcignore"):
        shutil.copy(REPO / name, repo)
    shutil.copytree(REPO / "bin", repo / "bin")
    shutil.copytree(
        REPO / "src" / "transferops", repo / "src" / "transferops", ignore=shutil.ignore_patterns("__pycache__")
    )
    (repo / ".venv").symlink_to(Path(sys.executable).parent.parent)
    params = tiny_dict(repo)
    params["base"]["artifacts_dir"] = "artifacts"
    params["mlflow"]["tracking_uri"] = tracking_uri
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    venv_bin = str(Path(sys.executable).parent)
    path = os.pathsep.join(p for p in os.environ["PATH"].split(os.pathsep) if p != venv_bin)
    env = {
        **{k: v for k, v in os.environ.items() if k != "VIRTUAL_ENV"},
        "PATH": path,
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@t",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@t",
    }
    dvc = str(repo / ".venv" / "bin" / "dvc")
    for cmd in (["git", "init", "-q"], [dvc, "init", "-q"], [dvc, "config", "core.analytics", "false"]):
        subprocess.run(cmd, cwd=repo, env=env, check=True, capture_output=True, timeout=120)
    return repo, env


@pytest.fixture
def tiny_params(tmp_path: Path) -> Path:
    """A tiny params file in a temp dir (its artifacts and MLflow store live there too)."""
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(tiny_dict(tmp_path), sort_keys=False))
    return path


@pytest.fixture
def tiny_cfg(tmp_path: Path) -> Config:
    return config_from_dict(tiny_dict(tmp_path))


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    """No test reads the developer's MLflow settings or writes into the repo."""
    for var in ("MLFLOW_TRACKING_URI", "TRANSFEROPS_PARENT_RUN_ID"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("MLFLOW_LOGGING_LEVEL", "WARNING")
    monkeypatch.chdir(tmp_path)
    yield
    os.environ.pop("TRANSFEROPS_PARENT_RUN_ID", None)
