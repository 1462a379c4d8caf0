"""``transferops predict``: classify images with a trained model and write one CSV row per image.

Models: a registered version (``models:/NAME@ALIAS`` or ``models:/NAME/VERSION``), a local ``.onnx`` file or a
transferops checkpoint (``.pt``). Runtimes (:data:`RUNTIMES`): ``torch`` (the PyTorch model), ``onnx`` (ONNX
Runtime on CPU: the fp32 ONNX export logged beside a registered version, the ``.onnx`` file itself, or a
checkpoint exported now) and ``onnx-int8`` (the version's INT8 export, made and checked by the register stage;
or a quantised ``.onnx`` file). The ONNX paths never import torch unless a checkpoint must be exported, so they
also run where torch is absent.

Inputs: image files, folders (searched recursively for image files), ``.zip``/``.tar`` archives (extracted
safely into a temporary folder) and ``s3://bucket/prefix`` URLs (downloaded into one). The image geometry
(channels, size) comes from the model, never from the user; class names from the version tag
``transferops.classes``, the checkpoint, or the ONNX file's metadata.

Where the ONNX exports of a registered version live: :func:`find_onnx` (the version tags
:data:`~transferops.serving.runtime.ONNX_URI_TAG` and :data:`~transferops.serving.runtime.ONNX_INT8_URI_TAG`).
"""

from __future__ import annotations

import contextlib
import csv
import logging
import os
import sys
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TextIO

import numpy as np

from transferops.config import IngestConfig
from transferops.data import archive
from transferops.data.sources import IMAGE_SUFFIXES, read_image_file
from transferops.errors import CheckpointError, DataError, TrackingError
from transferops.serving.runtime import (
    CLASSES_TAG,
    ONNX_FILE,
    ONNX_INT8_REASON_TAG,
    ONNX_INT8_URI_TAG,
    ONNX_URI_TAG,
    Classifier,
    first_line,
    load_onnx,
)

log = logging.getLogger(__name__)

ONNX_RUNTIMES = {"onnx": ONNX_URI_TAG, "onnx-int8": ONNX_INT8_URI_TAG}
"""ONNX runtimes -> the version tag naming the export each one runs."""
RUNTIMES = ("torch", *ONNX_RUNTIMES)
DEFAULT_BATCH_SIZE = 256
CSV_HEADER = ("file", "predicted", "confidence", "second", "second_confidence")


# ------------------------------------------------------------------------------------------- MLflow lookups
def is_mlflow_uri(model: str) -> bool:
    return model.startswith(("models:/", "runs:/"))


def model_version(model_uri: str):
    """The registry's ModelVersion for ``models:/NAME@ALIAS`` or ``models:/NAME/VERSION``; None for other URIs."""
    import mlflow
    from mlflow.exceptions import MlflowException

    if not model_uri.startswith("models:/"):
        return None
    ref = model_uri[len("models:/") :].rstrip("/")
    client = mlflow.MlflowClient()
    try:
        if "@" in ref:
            name, alias = ref.split("@", 1)
            return client.get_model_version_by_alias(name, alias)
        if "/" in ref:
            name, version = ref.split("/", 1)
            return client.get_model_version(name, version)
    except MlflowException as exc:
        raise TrackingError(f"{model_uri}: no such model version ({first_line(exc)})") from None
    return None  # models:/m-<id>: a logged model, not a registered version


def find_onnx(model_uri: str, runtime: str = "onnx") -> str:
    """The URI of the ONNX export of a registered version, e.g. ``models:/m-0123...`` (an ``mlflow.onnx`` model):
    the fp32 one for ``runtime`` ``onnx``, the INT8 one for ``onnx-int8``.

    ``mlflow.onnx.load_model(uri)`` gives the ``onnx.ModelProto``; ``mlflow.pyfunc.load_model(uri)`` a runnable
    model; ``mlflow.artifacts.download_artifacts(uri)`` a folder holding ``model.onnx``.
    """
    mv = model_version(model_uri)
    if mv is None:
        raise TrackingError(f"{model_uri}: the ONNX export is found through a registered version (models:/NAME@ALIAS)")
    tag = ONNX_RUNTIMES[runtime]
    uri = mv.tags.get(tag)
    if not uri:
        if runtime == "onnx-int8":
            why = mv.tags.get(ONNX_INT8_REASON_TAG, "not made for this version")
            raise TrackingError(f"{model_uri}: version {mv.version} ships no INT8 export ({why}); use --runtime onnx")
        raise TrackingError(
            f"{model_uri}: version {mv.version} has no ONNX export (tag {tag} not set); use --runtime torch"
        )
    return uri


