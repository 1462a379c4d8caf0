"""ONNX export of a :class:`TransferNet`, its check against PyTorch, and its place in MLflow.

The exported graph takes what the PyTorch model takes (float32 images (N, C, S, S) in [0, 1]; normalisation is
inside) and returns logits; the batch axis is dynamic and the opset is pinned (:data:`OPSET`).

Exporter: ``torch.onnx.export(..., dynamo=True)`` (torch.export + onnxscript). In torch 2.14 both exporters
give the same numbers for smallcnn, resnet18 and mobilenet_v3_small (max |diff| to PyTorch below 1e-6), but the
TorchScript one (``dynamo=False``) warns that it is deprecated and will be removed; the dynamo one is the
maintained default. It costs more time (seconds rather than tenths, once per registered model). torch.export
specialises dimensions of size 1, so the example batch has two images.

In MLflow the export is an ``mlflow.onnx`` model logged by :func:`log_onnx` in the register run, beside the
PyTorch model; the registered version points to it with the tag ``transferops.onnx_uri``
(:data:`transferops.serving.runtime.ONNX_URI_TAG`), read by :func:`transferops.serving.predict.find_onnx`::

    uri = find_onnx("models:/transferops-digits@champion")    # "models:/m-<id>"
    mlflow.onnx.load_model(uri)                              # onnx.ModelProto
    mlflow.artifacts.download_artifacts(uri)                 # a folder with model.onnx
    transferops predict --runtime onnx --model models:/transferops-digits@champion images/
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from transferops.errors import DataError, ExportError
from transferops.models.factory import TransferNet
from transferops.serving.runtime import ONNX_CLASSES_KEY, ONNX_FILE, ONNX_URI_TAG, load_onnx, onnx_pip_requirements
from transferops.training.checkpoint import atomic_write_bytes

log = logging.getLogger(__name__)

OPSET = 18
"""ONNX opset of every export: the dynamo exporter's native opset in torch 2.14 (no version conversion), and
supported by onnxruntime >= 1.14."""
INPUT_NAME = "images"
OUTPUT_NAME = "logits"
ATOL = 1e-4
"""Largest |ONNX - PyTorch| logit difference :meth:`OnnxExport.agrees` accepts."""


def export_onnx(
    model: TransferNet,
    path: str | Path,
    in_channels: int,
    image_size: int,
    opset: int = OPSET,
    *,
    classes: Sequence[str] | None = None,
) -> Path:
    """Write ``model`` (in eval mode) as an ONNX file with input ``images`` (batch, C, S, S) and output ``logits``.

    ``classes`` are stored in the file's metadata (``transferops.classes``, a JSON list) so that a lone
    ``.onnx`` file still names its classes. The file is written atomically. Raises :class:`ExportError`.
    """
    path = Path(path)
    device = next(model.parameters()).device
    example = torch.rand(2, in_channels, image_size, image_size, generator=torch.Generator().manual_seed(0))
    was_training = model.training
    model.eval()
    try:
        with _quiet("onnx_ir", "onnxscript", "torch.onnx"):  # INFO lines per optimisation pass otherwise
            program = torch.onnx.export(
                model,
                (example.to(device),),
                dynamo=True,
                opset_version=opset,
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                dynamic_shapes=({0: torch.export.Dim("batch")},),
                optimize=True,
                verbose=False,
            )
        proto = program.model_proto
    except Exception as exc:  # torch.export and onnxscript raise many types, wrapped in torch.onnx's own
        raise ExportError(f"{path}: ONNX export of {_arch(model)} failed ({_root_cause(exc)[:300]})") from None
    finally:
        model.train(was_training)
    if classes is not None:
        entry = proto.metadata_props.add()
        entry.key, entry.value = ONNX_CLASSES_KEY, json.dumps(list(classes))
    proto.producer_name = "transferops"
    atomic_write_bytes(path, lambda f: f.write(proto.SerializeToString()))
    return path


def check_onnx(path: str | Path, model: TransferNet, images: np.ndarray, batch_size: int = 256) -> dict[str, Any]:
    """Run ONNX Runtime (CPU) and PyTorch on the same float32 batches of ``images`` and compare the logits.

    ``images``: (N, C, S, S) float32 in [0, 1] (uint8 is scaled by 1/255). Returns ``max_abs_diff`` (largest
    |logit difference|), ``argmax_agreement`` (fraction of images with the same predicted class) and ``n_images``.
    A missing or corrupt file raises :class:`CheckpointError` with one line naming it.
    """
    clf = load_onnx(Path(path))
    images = _as_float(images)
    expected = (clf.channels, clf.image_size, clf.image_size)
    if images.ndim != 4 or images.shape[1:] != expected or len(images) == 0:
        raise DataError(
            f"{path}: check images have shape {images.shape}, expected (N>0, {', '.join(map(str, expected))})"
        )
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    max_diff, agree = 0.0, 0
    try:
        for start in range(0, len(images), batch_size):
            batch = images[start : start + batch_size]
            ort_logits = clf.logits(batch)
            with torch.no_grad():
                ref = model(torch.from_numpy(batch).to(device)).float().cpu().numpy()
            max_diff = max(max_diff, float(np.abs(ort_logits - ref).max()))
            agree += int((ort_logits.argmax(1) == ref.argmax(1)).sum())
    finally:
        model.train(was_training)
    return {"max_abs_diff": max_diff, "argmax_agreement": agree / len(images), "n_images": len(images)}


@dataclass(frozen=True)
class OnnxExport:
    """What :func:`log_onnx` logged: the ``mlflow.onnx`` model's URI and how well it matches PyTorch."""

    model_uri: str
    max_abs_diff: float
    argmax_agreement: float
    n_images: int
    opset: int
    export_seconds: float

    def agrees(self, atol: float = ATOL) -> bool:
        """Same class for every check image and logits within ``atol``: what a gate should require."""
        return self.argmax_agreement == 1.0 and self.max_abs_diff <= atol

    @property
    def tags(self) -> dict[str, str]:
        """Model version tags: where the export is (:data:`ONNX_URI_TAG`) and how it was checked."""
        return {
            ONNX_URI_TAG: self.model_uri,
            "transferops.onnx_opset": str(self.opset),
            "transferops.onnx_max_abs_diff": repr(self.max_abs_diff),
            "transferops.onnx_argmax_agreement": repr(self.argmax_agreement),
        }


