"""Reliability through the CLI: resume after SIGKILL, bad input, unreachable MLflow, secrets never logged."""

import json
import os
import random
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from transferops.config import load_config
from transferops.errors import DataError
from transferops.paths import Paths
from transferops.training.state import state_location


def cli(*args: str, cwd: Path, env: dict | None = None, check: bool = True) -> subprocess.CompletedProcess:
    r = subprocess.run(
        [sys.executable, "-m", "transferops.cli", *args], cwd=cwd, capture_output=True, text=True, timeout=600, env=env
    )
    if check:
        assert r.returncode == 0, r.stderr[-3000:]
    return r


def prepare(params: Path, *stages: str) -> None:
    """Set-up stages run in this process (no MLflow): only the behaviour under test pays for a subprocess."""
    import importlib

    cfg = load_config(params)
    for name in stages:
        importlib.import_module(f"transferops.stages.{name}").run(cfg)


def one_line_error(r: subprocess.CompletedProcess) -> str:
    assert r.returncode == 2, r.stderr[-2000:]
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and "Traceback" not in r.stderr
    return last


def _edit(params: Path, **sets) -> None:
    from transferops.config import apply_overrides

    data = apply_overrides(yaml.safe_load(params.read_text()), [f"{k}={v}" for k, v in sets.items()])
    params.write_text(yaml.safe_dump(data))