def _version_classes(model_uri: str) -> list[str] | None:
    mv = model_version(model_uri)
    tag = mv.tags.get(CLASSES_TAG) if mv is not None else None
    return tag.split(",") if tag else None


# ------------------------------------------------------------------------------------------------- loaders
def _torch_classifier(model, channels: int, size: int, classes, source: str) -> Classifier:
    import torch

    def logits(batch: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return model(torch.from_numpy(batch)).numpy()

    return Classifier(logits, channels, size, classes, source, "torch")


def _load_registered(model_uri: str, runtime: str, workdir: Path) -> Classifier:
    import mlflow

    if runtime in ONNX_RUNTIMES:
        onnx_uri = find_onnx(model_uri, runtime)
        try:
            local = Path(mlflow.artifacts.download_artifacts(onnx_uri, dst_path=str(workdir / "onnx")))
        except Exception as exc:
            raise TrackingError(
                f"{onnx_uri} ({runtime} export of {model_uri}): cannot download ({first_line(exc)})"
            ) from None
        source = f"{model_uri} ({runtime} {onnx_uri})"
        return load_onnx(local / ONNX_FILE, source, _version_classes(model_uri), runtime)

    import mlflow.pytorch

    try:
        info = mlflow.models.get_model_info(model_uri)
        model = mlflow.pytorch.load_model(model_uri, map_location="cpu")
    except Exception as exc:
        raise TrackingError(f"{model_uri}: cannot load the model ({first_line(exc)[:200]})") from None
    try:
        shape = info.signature.inputs.to_dict()[0]["tensor-spec"]["shape"]
    except (AttributeError, KeyError, IndexError, TypeError):
        raise TrackingError(f"{model_uri}: the model has no tensor signature to read the image size from") from None
    return _torch_classifier(model, int(shape[1]), int(shape[2]), _version_classes(model_uri), model_uri)


def _load_checkpoint(path: Path, runtime: str, workdir: Path) -> Classifier:
    from transferops.models.io import load_model

    model, ckpt = load_model(path)
    channels, classes = ckpt["in_channels"], list(ckpt["classes"])
    size = int(ckpt.get("input_size") or ckpt["image_size"])  # what the network sees (after the eval crop)
    if runtime == "torch":
        return _torch_classifier(model, channels, size, classes, str(path))
    if runtime == "onnx-int8":  # calibration needs the target's images, which a checkpoint alone does not carry
        raise DataError(
            f"{path}: --runtime onnx-int8 needs a registered version (its INT8 export is made and checked by "
            "`transferops register`) or a quantised .onnx file"
        )
    from transferops.serving.onnx_export import export_onnx

    log.info("exporting %s to ONNX for this run", path)
    onnx_path = export_onnx(model, workdir / ONNX_FILE, channels, size, classes=classes)
    return load_onnx(onnx_path, f"{path} (exported to ONNX)", classes)


def load_classifier(model: str, runtime: str | None = None) -> Classifier:
    """Load ``model`` for ``runtime`` (None: ``onnx`` for a ``.onnx`` file, else ``torch``); a ``.onnx`` file runs
    as it is under either ONNX runtime.

    Downloads and on-the-fly exports go to a temporary folder, removed once the model is in memory.
    """
    if runtime is not None and runtime not in RUNTIMES:
        raise DataError(f"--runtime {runtime!r}: expected one of {', '.join(RUNTIMES)}")
    if model.lower().endswith(".onnx") and not is_mlflow_uri(model):
        if runtime == "torch":
            raise DataError(f"{model}: an ONNX file runs with --runtime onnx or onnx-int8, not torch")
        return load_onnx(Path(model), runtime=runtime or "onnx")
    runtime = runtime or "torch"
    with tempfile.TemporaryDirectory(prefix="transferops-model-") as tmp:
        if is_mlflow_uri(model):
            return _load_registered(model, runtime, Path(tmp))
        return _load_checkpoint(Path(model), runtime, Path(tmp))


# -------------------------------------------------------------------------------------------------- inputs
def _image_files(root: Path) -> list[Path]:
    return sorted(
        p
        for p in root.rglob("*")
        if p.is_file()
        and p.suffix.lower() in IMAGE_SUFFIXES
        and not any(part.startswith(".") or part == "__MACOSX" for part in p.relative_to(root).parts)
    )


def _folder(root: Path, label: str) -> list[tuple[str, Path]]:
    files = _image_files(root)
    if not files:
        raise DataError(f"{label}: no image files (searched recursively for {', '.join(IMAGE_SUFFIXES)})")
    return [(f"{label}/{f.relative_to(root).as_posix()}", f) for f in files]


def collect_images(inputs: Sequence[str], workdir: Path) -> list[tuple[str, Path]]:
    """(name printed in the CSV, local file) for every image the inputs hold, in order.

    Archives are extracted and s3:// prefixes downloaded under ``workdir``; files named on the command line are
    refused unless their suffix is an image's, where a folder's other files are skipped.
    """
    found: list[tuple[str, Path]] = []
    for i, item in enumerate(inputs):
        if item.startswith("s3://"):
            from transferops.data.s3 import download_prefix

            dest = workdir / f"input-{i}"
            dest.mkdir(parents=True)
            download_prefix(item, dest)
            found += _folder(dest, item.rstrip("/"))
            continue
        path = Path(item)
        if path.is_dir():
            found += _folder(path, item.rstrip("/"))
        elif path.is_file() and archive.is_archive(path):
            dest = workdir / f"input-{i}"
            dest.mkdir(parents=True)
            archive.safe_extract(path, dest, archive.Limits.from_config(IngestConfig()))
            found += _folder(dest, item)
        elif path.is_file():
            if path.suffix.lower() not in IMAGE_SUFFIXES:  # before the model loads, with read_image_file's words
                raise DataError(f"{item}: not an image file (expected one of {', '.join(IMAGE_SUFFIXES)})")
            found.append((item, path))
        else:
            raise DataError(f"{item}: no such file or folder")
    return found


# ------------------------------------------------------------------------------------------------- predict
def _softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def predict_rows(
    clf: Classifier, images: Sequence[tuple[str, Path]], batch_size: int = DEFAULT_BATCH_SIZE, progress: bool = False
) -> Iterator[tuple[str, str, float, str, float | None]]:
    """(file, class, confidence, second class, its confidence) per image, reading one batch at a time."""
    from tqdm.auto import tqdm

    names = clf.classes
    with tqdm(total=len(images), unit="img", desc="predict", disable=not progress, file=sys.stderr) as bar:
        for start in range(0, len(images), batch_size):
            chunk = images[start : start + batch_size]
            batch = np.stack([read_image_file(p, clf.image_size, clf.channels, name) for name, p in chunk])
            logits = clf.logits(batch.astype(np.float32) / 255.0)
            if names is not None and logits.shape[1] != len(names):
                raise CheckpointError(f"{clf.source}: {logits.shape[1]} outputs but {len(names)} class names")
            probs = _softmax(logits.astype(np.float64))
            order = np.argsort(-probs, axis=1, kind="stable")
            for (name, _), p, o in zip(chunk, probs, order, strict=True):
                first, second = int(o[0]), (int(o[1]) if len(o) > 1 else None)
                yield (
                    name,
                    _label(names, first),
                    float(p[first]),
                    "" if second is None else _label(names, second),
                    None if second is None else float(p[second]),
                )
            bar.update(len(chunk))


def _label(classes: list[str] | None, k: int) -> str:
    return classes[k] if classes else str(k)


def write_csv(rows: Iterator[tuple], out: TextIO) -> int:
    """The header and one row per image; confidences with 6 decimals. Returns the number of rows."""
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CSV_HEADER)
    n = 0
    for file, predicted, conf, second, conf2 in rows:
        writer.writerow([file, predicted, f"{conf:.6f}", second, "" if conf2 is None else f"{conf2:.6f}"])
        n += 1
    return n


