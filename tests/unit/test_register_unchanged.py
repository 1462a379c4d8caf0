"""A second run of an unchanged model: register does nothing, says so, and never loads torch."""

import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from tests.unit.fake_registry import FakeRegistryClient
from transferops.config import config_from_dict
from transferops.lineage import file_sha256
from transferops.paths import Paths
from transferops.registry.gate import FINGERPRINT_TAG
from transferops.stages import register
from transferops.summary import summary_text

REPO = Path(__file__).resolve().parents[2]
URI = "sqlite:///x.db"


class _Tracker:
    """The part of MlflowTracker the unchanged path uses, over a fake registry."""

    def __init__(self, client: FakeRegistryClient) -> None:
        self.uri, self.parent, self.tags, self.run_id = URI, {}, {}, "run-2"
        self.mlflow = SimpleNamespace(MlflowClient=lambda: client)

    def log_to_parent(self, metrics=None, tags=None) -> None:
        self.parent.update({**(metrics or {}), **(tags or {})})

    def set_tags(self, tags) -> None:
        self.tags.update(tags)


def _artifacts(tmp_path: Path, **registration_changes):
    cfg = config_from_dict({"base": {"artifacts_dir": str(tmp_path / "artifacts")}})
    paths = Paths.from_config(cfg)
    paths.target_model.parent.mkdir(parents=True)
    paths.target_model.write_bytes(b"weights")
    sha = file_sha256(paths.target_model)
    for stage, name, data in [
        ("evaluate", "result.json", {"lineage": {"model_sha256": sha}}),
        (
            "evaluate",
            "metrics.json",
            {
                "accuracy": 0.9,
                "method": "full_finetune",
                "labels_per_class": 1,
                "n_test": 10,
                "macro_f1": 0.9,
                "ece": 0.01,
            },
        ),
        ("register", "result.json", {"stage": "register", "lineage": {"model_sha256": sha}}),
    ]:
        (paths.stage(stage)).mkdir(parents=True, exist_ok=True)
        (paths.stage(stage) / name).write_text(json.dumps(data))
    fp = register.fingerprint(cfg, sha)
    client = FakeRegistryClient()
    client.create_registered_model("transferops-digits", tags={})
    client.create_model_version("transferops-digits", "models:/m-1", tags={FINGERPRINT_TAG: fp})
    client.set_registered_model_alias("transferops-digits", "champion", "1")
    registration = {
        "model_name": "transferops-digits",
        "version": "1",
        "aliases": ["champion"],
        "promoted": True,
        "reason": "accuracy 0.9 >= floor 0.5; no champion yet",
        "tracking_uri": URI,
        "run_id": "run-1",
        "fingerprint": fp,
        **registration_changes,
    }
    (paths.stage("register") / "registration.json").write_text(json.dumps(registration))
    return cfg, paths, client


def test_the_same_model_already_registered_is_unchanged_and_the_summary_says_so(tmp_path):
    cfg, paths, client = _artifacts(tmp_path)
    tracker = _Tracker(client)
    previous = register.unchanged_registration(cfg, paths, tracker)
    assert previous is not None and previous["aliases"] == ["champion"]
    result = register.write_unchanged(cfg, paths, previous, tracker)
    assert result.metrics == {"version": "1", "promoted": False, "unchanged": True}
    written = json.loads((paths.stage("register") / "registration.json").read_text())
    assert written["unchanged"] is True and written["promoted"] is False and written["fingerprint"]
    assert written["registered_by"]["promoted"] is True and "no champion yet" in written["registered_by"]["reason"]
    assert written["registered_by"]["run_id"] == "run-1"
    assert tracker.parent["transferops.registration"] == "unchanged" and tracker.parent["promoted"] == 0.0
    assert tracker.tags["transferops.promoted"] == "false" and written["run_id"] == "run-2"
    text = summary_text(paths.stage("evaluate"), paths.stage("register"), "artifacts/", URI)
    assert "registration unchanged: this model is already version 1" in text
    assert "promoted to champion" not in text and "no champion yet" not in text
    again = register.unchanged_registration(cfg, paths, tracker)  # and a third run too, keeping the first decision
    register.write_unchanged(cfg, paths, again, tracker)
    written = json.loads((paths.stage("register") / "registration.json").read_text())
    assert written["registered_by"]["promoted"] is True and written["unchanged"] is True


@pytest.mark.parametrize(
    "change",
    [
        {"fingerprint": "another-model"},
        {"tracking_uri": "sqlite:///other.db"},
        {"version": "7"},  # not in this registry (a wiped or other mlflow.db): register again
        {"version": None},
        {"model_name": "transferops-other"},
    ],
)
def test_anything_different_takes_the_full_registration(tmp_path, change):
    cfg, paths, client = _artifacts(tmp_path, **change)
    assert register.unchanged_registration(cfg, paths, _Tracker(client)) is None


def test_a_retrained_model_or_new_register_settings_are_not_unchanged(tmp_path):
    cfg, paths, client = _artifacts(tmp_path)
    stricter = config_from_dict({"base": {"artifacts_dir": cfg.base.artifacts_dir}, "register": {"min_delta": 0.01}})
    assert register.unchanged_registration(stricter, paths, _Tracker(client)) is None
    paths.target_model.write_bytes(b"retrained")
    assert register.unchanged_registration(cfg, paths, _Tracker(client)) is None


def test_the_register_stage_module_does_not_import_torch():
    code = "import sys, transferops.stages.register; assert 'torch' not in sys.modules, 'torch imported'"
    env = {"PYTHONPATH": f"{REPO / 'src'}:{REPO}", "PATH": "/usr/bin:/bin"}
    subprocess.run([sys.executable, "-c", code], check=True, env=env, timeout=60)
