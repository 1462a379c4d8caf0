"""INT8 export: static post-training quantisation of the fp32 ONNX export with ONNX Runtime, and its check.

Static (not dynamic) quantisation: activations get fixed scales from a calibration pass, so every convolution
runs as an integer kernel. The graph is written in QDQ form (QuantizeLinear/DequantizeLinear pairs around
each quantised op, signed 8-bit activations and weights, per-channel weight scales), which ONNX Runtime's
CPU provider fuses into integer kernels and other runtimes (TensorRT, OpenVINO) also read.

Calibration images are target images the model trained from (labelled and unlabelled splits), never test
images: the test split then measures the quantised model as it will meet new data. The check runs both
files on the whole test split in one process and reports accuracy of each, the drop, argmax agreement, file
sizes and CPU latency at batch 1 and 64 (:func:`compare`). The register stage ships the INT8 file only when
the drop is at most ``register.int8_max_drop`` and the argmax agreement with fp32 at least
``register.int8_min_agreement`` (:func:`log_int8`).
"""

from __future__ import annotations

import logging
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from transferops.errors import ExportError
from transferops.serving.runtime import (
    ONNX_FILE,
    ONNX_INT8_REASON_TAG,
    ONNX_INT8_URI_TAG,
    Classifier,
    first_line,
    load_onnx,
    onnx_pip_requirements,
)
from transferops.training.checkpoint import atomic_write_bytes

log = logging.getLogger(__name__)

Images = Any
"""float32 images (N, C, S, S) in [0, 1]: an array, or a lazy sequence that gives arrays for slices."""

CALIBRATION_BATCH = 32
"""Images per calibration batch (the min/max statistics do not depend on it; memory does)."""
CHECK_BATCH = 256
"""Images per call when fp32 and INT8 are compared."""
LATENCY_BATCHES = (1, 64)
"""Batch sizes the CPU latency is measured at: one request, and a batch job."""
LATENCY_REPEATS = {1: 50, 64: 10}
"""Timed runs per batch size (after one warm-up); the median is reported."""


def _reader(input_name: str, images: np.ndarray, batch_size: int = CALIBRATION_BATCH):
    """An ONNX Runtime ``CalibrationDataReader`` over ``images``, a batch at a time (one pass: MinMax)."""
    from onnxruntime.quantization import CalibrationDataReader

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter(range(0, len(images), batch_size))

        def get_next(self) -> dict[str, np.ndarray] | None:
            start = next(self.batches, None)
            if start is None:
                return None
            return {input_name: np.ascontiguousarray(images[start : start + batch_size], dtype=np.float32)}

    return Reader()


def quantize_onnx(fp32_path: str | Path, int8_path: str | Path, calibration: np.ndarray) -> Path:
    """Write the INT8 (QDQ, S8S8, per-channel) version of ``fp32_path`` to ``int8_path``, calibrated on
    ``calibration`` (float32 (N, C, S, S) in [0, 1], as the model takes them). The file keeps the fp32 file's
    metadata (class names) and is written atomically. Raises :class:`ExportError` naming the file."""
    import onnx
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    fp32_path, int8_path = Path(fp32_path), Path(int8_path)
    if len(calibration) == 0:
        raise ExportError(f"{int8_path}: no calibration images (the target has no labelled or unlabelled split)")
    source = onnx.load(str(fp32_path))
    with tempfile.TemporaryDirectory(prefix="transferops-int8-") as tmp:
        prepared, out = Path(tmp) / "prepared.onnx", Path(tmp) / ONNX_FILE
        try:
            # shape inference + graph optimisation first, as ONNX Runtime's quantisation guide asks
            quant_pre_process(str(fp32_path), str(prepared), skip_symbolic_shape=True)
            quantize_static(
                str(prepared),
                str(out),
                _reader(source.graph.input[0].name, calibration),
                quant_format=QuantFormat.QDQ,
                per_channel=True,
                activation_type=QuantType.QInt8,
                weight_type=QuantType.QInt8,
            )
        except Exception as exc:  # onnxruntime raises its own and plain ones (ValueError, RuntimeError...)
            raise ExportError(
                f"{int8_path}: INT8 quantisation of {fp32_path} failed ({first_line(exc)[:300]})"
            ) from None
        proto = onnx.load(str(out))
    have = {p.key for p in proto.metadata_props}
    for entry in source.metadata_props:
        if entry.key not in have:
            proto.metadata_props.add(key=entry.key, value=entry.value)
    proto.producer_name = source.producer_name or proto.producer_name
    atomic_write_bytes(int8_path, lambda f: f.write(proto.SerializeToString()))
    return int8_path


