"""ONNX export: the graph computes what the PyTorch model computes, for any batch size, and bad files fail clearly."""

import numpy as np
import onnx
import pytest
import torch

from tests.unit.helpers import brightness_images, brightness_model
from transferops.errors import CheckpointError, ExportError
from transferops.models import create_model
from transferops.serving.onnx_export import INPUT_NAME, OPSET, check_onnx, export_onnx
from transferops.serving.runtime import load_onnx


@pytest.mark.parametrize(
    ("name", "channels", "size"),
    [("smallcnn", 1, 12), ("smallcnn", 3, 16), ("resnet18", 3, 32)],
)
def test_export_agrees_with_pytorch_for_batches_of_1_and_5(name, channels, size, tmp_path):
    torch.manual_seed(0)
    model = create_model(name, 4, in_channels=channels, width=8)  # in train mode: the export must use eval
    path = export_onnx(model, tmp_path / "model.onnx", channels, size, classes=["a", "b", "c", "d"])
    assert model.training  # mode restored

    proto = onnx.load(str(path))
    onnx.checker.check_model(proto)
    assert [(o.domain, o.version) for o in proto.opset_import if o.domain in ("", "ai.onnx")] == [("", OPSET)]
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    assert proto.graph.input[0].name == INPUT_NAME
    assert dims[0].dim_param and not dims[0].dim_value  # symbolic batch
    assert [d.dim_value for d in dims[1:]] == [channels, size, size]
    assert load_onnx(path).classes == ["a", "b", "c", "d"]

    images = np.random.default_rng(1).random((5, channels, size, size), dtype=np.float32)
    with torch.no_grad():
        logits = model.eval()(torch.from_numpy(images)).numpy()
    model.train()
    assert logits.std() > 1e-3  # the outputs vary, so agreeing within 1e-4 means something
    for batch in (1, 5):  # the same file, two batch sizes
        report = check_onnx(path, model, images[:batch])
        assert report["n_images"] == batch
        assert report["max_abs_diff"] < 1e-4, report
        assert report["argmax_agreement"] == 1.0, report
    assert model.training


def test_check_detects_a_model_that_disagrees(tmp_path):
    model = brightness_model()
    images, labels = brightness_images(30)
    path = export_onnx(model, tmp_path / "model.onnx", 1, 12)
    assert check_onnx(path, model, images)["argmax_agreement"] == 1.0
    with torch.no_grad():
        model.head.bias[0] += 100.0  # PyTorch now says class 0 for everything; the exported file does not
    report = check_onnx(path, model, images)
    assert report["max_abs_diff"] == pytest.approx(100.0, abs=1e-3)
    assert report["argmax_agreement"] == pytest.approx(np.mean(labels == 0))


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """(model, bytes of its ONNX export): one export shared by the tests that damage a copy."""
    model = create_model("smallcnn", 3, in_channels=1, width=8)
    path = export_onnx(model, tmp_path_factory.mktemp("onnx") / "model.onnx", 1, 12)
    return model, path.read_bytes()


@pytest.mark.parametrize("damage", ["garbage", "truncated", "missing"])
def test_a_corrupt_onnx_file_gives_one_line_naming_it(damage, exported, tmp_path):
    model, data = exported
    path = tmp_path / "model.onnx"
    path.write_bytes(data)
    assert check_onnx(path, model, np.zeros((2, 1, 12, 12), np.float32))["max_abs_diff"] < 1e-4  # intact: fine
    if damage == "garbage":
        path.write_bytes(b"not an onnx model\n" * 50)
    elif damage == "truncated":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    else:
        path.unlink()
    with pytest.raises(CheckpointError) as err:
        check_onnx(path, model, np.zeros((2, 1, 12, 12), np.float32))
    message = str(err.value)
    assert "\n" not in message and message.startswith(f"{path}: ")
    assert ("not found" if damage == "missing" else "not a loadable ONNX model") in message


def test_a_failed_export_gives_one_line_naming_the_file(exported, tmp_path):
    model, _ = exported
    with pytest.raises(ExportError) as err:
        export_onnx(model, tmp_path / "model.onnx", 3, 12)  # the model takes 1 channel
    assert "\n" not in str(err.value) and str(err.value).startswith(f"{tmp_path / 'model.onnx'}: ONNX export of")
    assert not (tmp_path / "model.onnx").exists()