# ------------------------------------------------------------------------------------------------ resume
def test_finetune_killed_mid_epoch_resumes_to_identical_metrics(tiny_params, tmp_path):
    _edit(
        tiny_params,
        **{
            "model.width": 16,
            "finetune.epochs": 3,
            "finetune.steps_per_epoch": 40,
            "finetune.checkpoint_every_steps": 3,
        },
    )
    p = ["--params", str(tiny_params)]
    prepare(tiny_params, "ingest", "pretrain", "finetune")
    paths = Paths.from_config(load_config(tiny_params))
    reference = json.loads((paths.stage("finetune") / "metrics.json").read_text())
    ref_state = torch.load(paths.target_model, weights_only=True)["state_dict"]
    history = json.loads((paths.stage("finetune") / "history.json").read_text())

    state = Path(state_location("", str(paths.root), "finetune"))
    reference_seconds = json.loads((paths.stage("finetune") / "run.json").read_text())["seconds"]
    kill_at = random.Random().randint(4, 100)  # a random step, mostly mid-epoch (epochs are 40 steps)
    proc = subprocess.Popen(
        [sys.executable, "-m", "transferops.cli", "finetune", *p],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    killed_at, seen = None, None
    deadline = time.time() + 300
    while proc.poll() is None and time.time() < deadline:
        stamp = state.stat().st_mtime_ns if state.is_file() else None
        if stamp is not None and stamp != seen:  # read a state only when a new one was written
            try:
                saved = torch.load(state, weights_only=True)
            except Exception:  # replaced while reading: read again
                continue
            seen = stamp
            if saved["step"] >= kill_at:
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                killed_at, seconds_before_kill = saved["step"], saved["seconds"]
                break
        time.sleep(0.01)
    assert killed_at is not None, "finetune finished before it could be killed"
    assert not paths.target_model.exists() or proc.returncode == -signal.SIGKILL
    r = cli("finetune", *p, cwd=tmp_path)
    assert "resumed from" in r.stderr and "at step" in r.stderr
    assert (
        json.loads((paths.stage("finetune") / "metrics.json").read_text())["val_accuracy"] == reference["val_accuracy"]
    )
    assert json.loads((paths.stage("finetune") / "history.json").read_text()) == history
    resumed = torch.load(paths.target_model, weights_only=True)["state_dict"]
    assert all(torch.equal(v, resumed[k]) for k, v in ref_state.items())
    assert not state.exists()
    # one MLflow run for the whole training: continued after the kill, FINISHED, timed over both processes
    import mlflow

    cfg = load_config(tiny_params)
    mlflow.set_tracking_uri(cfg.mlflow.tracking_uri)
    runs = mlflow.search_runs(experiment_names=[cfg.mlflow.experiment], output_format="list")
    (finetune_run,) = [x for x in runs if x.data.tags.get("transferops.stage") == "finetune"]
    assert finetune_run.info.status == "FINISHED"
    assert "continuing MLflow run" in r.stderr
    seconds = float(finetune_run.data.tags["transferops.seconds"])
    resumed_part = json.loads((paths.stage("finetune") / "run.json").read_text())
    assert resumed_part["seconds"] == pytest.approx(seconds, abs=0.1) and resumed_part["resumed_from_step"] == killed_at
    # the time before the kill counts (the steps it took are not run again); timings are noisy on shared CPUs
    assert seconds > seconds_before_kill > 0 and seconds >= 0.5 * reference_seconds, (seconds, reference_seconds)
    assert finetune_run.data.metrics["resumed_from_step"] > 0


def test_state_of_another_config_is_refused_then_restart(tiny_params, tmp_path):
    p = ["--params", str(tiny_params)]
    prepare(tiny_params, "ingest", "pretrain")
    paths = Paths.from_config(load_config(tiny_params))
    state = Path(state_location("", str(paths.root), "finetune"))
    state.parent.mkdir(parents=True)
    torch.save({"config_hash": "other", "step": 3}, state)
    err = one_line_error(cli("finetune", *p, cwd=tmp_path, check=False))
    assert "belongs to another config" in err and "--restart" in err
    cli("finetune", *p, "--restart", cwd=tmp_path)


# ------------------------------------------------------------------------------------------------ bad input
def _folder(root: Path, classes=("0", "1", "2"), n=6, seed=0) -> Path:
    rng = np.random.default_rng(seed)
    for c in classes:
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            Image.fromarray(rng.integers(0, 255, (12, 12), dtype=np.uint8)).save(root / c / f"{i}.png")
    return root


def _target_folder(tiny_params: Path, root: Path, **extra) -> None:
    _edit(
        tiny_params,
        **{
            "ingest.target.kind": "image_folder",
            "ingest.target.path": str(root),
            "ingest.target.split.labels_per_class": 1,
            "ingest.target.split.val_per_class": 1,
            "ingest.target.split.test_fraction": 0.34,
            **extra,
        },
    )


@pytest.mark.parametrize(
    ("damage", "needle"),
    [
        (lambda r: (r / "1" / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\ngarbage"), "bad.png: corrupt or unreadable"),
        (lambda r: (r / "1" / "empty.png").write_bytes(b""), "empty.png: zero-byte file"),
        (lambda r: (r / "2" / "readme.md").write_text("hi"), "readme.md: not an image file"),
        (lambda r: (r / "3").mkdir(), "3: empty class folder"),
    ],
)
def test_bad_images_fail_ingest_with_one_line_and_no_output(tiny_params, tmp_path, damage, needle):
    root = _folder(tmp_path / "target")
    damage(root)
    _target_folder(tiny_params, root)
    err = one_line_error(cli("ingest", "--params", str(tiny_params), cwd=tmp_path, check=False))
    assert needle in err
    out = Paths.from_config(load_config(tiny_params)).stage("ingest")
    assert not out.exists() and not out.with_name("ingest.partial").exists()


def test_one_class_dataset_is_refused(tiny_params, tmp_path):
    _target_folder(tiny_params, _folder(tmp_path / "target", classes=("only",)))
    err = one_line_error(cli("ingest", "--params", str(tiny_params), cwd=tmp_path, check=False))
    assert "found 1 class ['only']; expected at least 2 classes" in err


def test_inputs_are_validated_cheapest_first_with_the_domain_path_and_class_named(tiny_params, tmp_path):
    # a missing target path fails before the source is rendered (and in-process ingest fails fast)
    from transferops.stages import ingest

    cfg = load_config(tiny_params, ["ingest.target.kind=image_folder", f"ingest.target.path={tmp_path / 'nowhere'}"])
    t0 = time.perf_counter()
    with pytest.raises(DataError) as e:
        ingest.run(cfg)
    assert time.perf_counter() - t0 < 2
    assert str(e.value).startswith(f"ingest.target.path: {tmp_path / 'nowhere'}: not found")
    # a one-class folder is reported as such, even when its split would fail too
    _target_folder(
        tiny_params, _folder(tmp_path / "one", classes=("only",), n=2), **{"ingest.target.split.labels_per_class": 5}
    )
    err = one_line_error(cli("ingest", "--params", str(tiny_params), cwd=tmp_path, check=False))
    assert "ingest.target (image_folder: " in err and "found 1 class ['only']" in err
    # a split that cannot be made names the dataset and the class by name
    _target_folder(
        tiny_params,
        _folder(tmp_path / "two", classes=("cat", "dog"), n=3),
        **{"ingest.target.split.labels_per_class": 5},
    )
    with pytest.raises(DataError) as e:
        ingest.run(load_config(tiny_params))
    assert f"ingest.target (image_folder: {tmp_path / 'two'}): class 'cat' has 3 images, too few" in str(e.value)


def test_other_target_classes_train_a_new_head_and_class_map_aligns_them(tiny_params, tmp_path):
    root = _folder(tmp_path / "target", classes=("zero", "one", "two"))
    _target_folder(tiny_params, root)
    p = ["--params", str(tiny_params)]
    prepare(tiny_params, "ingest", "pretrain")
    paths = Paths.from_config(load_config(tiny_params))
    assert json.loads((paths.stage("ingest") / "validation.json").read_text())["same_classes"] is False
    err = one_line_error(cli("finetune", *p, "--set", "finetune.method=dann", cwd=tmp_path, check=False))
    assert "classes differ" in err and "class_map" in err
    prepare(tiny_params, "finetune")  # a new 3-class head on the source backbone
    ckpt = torch.load(paths.target_model, weights_only=True)
    assert ckpt["classes"] == ["one", "two", "zero"] and ckpt["state_dict"]["head.weight"].shape[0] == 3
    # mapped onto the source's digit names: classes now line up (in the source's order)
    _edit(tiny_params, **{"ingest.class_map": "{zero: '0', one: '1', two: '2'}"})
    prepare(tiny_params, "ingest")
    # 3 of the source's 10 classes: still not the same set, so still a new head; the names are mapped
    assert json.loads((paths.target_data / "manifest.json").read_text())["classes"] == ["1", "2", "0"]


def test_test_images_duplicated_in_training_splits_are_reported_or_refused(tiny_params, tmp_path):
    root = _folder(tmp_path / "target", n=6)
    for c in ("0", "1", "2"):  # every image twice: duplicates land on both sides of the split
        for i in range(6):
            (root / c / f"{i}-copy.png").write_bytes((root / c / f"{i}.png").read_bytes())
    _target_folder(tiny_params, root)
    p = ["--params", str(tiny_params)]
    r = cli("ingest", *p, cwd=tmp_path)
    assert "test images also appear" in r.stderr
    report = json.loads((Paths.from_config(load_config(tiny_params)).stage("ingest") / "validation.json").read_text())
    assert report["domains"]["target"]["duplicate_images"] == 18
    assert report["domains"]["target"]["test_images_also_in_training_splits"] > 0
    err = one_line_error(cli("ingest", *p, "--set", "ingest.on_leakage=fail", cwd=tmp_path, check=False))
    assert "ingest.on_leakage: fail" in err


def test_zip_with_symlink_entry_is_refused(tiny_params, tmp_path):
    zpath = tmp_path / "data.zip"
    with zipfile.ZipFile(zpath, "w") as zf:
        info = zipfile.ZipInfo("a/link.png")
        info.external_attr = 0o120777 << 16
        zf.writestr(info, "/etc/passwd")
    _target_folder(tiny_params, zpath)
    err = one_line_error(cli("ingest", "--params", str(tiny_params), cwd=tmp_path, check=False))
    assert "a/link.png" in err and "symlink" in err


def test_missing_and_truncated_checkpoints(tiny_params, tmp_path):
    p = ["--params", str(tiny_params)]
    prepare(tiny_params, "ingest")
    paths = Paths.from_config(load_config(tiny_params))
    err = one_line_error(cli("finetune", *p, cwd=tmp_path, check=False))
    assert f"{paths.source_model}: checkpoint not found" in err
    prepare(tiny_params, "pretrain")
    data = paths.source_model.read_bytes()
    paths.source_model.write_bytes(data[: len(data) // 2])
    err = one_line_error(cli("finetune", *p, cwd=tmp_path, check=False))
    assert "unreadable checkpoint, truncated" in err
    assert not paths.stage("finetune").exists()


def test_unknown_method_and_wrong_type(tiny_params, tmp_path):
    err = one_line_error(
        cli("finetune", "--params", str(tiny_params), "--set", "finetune.method=magic", cwd=tmp_path, check=False)
    )
    assert "finetune.method: expected one of" in err and "dann" in err
    err = one_line_error(
        cli("pretrain", "--params", str(tiny_params), "--set", "pretrain.epochs=lots", cwd=tmp_path, check=False)
    )
    assert "pretrain.epochs: expected int, got 'lots'" in err


def test_unreachable_mlflow_fails_fast_and_registers_nothing(tiny_params, tmp_path):
    p = ["--params", str(tiny_params)]
    prepare(tiny_params, "ingest", "pretrain", "finetune")
    (Paths.from_config(load_config(tiny_params)).stage("evaluate")).mkdir(parents=True)
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed once the block ends: nothing listens there
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{port}"}
    _edit(tiny_params, **{"mlflow.tracking_uri": "''"})
    t0 = time.time()
    err = one_line_error(cli("register", *p, cwd=tmp_path, env=env, check=False))
    assert time.time() - t0 < 90
    assert f"http://127.0.0.1:{port}: MLflow tracking server unreachable" in err
    assert not (Paths.from_config(load_config(tiny_params)).stage("register")).exists()


# ------------------------------------------------------------------------------------------------ secrets
def test_credentials_never_reach_logs_or_the_mlflow_store(tiny_params, tmp_path):
    secrets = {
        "AWS_SECRET_ACCESS_KEY": "s3cr3t-AWS-value-9137",
        "MLFLOW_TRACKING_PASSWORD": "pw-MLFLOW-4410",
        "AWS_ACCESS_KEY_ID": "AKIA-TEST-ID-7788",
    }
    env = {**os.environ, **secrets}
    r = cli("run", "--direct", "--params", str(tiny_params), "-v", cwd=tmp_path, env=env)
    logs = r.stdout + r.stderr
    assert "transfer gain" in r.stdout and "DEBUG" in logs  # it ran, with verbose logging
    stored = [
        tmp_path / "mlflow.db",
        *[f for f in (tmp_path / "mlruns").rglob("*") if f.is_file()],
        *[f for f in Path(tmp_path / "artifacts").rglob("*") if f.is_file()],
    ]
    assert len(stored) > 20
    for value in secrets.values():
        assert value not in logs
        for f in stored:
            assert value.encode() not in f.read_bytes(), f"{value} leaked into {f}"


def test_log_filter_masks_credentials_and_url_passwords(monkeypatch):
    import logging

    from transferops.secrets import SecretMaskingFilter, mask

    monkeypatch.setenv("MY_API_TOKEN", "tok-123456")
    assert mask("token tok-123456 at https://user:hunter2@mlflow.example.com/x") == (
        "token *** at https://user:***@mlflow.example.com/x"
    )
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "using %s", ("tok-123456",), None)
    SecretMaskingFilter().filter(record)
    assert record.getMessage() == "using ***"
