"""What every serving path shares: the loaded-model interface, the MLflow tags and ONNX metadata keys that say
where a version's exports are, and ONNX Runtime loading.

A module of its own so that :mod:`~transferops.serving.predict` (which may export a checkpoint on the fly) and
:mod:`~transferops.serving.onnx_export` / :mod:`~transferops.serving.quantize` (which write exports) depend on it
and not on each other. It never imports torch.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from transferops.errors import CheckpointError

CLASSES_TAG = "transferops.classes"
"""Model version tag: the class names, comma-separated, in logit order (set by the register stage)."""
ONNX_URI_TAG = "transferops.onnx_uri"
"""Model version tag: the MLflow URI (``models:/m-<id>``) of the version's ONNX export (an ``mlflow.onnx`` model)."""
ONNX_INT8_URI_TAG = "transferops.onnx_int8_uri"
"""Model version tag: the MLflow URI of the version's INT8 (static, QDQ) ONNX export; absent when the version
ships fp32 only (its INT8 export lost more than ``register.int8_max_drop``)."""
ONNX_INT8_REASON_TAG = "transferops.onnx_int8_reason"
"""Model version tag: why a version ships no INT8 export (set only then)."""
ONNX_CLASSES_KEY = "transferops.classes"
"""ONNX metadata key: the class names as a JSON list (written by :func:`.onnx_export.export_onnx`)."""
ONNX_FILE = "model.onnx"
"""The file name of the graph inside an ``mlflow.onnx`` model's artifacts."""


@dataclass
class Classifier:
    """A loaded model: ``logits(batch)`` maps float32 (N, C, S, S) images in [0, 1] to (N, K) logits."""

    logits: Callable[[np.ndarray], np.ndarray]
    channels: int
    image_size: int
    classes: list[str] | None
    source: str
    runtime: str


# ------------------------------------------------------------------------------------------------- loaders
def load_onnx(
    path: Path, source: str | None = None, classes: list[str] | None = None, runtime: str = "onnx"
) -> Classifier:
    """An ONNX Runtime (CPU) classifier from a ``.onnx`` file; geometry from its input shape."""
    import onnxruntime as ort

    path = Path(path)
    source = source or str(path)
    if not path.is_file():
        raise CheckpointError(f"{source}: ONNX model not found")
    opts = ort.SessionOptions()
    opts.log_severity_level = 3  # errors only: warnings would interleave with the progress bar
    try:
        session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own InvalidProtobuf, Fail, InvalidGraph... for bad files
        raise CheckpointError(f"{source}: not a loadable ONNX model ({first_line(exc)[:200]})") from None
    inp = session.get_inputs()[0]
    shape = inp.shape
    if len(shape) != 4 or not all(isinstance(d, int) for d in shape[1:]) or shape[2] != shape[3]:
        raise CheckpointError(f"{source}: expected an image input (N, C, S, S) with fixed C and S, got {shape}")
    if classes is None:
        meta = session.get_modelmeta().custom_metadata_map.get(ONNX_CLASSES_KEY)
        classes = json.loads(meta) if meta else None
    name = inp.name

    def logits(batch: np.ndarray) -> np.ndarray:
        return session.run(None, {name: batch})[0]

    return Classifier(logits, int(shape[1]), int(shape[2]), classes, source, runtime)


def onnx_pip_requirements() -> list[str]:
    """What serving the ONNX model needs (no torch)."""
    import mlflow
    import onnx
    import onnxruntime

    return [
        f"onnx=={onnx.__version__}",
        f"onnxruntime=={onnxruntime.__version__}",
        f"mlflow=={mlflow.__version__}",
        f"numpy=={np.__version__}",
    ]


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (its type name when it has none)."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