def latency_ms(clf: Classifier, images: Images, batch: int, repeats: int) -> float:
    """Median wall time (milliseconds) of one ``batch``-image call, after a warm-up call."""
    first = np.asarray(images[:batch], dtype=np.float32)
    x = np.ascontiguousarray(np.concatenate([first] * int(np.ceil(batch / len(first))))[:batch])
    clf.logits(x)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        clf.logits(x)
        times.append(time.perf_counter() - start)
    return 1000.0 * statistics.median(times)


def compare(fp32_path: str | Path, int8_path: str | Path, images: Images, labels: np.ndarray) -> dict[str, float]:
    """fp32 against INT8 on the same labelled images, in one process: ``fp32_accuracy``, ``int8_accuracy``,
    ``accuracy_drop`` (fp32 - INT8, in [-1, 1]), ``argmax_agreement``, ``fp32_bytes``, ``int8_bytes`` and, per
    batch size b of :data:`LATENCY_BATCHES`, ``fp32_latency_ms_b<b>`` / ``int8_latency_ms_b<b>`` (CPU).

    ``images``: float32 (N, C, S, S) in [0, 1], or anything that gives such batches for slices and has a
    length (a large test split is then read a batch at a time, never held whole)."""
    labels = np.asarray(labels)
    fp32, int8 = load_onnx(Path(fp32_path)), load_onnx(Path(int8_path), runtime="onnx-int8")
    p32, p8 = [], []
    for start in range(0, len(labels), CHECK_BATCH):
        x = np.ascontiguousarray(images[start : start + CHECK_BATCH], dtype=np.float32)
        p32.append(fp32.logits(x).argmax(1))
        p8.append(int8.logits(x).argmax(1))
    p32, p8 = np.concatenate(p32), np.concatenate(p8)
    acc32, acc8 = float((p32 == labels).mean()), float((p8 == labels).mean())
    out: dict[str, float] = {
        "fp32_accuracy": acc32,
        "int8_accuracy": acc8,
        "accuracy_drop": acc32 - acc8,
        "argmax_agreement": float((p32 == p8).mean()),
        "fp32_bytes": float(Path(fp32_path).stat().st_size),
        "int8_bytes": float(Path(int8_path).stat().st_size),
        "n_images": float(len(labels)),
    }
    for b in LATENCY_BATCHES:
        out[f"fp32_latency_ms_b{b}"] = latency_ms(fp32, images, b, LATENCY_REPEATS[b])
        out[f"int8_latency_ms_b{b}"] = latency_ms(int8, images, b, LATENCY_REPEATS[b])
    return out


