"""INT8 export: calibrated on the right images it keeps the fp32 answers; calibrated on the wrong ones the check
measures the loss and the export is not shipped."""

import numpy as np
import onnx
import pytest

from tests.unit.helpers import brightness_images, brightness_model
from transferops.serving.onnx_export import export_onnx
from transferops.serving.quantize import compare, log_int8, quantize_onnx
from transferops.serving.runtime import ONNX_INT8_REASON_TAG, ONNX_INT8_URI_TAG, load_onnx


@pytest.fixture(scope="module")
def fp32(tmp_path_factory):
    path = tmp_path_factory.mktemp("int8") / "model.onnx"
    return export_onnx(brightness_model(), path, 1, 12, classes=["dark", "mid", "bright"])


def _floats(images: np.ndarray) -> np.ndarray:
    return images.astype(np.float32) / 255.0


def test_int8_calibrated_on_training_images_agrees_with_fp32(fp32, tmp_path):
    calibration, _ = brightness_images(64, seed=5)  # other images than the ones checked
    int8 = quantize_onnx(fp32, tmp_path / "int8.onnx", _floats(calibration))
    ops = {n.op_type for n in onnx.load(str(int8)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops  # QDQ form
    assert load_onnx(int8).classes == ["dark", "mid", "bright"]  # metadata kept

    images, labels = brightness_images(300, seed=9)
    report = compare(fp32, int8, _floats(images), labels)
    assert report["fp32_accuracy"] == 1.0 and report["accuracy_drop"] == 0.0
    assert report["argmax_agreement"] >= 0.99
    assert report["int8_bytes"] < 0.6 * report["fp32_bytes"]  # int8 weights: about a quarter, plus scales
    for b in (1, 64):
        assert 0.0 < report[f"int8_latency_ms_b{b}"] < 1000.0 and 0.0 < report[f"fp32_latency_ms_b{b}"] < 1000.0


def test_a_lossy_int8_export_is_measured_and_not_shipped(fp32):
    # calibrated on black images only, the activation ranges clip everything brighter
    images, labels = brightness_images(300, seed=9)
    result = log_int8(fp32, np.zeros((32, 1, 12, 12), np.float32), _floats(images), labels, 0.01, 0.99)
    assert result.accuracy_drop == pytest.approx(1.0 - result.int8_accuracy) and result.accuracy_drop > 0.2
    assert result.argmax_agreement == pytest.approx(result.int8_accuracy)  # fp32 is right on every image
    assert not result.shipped and result.model_uri is None  # nothing logged: no MLflow run is active here
    assert ONNX_INT8_URI_TAG not in result.tags and "not shipped" in result.tags[ONNX_INT8_REASON_TAG]
    assert result.metrics["int8_shipped"] == 0.0 and result.metrics["int8_accuracy_drop"] > 0.2
    card = "\n".join(result.card())
    assert "**Not shipped**" in card and f"{100 * result.accuracy_drop:.2f} points" in card