def predict(
    model: str,
    inputs: Sequence[str],
    out: Path | None = None,
    runtime: str | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    progress: bool | None = None,
) -> int:
    """Classify every image in ``inputs`` and write the CSV to ``out`` (stdout when None); returns the count.

    ``out`` is written to a temporary file beside it and renamed on success: a failed run leaves no partial CSV.
    ``progress`` None shows a bar when stderr is a terminal.
    """
    if batch_size < 1:
        raise DataError(f"--batch-size {batch_size}: expected a positive integer")
    progress = sys.stderr.isatty() if progress is None else progress
    with tempfile.TemporaryDirectory(prefix="transferops-predict-") as tmp:
        images = collect_images(inputs, Path(tmp) / "inputs")  # input errors before the (slow) model load
        clf = load_classifier(model, runtime)
        log.info(
            "predict: %d images with %s (%s runtime, %dx%dx%d)",
            len(images),
            clf.source,
            clf.runtime,
            clf.channels,
            clf.image_size,
            clf.image_size,
        )
        rows = predict_rows(clf, images, batch_size, progress)
        if out is None:
            return write_csv(rows, sys.stdout)
        with _atomic_text(Path(out)) as f:
            return write_csv(rows, f)


@contextlib.contextmanager
def _atomic_text(path: Path) -> Iterator[TextIO]:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", newline="") as f:
            yield f
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
