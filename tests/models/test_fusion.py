"""The inference copy (BatchNorm folded, channels-last) computes what the trained model computes."""

import copy

import pytest
import torch
from torch import nn

from instseg.models.backbones import build_fpn_backbone
from instseg.models.conv_tower import LevelNorms, PerLevel, conv_tower
from instseg.models.fcos.head import FCOSHead
from instseg.models.fusion import NORMS, fold_batch_norms, inference_model


def _trained_statistics(model: nn.Module) -> nn.Module:
    """Running statistics and affine parameters far from their initial values, as after training."""
    g = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, NORMS):
            n = m.running_mean.numel()
            m.running_mean.copy_(torch.randn(n, generator=g) * 0.5)
            m.running_var.copy_(torch.rand(n, generator=g) * 1.5 + 0.5)
            m.weight.data.copy_(torch.rand(n, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(n, generator=g) * 0.2)
    return model.eval()


@pytest.mark.parametrize(
    ("trunk", "norm"),
    [("resnet18", "bn"), ("resnet18_half", "bn"), ("resnet50", "frozen_bn"), ("mobilenet_v3_small", "bn")],
)
def test_folded_channels_last_backbone_matches_and_keeps_no_batch_norm(trunk, norm):
    backbone = _trained_statistics(build_fpn_backbone(trunk, norm=norm, fpn_channels=16))
    fast = inference_model(backbone, channels_last=True)
    assert not any(isinstance(m, NORMS) for m in fast.modules())
    assert any(isinstance(m, NORMS) for m in backbone.modules()), "the original was changed"
    convs = [m for m in fast.modules() if isinstance(m, nn.Conv2d)]
    assert all(c.weight.is_contiguous(memory_format=torch.channels_last) for c in convs)
    x = torch.rand(1, 3, 96, 96)
    with torch.no_grad():
        want, got = backbone(x), fast(x)
    assert want.keys() == got.keys()
    for k in want:  # float32 rounding, relative to the map's scale (ResNet-50's reach ~150)
        assert float((got[k] - want[k]).abs().max() / want[k].abs().max()) < 1e-5, k


def test_a_tower_shared_by_levels_folds_into_one_convolution_per_level():
    tower = _trained_statistics(conv_tower(8, 8, 2, "bn", levels=3))
    x = torch.rand(1, 8, 12, 12)
    with torch.no_grad():
        want = [tower(x, level) for level in range(3)]
        assert not torch.allclose(want[0], want[1]), "levels must differ for the test to mean anything"
        folded = copy.deepcopy(tower)
        assert fold_batch_norms(folded) == 6
        per_level = [m for m in folded if isinstance(m, PerLevel)]
        assert len(per_level) == 2 and not any(isinstance(m, LevelNorms) for m in per_level)
        for level in range(3):
            torch.testing.assert_close(folded(x, level), want[level], rtol=1e-4, atol=1e-5)


def test_group_norm_and_training_statistics_are_left_alone():
    gn = conv_tower(8, 8, 2, "gn")
    assert fold_batch_norms(gn) == 0
    no_stats = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4, track_running_stats=False))
    assert fold_batch_norms(no_stats) == 0 and isinstance(no_stats[1], nn.BatchNorm2d)


@pytest.mark.parametrize("shared_tower", [False, True])
def test_inference_copy_merges_the_head_outputs_that_read_one_tower(shared_tower):
    head = FCOSHead(8, 3, (8, 16), channels=8, depth=1, norm="bn", extra_outputs=5, shared_tower=shared_tower)
    head = _trained_statistics(head)
    for conv in (head.cls_out, head.box_out, head.ctr_out, head.extra_out):  # outputs far from their init
        nn.init.normal_(conv.weight, std=0.3)
    features = [torch.rand(1, 8, 10, 10), torch.rand(1, 8, 5, 5)]
    fast = inference_model(head, channels_last=True)
    # box (4) + centre-ness (1) + extra (5) read the box tower; with a shared tower the 3 classes too
    assert fast.merged_out.out_channels == 10 + 3 * shared_tower and head.merged_out is None
    with torch.no_grad():
        want, got = head(features), fast(features)
    assert want.keys() == got.keys() == {"cls", "ltrb", "ctr", "extra"}
    for k in want:
        assert want[k].abs().max() > 0.1, k
        torch.testing.assert_close(got[k], want[k], rtol=1e-4, atol=1e-5)
