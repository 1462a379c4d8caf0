"""``transferops predict`` through the CLI: inputs (folder, archive, files), models (checkpoint, .onnx), runtimes
(torch, onnx), the CSV it writes, and one-line errors."""

import csv
import io
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.unit.helpers import brightness_images, brightness_model
from transferops.config import config_from_dict
from transferops.serving.predict import CSV_HEADER

CLASSES = ["dark", "mid", "bright"]


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "transferops.cli", "predict", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
    )


def rows(text: str) -> list[dict]:
    reader = csv.reader(io.StringIO(text))
    assert tuple(next(reader)) == CSV_HEADER
    return [dict(zip(CSV_HEADER, r, strict=True)) for r in reader]


def one_line_error(r: subprocess.CompletedProcess, *names: str, stdout: str = "") -> str:
    assert r.returncode == 2, r.stderr[-2000:]
    errors = [line for line in r.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and r.stderr.strip().splitlines()[-1] == errors[0], r.stderr[-2000:]
    assert "Traceback" not in r.stderr and len(r.stderr.splitlines()) <= 3, r.stderr[-2000:]  # at most 2 log lines
    assert all(n in errors[0] for n in names), errors[0]
    assert r.stdout == stdout
    return errors[0]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """A checkpoint, its .onnx export, and 9 PNGs (3 per brightness band) in a nested folder, a zip and a tar."""
    from transferops.models.io import save_model
    from transferops.serving.onnx_export import export_onnx

    root = tmp_path_factory.mktemp("predict")
    model = brightness_model()
    cfg = config_from_dict({}, ["ingest.image_size=12", "ingest.channels=1", "model.width=8"])
    save_model(root / "model.pt", model, cfg, CLASSES, [1, 12, 12], {"git_sha": "test"})
    export_onnx(model, root / "model.onnx", 1, 12, classes=CLASSES)

    images, labels = brightness_images(9, size=20, seed=3)  # 20 px: predict resizes to the model's 12
    truth = {}
    for i, (img, y) in enumerate(zip(images, labels, strict=True)):
        rel = Path("batch1" if i < 5 else "batch2/deeper") / f"img{i}.png"
        (root / "images" / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img[0], mode="L").save(root / "images" / rel)
        truth[rel.as_posix()] = CLASSES[y]
    (root / "images" / "README.txt").write_text("not an image: skipped when searching a folder")
    with zipfile.ZipFile(root / "images.zip", "w") as zf:
        for rel in truth:
            zf.write(root / "images" / rel, f"images/{rel}")
    with tarfile.open(root / "images.tar", "w") as tf:
        tf.add(root / "images", "images")
    return root, truth


@pytest.fixture(scope="module")
def torch_run(workspace):
    """The reference run: the folder, the checkpoint, the torch runtime, batches of 4, CSV to --out."""
    root, _ = workspace
    out = root / "out" / "folder.csv"
    r = cli("--model", "model.pt", "--batch-size", "4", "--out", str(out), "images", cwd=root)
    assert r.returncode == 0, r.stderr[-3000:]
    return r, out


def test_folder_with_checkpoint_writes_csv_with_header_and_a_row_per_image(workspace, torch_run):
    _, truth = workspace
    r, out = torch_run
    assert r.stdout == "" and "Traceback" not in r.stderr
    got = rows(out.read_text())
    assert [g["file"] for g in got] == [f"images/{rel}" for rel in sorted(truth)]  # recursive, sorted, .txt skipped
    for g in got:
        assert g["predicted"] == truth[g["file"].removeprefix("images/")]  # the model reads brightness right
        assert 1 / 3 < float(g["confidence"]) <= 1 and g["second"] in CLASSES and g["second"] != g["predicted"]
        assert float(g["second_confidence"]) <= float(g["confidence"])
    assert not list(out.parent.glob(".*.tmp"))


@pytest.mark.parametrize(
    ("archive", "model"),
    [("images.zip", "model.pt"), ("images.tar", "model.onnx")],  # a checkpoint exported on the fly; an .onnx file
)
def test_archive_with_onnx_runtime_agrees_with_torch(workspace, torch_run, archive, model):
    root, truth = workspace
    torch_rows = rows(torch_run[1].read_text())
    r = cli("--model", model, "--runtime", "onnx", "--batch-size", "2", archive, cwd=root)
    assert r.returncode == 0, r.stderr[-3000:]
    onnx_rows = rows(r.stdout)
    assert [g["file"] for g in onnx_rows] == [f"{archive}/images/{rel}" for rel in sorted(truth)]
    for key in ("predicted", "second"):
        assert [g[key] for g in onnx_rows] == [g[key] for g in torch_rows]
    for key in ("confidence", "second_confidence"):
        np.testing.assert_allclose([float(g[key]) for g in onnx_rows], [float(g[key]) for g in torch_rows], atol=2e-6)


def test_files_with_onnx_file_name_their_classes_like_the_checkpoint(workspace, torch_run):
    root, truth = workspace
    files = [f"images/{rel}" for rel in sorted(truth)][::4]
    r = cli("--model", "model.onnx", "--batch-size", "1", *files, cwd=root)  # .onnx: the onnx runtime is implied
    assert r.returncode == 0, r.stderr[-3000:]
    torch_rows = {g["file"]: g for g in rows(torch_run[1].read_text())}
    assert rows(r.stdout) == [torch_rows[f] for f in files]  # same rows, same 6-decimal confidences, class names


def test_bad_inputs_and_models_fail_with_one_line_naming_them(workspace, tmp_path):
    root, _ = workspace
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    (tmp_path / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
    (tmp_path / "bad.onnx").write_bytes(b"not onnx" * 20)
    image = str(root / "images" / "batch1" / "img0.png")
    model = str(root / "model.pt")
    one_line_error(cli("--model", model, str(tmp_path / "missing.png"), cwd=tmp_path), "missing.png", "no such file")
    one_line_error(cli("--model", model, str(tmp_path / "empty"), cwd=tmp_path), "empty", "no image files")
    header = ",".join(CSV_HEADER) + "\n"  # stdout is streamed: the header was out before the bad image was read
    one_line_error(cli("--model", model, image, "corrupt.png", cwd=tmp_path), "corrupt.png", stdout=header)
    one_line_error(cli("--model", str(tmp_path / "nope.pt"), image, cwd=tmp_path), "nope.pt", "not found")
    one_line_error(cli("--model", str(tmp_path / "bad.onnx"), image, cwd=tmp_path), "bad.onnx", "ONNX")
    one_line_error(cli("--model", str(tmp_path / "bad.onnx"), "--runtime", "torch", image, cwd=tmp_path), "bad.onnx")
    out = tmp_path / "never.csv"
    one_line_error(cli("--model", model, "--out", str(out), image, str(tmp_path / "corrupt.png"), cwd=tmp_path))
    assert not out.exists() and not list(tmp_path.glob(".never.csv.*"))  # no partial CSV left behind


def test_an_int8_onnx_file_runs_with_the_int8_runtime_and_a_checkpoint_is_refused(workspace, torch_run):
    from transferops.serving.quantize import quantize_onnx

    root, truth = workspace
    calibration, _ = brightness_images(48, seed=11)  # not the images predicted below
    quantize_onnx(root / "model.onnx", root / "model-int8.onnx", calibration.astype(np.float32) / 255)
    r = cli("--model", "model-int8.onnx", "--runtime", "onnx-int8", "images", cwd=root)
    assert r.returncode == 0, r.stderr[-3000:]
    int8_rows, torch_rows = rows(r.stdout), rows(torch_run[1].read_text())
    assert [g["predicted"] for g in int8_rows] == [g["predicted"] for g in torch_rows]  # same class, every image
    np.testing.assert_allclose(
        [float(g["confidence"]) for g in int8_rows], [float(g["confidence"]) for g in torch_rows], atol=0.05
    )
    err = one_line_error(cli("--model", "model.pt", "--runtime", "onnx-int8", "images", cwd=root), "model.pt")
    assert "registered version" in err
