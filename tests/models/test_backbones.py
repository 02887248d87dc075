"""FPN backbones: mobile trunks give strides 4-32 (plus P6, P7) and load local weights."""

import pytest
import torch
from safetensors.torch import save_file
from torchvision.models import mobilenet_v3_large, mobilenet_v3_small

from instseg.errors import CheckpointError
from instseg.models.backbones import build_fpn_backbone, build_trunk, resnet18_half


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


def test_half_width_resnet18_has_half_the_channels_and_a_quarter_of_the_weights():
    half, _, channels = build_trunk("resnet18_half", "bn")
    full, _, full_channels = build_trunk("resnet18", "bn")
    assert channels == [32, 64, 128, 256] and full_channels == [64, 128, 256, 512]
    trunk_params = [
        sum(p.numel() for n, p in m.named_parameters() if not n.startswith("fc")) for m in (half, full)
    ]
    assert 0.24 < trunk_params[0] / trunk_params[1] < 0.26
    conv = half.layer1[0].conv1.weight  # torchvision's kaiming init (fan_out), not nn.Conv2d's default
    assert abs(float(conv.detach().std()) / (2 / (32 * 9)) ** 0.5 - 1) < 0.15
    model = build_fpn_backbone("resnet18_half", "bn", 24, (1, 2, 3, 4)).eval()
    out = list(model(torch.rand(1, 3, 128, 128)).values())
    assert [tuple(o.shape[1:]) for o in out] == [
        (24, 32, 32),
        (24, 16, 16),
        (24, 8, 8),
        (24, 4, 4),
        (24, 2, 2),
    ]


def test_half_width_resnet18_loads_its_own_local_weights_and_no_published_ones(tmp_path):
    reference = resnet18_half()
    torch.save(reference.state_dict(), tmp_path / "half.pth")
    model = build_fpn_backbone("resnet18_half", "bn", 16, (2, 3, 4), weights=tmp_path / "half.pth")
    assert torch.equal(model.body.layer4[1].conv2.weight, reference.layer4[1].conv2.weight)
    with pytest.raises(ValueError, match="no published weights"):
        resnet18_half(weights="IMAGENET1K_V1")