@dataclass(frozen=True)
class Int8Export:
    """What :func:`log_int8` measured and decided; ``model_uri`` is None when the INT8 file was not shipped."""

    fp32_accuracy: float
    int8_accuracy: float
    accuracy_drop: float
    argmax_agreement: float
    fp32_bytes: float
    int8_bytes: float
    n_images: float
    fp32_latency_ms_b1: float
    int8_latency_ms_b1: float
    fp32_latency_ms_b64: float
    int8_latency_ms_b64: float
    max_drop: float
    min_agreement: float
    n_calibration: int
    model_uri: str | None = None

    @property
    def shipped(self) -> bool:
        return self.model_uri is not None

    @property
    def within_budget(self) -> bool:
        """The accuracy drop is at most ``max_drop`` and the agreement at least ``min_agreement`` (a tiny
        tolerance absorbs float rounding of the means)."""
        return self.accuracy_drop <= self.max_drop + 1e-9 and self.argmax_agreement >= self.min_agreement - 1e-9

    @property
    def reason(self) -> str:
        """One sentence: shipped or not, and the figures that decided it."""
        figures = (
            f"INT8 accuracy {self.int8_accuracy:.2%} against fp32 {self.fp32_accuracy:.2%} on {int(self.n_images)} "
            f"test images (drop {100 * self.accuracy_drop:+.2f} points, register.int8_max_drop "
            f"{100 * self.max_drop:.2f}; same class as fp32 on {self.argmax_agreement:.2%}, "
            f"register.int8_min_agreement {self.min_agreement:.2%})"
        )
        return f"{figures}: shipped" if self.within_budget else f"{figures}: not shipped, fp32 only"

    @property
    def metrics(self) -> dict[str, float]:
        """Run metrics, prefixed ``int8_`` (what the register run shows beside ``onnx_max_abs_diff``)."""
        keep = {
            k: v
            for k, v in asdict(self).items()
            if isinstance(v, int | float) and k not in ("max_drop", "min_agreement")
        }
        return {k if k.startswith(("int8_", "fp32_")) else f"int8_{k}": float(v) for k, v in keep.items()} | {
            "int8_shipped": float(self.shipped)
        }

    @property
    def tags(self) -> dict[str, str]:
        """Model version tags: the INT8 export's URI (:data:`ONNX_INT8_URI_TAG`) when shipped, else the reason,
        and the figures either way."""
        tags = {
            "transferops.onnx_int8_accuracy_drop": repr(self.accuracy_drop),
            "transferops.onnx_int8_argmax_agreement": repr(self.argmax_agreement),
            "transferops.onnx_int8_bytes": str(int(self.int8_bytes)),
        }
        if self.shipped:
            tags[ONNX_INT8_URI_TAG] = self.model_uri
        else:
            tags[ONNX_INT8_REASON_TAG] = self.reason
        return tags

    def card(self) -> list[str]:
        """The model card's section (markdown lines)."""
        mb = 1024 * 1024
        rows = [
            ("test accuracy", f"{self.fp32_accuracy:.2%}", f"{self.int8_accuracy:.2%}"),
            ("argmax agreement with fp32", "-", f"{self.argmax_agreement:.2%}"),
            ("file size", f"{self.fp32_bytes / mb:.2f} MiB", f"{self.int8_bytes / mb:.2f} MiB"),
            ("CPU latency, batch 1", f"{self.fp32_latency_ms_b1:.2f} ms", f"{self.int8_latency_ms_b1:.2f} ms"),
            ("CPU latency, batch 64", f"{self.fp32_latency_ms_b64:.2f} ms", f"{self.int8_latency_ms_b64:.2f} ms"),
        ]
        verdict = "Shipped: `transferops predict --runtime onnx-int8` runs it."
        if not self.shipped:
            why = []
            if self.accuracy_drop > self.max_drop + 1e-9:
                why.append(
                    f"loses {100 * self.accuracy_drop:.2f} points, more than register.int8_max_drop "
                    f"({100 * self.max_drop:.2f})"
                )
            if self.argmax_agreement < self.min_agreement - 1e-9:
                why.append(
                    f"gives fp32's class on {self.argmax_agreement:.2%} of the test images, fewer than "
                    f"register.int8_min_agreement ({self.min_agreement:.2%})"
                )
            verdict = f"**Not shipped**: the INT8 export {' and '.join(why)}; this version serves fp32 only."
        return [
            "## INT8 export",
            f"Static post-training quantisation (ONNX Runtime, QDQ, per-channel), calibrated on "
            f"{self.n_calibration} target training images (never test), checked on the test split. {verdict}",
            "",
            "| | fp32 ONNX | INT8 ONNX |",
            "|---|---|---|",
            *(f"| {a} | {b} | {c} |" for a, b, c in rows),
        ]


def log_int8(
    fp32_path: str | Path,
    calibration: np.ndarray,
    images: Images,
    labels: np.ndarray,
    max_drop: float,
    min_agreement: float,
    signature_example: np.ndarray | None = None,
    name: str = "onnx_int8",
) -> Int8Export:
    """Quantise ``fp32_path``, compare it with fp32 on ``images``/``labels`` (the test split) and, when the drop
    is at most ``max_drop`` and the argmax agreement at least ``min_agreement``, log it as an ``mlflow.onnx``
    model in the active run (beside the fp32 one).

    Put ``result.tags`` on the registered version: :func:`transferops.serving.predict.find_onnx` finds the INT8
    export by them (``--runtime onnx-int8``), and a version without it says why.
    """
    with tempfile.TemporaryDirectory(prefix="transferops-int8-") as tmp:
        int8_path = quantize_onnx(fp32_path, Path(tmp) / ONNX_FILE, calibration)
        figures = compare(fp32_path, int8_path, images, labels)
        result = Int8Export(**figures, max_drop=max_drop, min_agreement=min_agreement, n_calibration=len(calibration))
        if result.within_budget:
            result = _log(
                int8_path, result, signature_example if signature_example is not None else np.asarray(images[:4]), name
            )
    log.info(
        "INT8 export: %s; %.2f -> %.2f MiB, batch-1 latency %.2f -> %.2f ms, agreement %.4f",
        result.reason,
        result.fp32_bytes / 2**20,
        result.int8_bytes / 2**20,
        result.fp32_latency_ms_b1,
        result.int8_latency_ms_b1,
        result.argmax_agreement,
    )
    return result


def _log(path: Path, result: Int8Export, example: np.ndarray, name: str) -> Int8Export:
    import mlflow.onnx
    import onnx
    from mlflow.models import infer_signature

    example = np.ascontiguousarray(example, dtype=np.float32)
    signature = infer_signature(example, load_onnx(path).logits(example))
    info = mlflow.onnx.log_model(
        onnx.load(str(path)),
        name=name,
        signature=signature,
        input_example=example,
        pip_requirements=onnx_pip_requirements(),
        save_as_external_data=False,
    )
    return Int8Export(**{**asdict(result), "model_uri": info.model_uri})
