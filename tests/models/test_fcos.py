"""The FCOS head and output assembly that CondInst and YOLACT share."""

import torch

from instseg.models.conv_tower import LevelNorms
from instseg.models.fcos import FCOSHead, assemble_detections


def _levels(means: list[float], size: int = 32) -> list[torch.Tensor]:
    torch.manual_seed(0)
    return [torch.randn(2, 8, size >> i, size >> i) * (1 + i) + m for i, m in enumerate(means)]


def test_batchnorm_head_keeps_statistics_per_level_so_eval_matches_training():
    head = FCOSHead(8, 3, (8, 16, 32), channels=8, depth=2, norm="bn")
    norms = [m for m in head.modules() if isinstance(m, LevelNorms)]
    assert len(norms) == 4 and all(len(n) == 3 for n in norms)  # 2 towers x 2 convs, 3 levels each
    for m in head.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.momentum = None  # running statistics = the statistics of the one batch below
    features = _levels([0.0, 5.0, -5.0])
    head.train()
    with torch.no_grad():
        trained = head(features)
    means = torch.stack([n.running_mean for n in norms[0]])
    assert (means[1] - means[0]).abs().max() > 1.0  # the levels' statistics are not averaged together
    head.eval()
    with torch.no_grad():
        inferred = head(features)
    for key in ("cls", "ltrb", "ctr"):
        torch.testing.assert_close(inferred[key], trained[key], atol=0.02, rtol=0.02)


def test_groupnorm_head_is_shared_and_keeps_its_parameter_names():
    head = FCOSHead(8, 3, (8, 16, 32), channels=8, depth=2, norm="gn")
    assert not any(isinstance(m, LevelNorms) for m in head.modules())
    assert {"cls_tower.1.weight", "box_tower.4.bias"} <= set(head.state_dict())


def _assemble(rescore: bool) -> dict[str, torch.Tensor]:
    probs = torch.zeros(2, 8, 8)
    probs[0, 1:4, 1:4] = 0.6  # a hesitant mask
    probs[1, 4:7, 4:7] = 0.99  # a confident one
    boxes = torch.tensor([[4.0, 4.0, 16.0, 16.0], [16.0, 16.0, 28.0, 28.0]])
    scores = torch.tensor([0.55, 0.5])
    return assemble_detections(
        lambda idx: probs[idx], boxes, torch.tensor([0, 0]), scores, (32, 32), (32, 32), 0.5, rescore=rescore
    )


def test_rescoring_by_maskness_ranks_confident_masks_first():
    plain = _assemble(False)
    torch.testing.assert_close(plain["scores"], torch.tensor([0.55, 0.5]))
    rescored = _assemble(True)
    torch.testing.assert_close(rescored["scores"], torch.tensor([0.5 * 0.99, 0.55 * 0.6]))
    torch.testing.assert_close(rescored["boxes"], plain["boxes"].flip(0))
    assert rescored["masks"][0, 20, 20] and not rescored["masks"][0, 8, 8]
