"""The FCOS head and losses that CondInst and YOLACT share, and the mask assembly every family shares."""

import torch
from torchvision.ops import box_iou

from instseg.models import postprocess
from instseg.models.conv_tower import LevelNorms
from instseg.models.fcos.criterion import detection_losses
from instseg.models.fcos.head import FCOSHead, ltrb_iou, ltrb_to_boxes
from instseg.models.fcos.model import FCOSOutputs
from instseg.models.fcos.targets import PointTargets, centerness
from instseg.models.postprocess import MaskAssembly, assemble_detections


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


def test_shared_separable_head_has_one_depthwise_tower_that_feeds_every_output():
    options = {"extra_outputs": 5, "shared_tower": True, "separable": True}
    head = FCOSHead(8, 3, (8, 16), channels=8, depth=2, norm="bn", **options)
    assert head.box_tower is None
    convs = [m for m in head.cls_tower.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [(c.groups, c.kernel_size) for c in convs] == [(8, (3, 3)), (1, (1, 1))] * 2
    features = [torch.randn(1, 8, 8, 8), torch.randn(1, 8, 4, 4)]
    out = head.eval()(features)
    assert out["cls"].shape == (1, 80, 3) and out["extra"].shape == (1, 80, 5)
    # box, centre-ness and extra outputs read the class tower: changing it changes them
    before = {k: v.clone() for k, v in out.items()}
    with torch.no_grad():
        convs[-1].weight.mul_(2.0)
    after = head(features)
    for key in ("cls", "ltrb", "ctr", "extra"):
        assert not torch.allclose(after[key], before[key]), key


def _assemble(rescore: bool) -> dict[str, torch.Tensor]:
    probs = torch.zeros(2, 8, 8)
    probs[0, 1:4, 1:4] = 0.6  # a hesitant mask
    probs[1, 4:7, 4:7] = 0.99  # a confident one
    boxes = torch.tensor([[4.0, 4.0, 16.0, 16.0], [16.0, 16.0, 28.0, 28.0]])
    scores = torch.tensor([0.55, 0.5])
    assembly = MaskAssembly(0.5, rescore=rescore)
    return assemble_detections(
        lambda idx: probs[idx], boxes, torch.tensor([0, 0]), scores, (32, 32), (32, 32), assembly
    )


def test_rescoring_by_maskness_ranks_confident_masks_first():
    plain = _assemble(False)
    torch.testing.assert_close(plain["scores"], torch.tensor([0.55, 0.5]))
    rescored = _assemble(True)
    torch.testing.assert_close(rescored["scores"], torch.tensor([0.5 * 0.99, 0.55 * 0.6]))
    torch.testing.assert_close(rescored["boxes"], plain["boxes"].flip(0))
    assert rescored["masks"][0, 20, 20] and not rescored["masks"][0, 8, 8]


def test_assembly_cuts_masks_to_their_boxes_orders_by_score_and_drops_empty_ones():
    probs = torch.zeros(3, 8, 8)
    probs[0, 1:7, 1:7] = 0.9  # bigger than its box, which cuts it
    probs[1, 2:5, 2:5] = 0.8
    probs[2, 6:8, 0:2] = 0.9  # entirely outside its box: empty once cut
    boxes = torch.tensor([[8.0, 8.0, 16.0, 16.0], [4.0, 4.0, 24.0, 24.0], [16.0, 0.0, 32.0, 8.0]])
    scores = torch.tensor([0.3, 0.6, 0.9])
    cut = MaskAssembly(0.5, crop_to_boxes=True)
    out = assemble_detections(
        lambda idx: probs[idx], boxes, torch.tensor([0, 1, 0]), scores, (32, 32), (32, 32), cut
    )
    torch.testing.assert_close(out["scores"], torch.tensor([0.6, 0.3]))
    assert out["labels"].tolist() == [2, 1]
    torch.testing.assert_close(out["boxes"], boxes[[1, 0]])
    full = torch.nn.functional.interpolate(probs[None], size=(32, 32), mode="bilinear", align_corners=False)[
        0
    ]
    cut = torch.zeros(32, 32, dtype=torch.bool)
    cut[8:16, 8:16] = True
    assert torch.equal(out["masks"][1], (full[0] > 0.5) & cut)
    assert torch.equal(out["masks"][0], full[1] > 0.5)  # inside its box already


def test_rescored_assembly_reuses_the_first_pass_probabilities_within_the_budget(monkeypatch):
    g = torch.Generator().manual_seed(0)
    probs = torch.rand(150, 8, 8, generator=g)  # 3 chunks of 64
    boxes = torch.rand(150, 2, generator=g) * 16
    boxes = torch.cat([boxes, boxes + 12], 1)
    scores, labels = torch.rand(150, generator=g), torch.zeros(150, dtype=torch.long)
    calls: list[int] = []

    def mask_probs(idx: torch.Tensor) -> torch.Tensor:
        calls.extend(idx.tolist())
        return probs[idx]

    def run() -> dict[str, torch.Tensor]:
        calls.clear()
        assembly = MaskAssembly(0.5, crop_to_boxes=True, rescore=True)
        return assemble_detections(mask_probs, boxes, labels, scores, (32, 32), (40, 40), assembly)

    cached = run()
    assert sorted(calls) == list(range(150))  # each detection's masks computed once
    monkeypatch.setattr(postprocess, "MASK_CACHE_BYTES", 2 * 64 * 8 * 8 * 4)  # the third chunk does not fit
    recomputed = run()
    assert len(calls) == 300
    for key in cached:
        assert torch.equal(cached[key], recomputed[key]), key


def test_ltrb_iou_is_the_iou_of_the_boxes():
    torch.manual_seed(0)
    point = torch.rand(50, 2) * 100
    a, b = torch.rand(50, 4) * 40, torch.rand(50, 4) * 40
    expected = box_iou(ltrb_to_boxes(point, a), ltrb_to_boxes(point, b)).diagonal()
    torch.testing.assert_close(ltrb_iou(a, b), expected)


def test_iou_quality_trains_the_centreness_branch_on_the_predicted_boxes_iou():
    """Two positives: one predicts its box exactly (target 1), one a box twice as wide (target 0.5)."""
    locations = torch.tensor([[10.0, 10.0], [30.0, 10.0], [50.0, 10.0]])
    truth = torch.tensor([[4.0, 4.0, 4.0, 4.0], [2.0, 3.0, 6.0, 5.0], [0.0, 0.0, 0.0, 0.0]])
    predicted = truth.clone()
    predicted[1, [0, 2]] *= 2  # twice as wide, same height
    outputs = FCOSOutputs(
        class_logits=torch.zeros(1, 3, 1),
        ltrb=predicted[None],
        quality_logits=torch.full((1, 3), 1.5),
        mask_params=torch.zeros(1, 3, 0),
        mask_input=torch.zeros(1, 0),
        locations=locations,
        levels=torch.zeros(3, dtype=torch.int64),
    )
    targets = [PointTargets(torch.tensor([0, 1, -1]), truth, centerness(truth).nan_to_num(0))]
    labels = [torch.tensor([1, 1])]
    geometric = detection_losses(outputs, targets, labels)["loss_quality"]
    iou = detection_losses(outputs, targets, labels, quality="iou")["loss_quality"]
    bce = torch.nn.functional.binary_cross_entropy_with_logits
    torch.testing.assert_close(iou, bce(torch.full((2,), 1.5), torch.tensor([1.0, 0.5]), reduction="sum") / 2)
    assert not torch.isclose(geometric, iou)
