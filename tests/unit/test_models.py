import pytest
import torch

from transferops.errors import CheckpointError, ConfigError
from transferops.models import create_model, load_weights


def test_smallcnn_shapes_and_head_swap():
    m = create_model("smallcnn", 10, in_channels=1, width=8).eval()  # eval: BN statistics stay put
    x = torch.rand(4, 1, 28, 28)
    assert m(x).shape == (4, 10)
    assert m.features(x).shape == (4, 32)
    backbone_before = {k: v.clone() for k, v in m.backbone.state_dict().items()}
    m.reset_head(3)
    assert m(x).shape == (4, 3) and m.num_classes == 3
    assert all(torch.equal(v, m.backbone.state_dict()[k]) for k, v in backbone_before.items())
    assert len(m.stages()) == 3


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v3_small"])
def test_torchvision_backbones_take_grey_input_and_new_head(name):
    m = create_model(name, 7, in_channels=1)
    m.eval()
    out = m(torch.rand(2, 1, 32, 32))
    assert out.shape == (2, 7)
    assert len(m.stages()) >= 4
    assert m.backbone(torch.rand(2, 1, 32, 32)).shape[1] == m.feature_dim


def test_load_weights_keeps_backbone_and_skips_mismatched_head():
    src = create_model("smallcnn", 10, width=8)
    dst = create_model("smallcnn", 4, width=8)
    head_loaded = load_weights(dst, src.state_dict())
    assert head_loaded is False
    assert torch.equal(dst.backbone[0][0].weight, src.backbone[0][0].weight)
    same = create_model("smallcnn", 10, width=8)
    assert load_weights(same, src.state_dict()) is True
    assert torch.equal(same.head.weight, src.head.weight)
    with pytest.raises(CheckpointError, match="do not fit"):
        load_weights(create_model("smallcnn", 10, width=16), src.state_dict())


def test_unknown_model_and_missing_torchvision_weights_are_clear(tmp_path, monkeypatch):
    with pytest.raises(ConfigError, match="unknown model 'resnet9000'"):
        create_model("resnet9000", 10)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(CheckpointError) as e:
        create_model("resnet18", 10, weights="ResNet18_Weights.IMAGENET1K_V1")
    assert str(tmp_path) in str(e.value) and "stage it there" in str(e.value)


def test_torchvision_weights_are_read_from_torch_home(tmp_path, monkeypatch):
    import torchvision.models as tvm

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    ref = tvm.resnet18(weights=None)
    url = tvm.ResNet18_Weights.IMAGENET1K_V1.url
    (tmp_path / "hub" / "checkpoints").mkdir(parents=True)
    torch.save(ref.state_dict(), tmp_path / "hub" / "checkpoints" / url.rsplit("/", 1)[1])
    m = create_model("resnet18", 5, weights="ResNet18_Weights.IMAGENET1K_V1", in_channels=3)
    assert torch.equal(m.backbone.layer1[0].conv1.weight, ref.layer1[0].conv1.weight)
    grey = create_model("resnet18", 5, weights="ResNet18_Weights.IMAGENET1K_V1", in_channels=1)
    assert torch.allclose(grey.backbone.conv1.weight[:, 0], ref.conv1.weight.sum(1))


def test_weights_from_a_transferops_checkpoint_path(tmp_path):
    from transferops.config import Config, ModelConfig
    from transferops.models.io import save_model

    src = create_model("smallcnn", 10, width=8)
    save_model(
        tmp_path / "source.pt", src, Config(model=ModelConfig(width=8)), [str(d) for d in range(10)], [1, 12, 12], {}
    )
    same = create_model("smallcnn", 10, weights=str(tmp_path / "source.pt"), width=8)
    assert all(torch.equal(v, same.state_dict()[k]) for k, v in src.state_dict().items())
    other = create_model("smallcnn", 4, weights=str(tmp_path / "source.pt"), width=8)  # new head, same backbone
    assert torch.equal(other.backbone[0][0].weight, src.backbone[0][0].weight) and other.num_classes == 4