def log_onnx(
    model: TransferNet,
    in_channels: int,
    image_size: int,
    images: np.ndarray,
    classes: Sequence[str] | None = None,
    name: str = "onnx",
    workdir: Path | None = None,
) -> OnnxExport:
    """Export ``model``, check it on ``images`` and log it as an ``mlflow.onnx`` model in the active run.

    Call it inside the run that logs the PyTorch model, then put ``result.tags`` on the registered version
    (``mlflow.register_model(..., tags={**tags, **result.tags})``) so that ``models:/NAME@ALIAS`` finds it
    (:func:`transferops.serving.predict.find_onnx`). The model is logged whatever the check says; ``result.agrees()``
    is what the gate decides on. Raises :class:`ExportError` when the export itself fails.

    ``workdir``: where the ``.onnx`` file is written and left (for a later step, e.g. INT8 quantisation, to
    read); None: a temporary folder, removed.
    """
    import mlflow
    import mlflow.onnx
    import onnx
    from mlflow.models import infer_signature

    with contextlib.ExitStack() as stack:
        if workdir is None:
            workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="transferops-onnx-")))
        path = Path(workdir) / ONNX_FILE
        start = time.perf_counter()
        export_onnx(model, path, in_channels, image_size, classes=classes)
        seconds = time.perf_counter() - start
        check = check_onnx(path, model, images)
        example = _as_float(images[:4])
        signature = infer_signature(example, load_onnx(path).logits(example))
        info = mlflow.onnx.log_model(
            onnx.load(str(path)),
            name=name,
            signature=signature,
            input_example=example,
            pip_requirements=onnx_pip_requirements(),
            save_as_external_data=False,
        )
    result = OnnxExport(info.model_uri, **check, opset=OPSET, export_seconds=seconds)
    log.info(
        "ONNX export (opset %d, %.1f s) logged as %s: max |diff| %.2e, argmax agreement %.4f on %d images",
        OPSET,
        seconds,
        result.model_uri,
        result.max_abs_diff,
        result.argmax_agreement,
        result.n_images,
    )
    return result


@contextlib.contextmanager
def _quiet(*names: str) -> Iterator[None]:
    """Raise the given loggers to WARNING for the duration."""
    loggers = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(max(lg.getEffectiveLevel(), logging.WARNING))
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def _as_float(images: np.ndarray) -> np.ndarray:
    """float32 images in [0, 1]; uint8 ones are scaled by 1/255."""
    images = np.asarray(images)
    if images.dtype == np.uint8:
        return images.astype(np.float32) / np.float32(255.0)
    return np.ascontiguousarray(images, dtype=np.float32)


def _root_cause(exc: BaseException) -> str:
    """The first line of the innermost exception (torch.onnx wraps the real error in a generic one)."""
    while exc.__cause__ is not None:
        exc = exc.__cause__
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc)).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0]}" if text else type(exc).__name__


def _arch(model: TransferNet) -> str:
    return type(model.backbone).__name__
