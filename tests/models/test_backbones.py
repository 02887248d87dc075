"""FPN backbones: MobileNetV3 trunks give strides 4-32 (plus P6, P7) and load local ImageNet weights."""

import pytest
import torch
from safetensors.torch import save_file
from torchvision.models import mobilenet_v3_large, mobilenet_v3_small

from instseg.errors import CheckpointError
from instseg.models.backbones import build_fpn_backbone


@pytest.mark.parametrize("name", ["mobilenet_v3_large", "mobilenet_v3_small"])
def test_mobilenet_fpn_levels_and_strides(name):
    model = build_fpn_backbone(name, "bn", 32, (1, 2, 3, 4), extra="p6p7").eval()
    out = list(model(torch.rand(1, 3, 128, 128)).values())
    assert [o.shape[-1] for o in out] == [32, 16, 8, 4, 2, 1]  # P2-P5 + P6, P7
    assert all(o.shape[1] == 32 for o in out)


def test_mobilenet_weights_load_from_a_local_file(tmp_path):
    reference = mobilenet_v3_small()
    path = tmp_path / "mnv3s.safetensors"
    save_file({k: v.contiguous() for k, v in reference.state_dict().items()}, str(path))  # classifier too
    model = build_fpn_backbone("mobilenet_v3_small", "bn", 32, (2, 3, 4), weights=path)
    assert torch.equal(model.body["0"][0].weight, reference.features[0][0].weight)
    torch.save(mobilenet_v3_large().state_dict(), tmp_path / "large.pth")
    with pytest.raises(CheckpointError, match="not a matching backbone"):
        build_fpn_backbone("mobilenet_v3_small", "bn", 32, (2, 3, 4), weights=tmp_path / "large.pth")


def test_unknown_backbone_and_extra_levels_are_named():
    with pytest.raises(ValueError, match="unknown backbone 'vgg16'"):
        build_fpn_backbone("vgg16")
    with pytest.raises(ValueError, match="unknown extra FPN levels"):
        build_fpn_backbone("resnet18", extra="p6")
