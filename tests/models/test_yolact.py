"""YOLACT: Fast vs sequential NMS, the box-normalised mask loss, the contract, overfitting one image."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torchvision.ops import batched_nms, box_iou

from instseg.masks import box_masks
from instseg.models.build import build_model, model_config
from instseg.models.nms import fast_nms_boxes
from tests.models.family_checks import (
    POINT_REFINE,
    assert_output_contract,
    assert_overfits_scene,
    assert_point_head_trains,
    scene,
)

SMALL = {
    "fpn_channels": 32,
    "head_channels": 32,
    "head_convs": 2,
    "proto_channels": 32,
    "proto_convs": 2,
    "first_level": 2,
    "scale": 1.0,
    "size_bounds": [16, 32, 64, 128],
    "detections_per_image": 50,
}


def test_fast_nms_lets_suppressed_boxes_suppress():
    boxes = torch.tensor([[0.0, 0, 10, 10], [3, 0, 13, 10], [6, 0, 16, 10], [50, 50, 60, 60]])
    labels = torch.tensor([1, 1, 1, 1])
    # sequential NMS keeps box 2 (box 1, its only big overlap, was already removed); Fast NMS does not
    assert batched_nms(boxes, torch.tensor([0.9, 0.8, 0.7, 0.6]), labels, 0.4).tolist() == [0, 2, 3]
    assert fast_nms_boxes(boxes, labels, 0.4).tolist() == [True, False, False, True]
    # with box 1 in another class, nothing of class 1 overlaps box 2 enough
    assert fast_nms_boxes(boxes, torch.tensor([1, 2, 1, 1]), 0.4).tolist() == [True, True, True, True]


def test_fast_nms_in_blocks_of_neighbours_equals_the_full_matrix():
    g = torch.Generator().manual_seed(0)
    centres = torch.rand(1200, 2, generator=g) * 500  # dense small boxes, some duplicates, a few large
    sizes = torch.rand(1200, 2, generator=g) * 20 + 4
    sizes[::97] *= 15
    boxes = torch.cat([centres - sizes / 2, centres + sizes / 2], 1)
    boxes = torch.cat([boxes, boxes[:300] + torch.rand(300, 4, generator=g)])
    boxes[5, 3] = boxes[5, 1]  # degenerate: zero height, twice (zero union: IoU 0, not NaN)
    boxes[7] = boxes[5]
    labels = torch.randint(0, 3, (len(boxes),), generator=g)
    labels[7] = labels[5]
    full = box_iou(boxes, boxes).nan_to_num(0.0).triu(1) * (labels[:, None] == labels[None, :])
    expected = full.amax(0) <= 0.5
    assert 0 < int((~expected).sum()) < len(boxes) // 2
    assert torch.equal(fast_nms_boxes(boxes, labels, 0.5, block=128), expected)
    assert torch.equal(fast_nms_boxes(boxes, labels, 0.5, block=len(boxes)), expected)


def test_fast_nms_in_blocks_keeps_a_block_of_zero_height_boxes():
    """An untrained head predicts boxes of zero size: a block of them meets no block, itself included."""
    boxes = torch.zeros(300, 4)
    boxes[:, 2] = torch.arange(300.0)  # zero height, growing width: every union is zero or IoU 0
    kept = fast_nms_boxes(boxes, torch.zeros(300, dtype=torch.long), 0.5, block=128)
    assert kept.all()


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 12), st.integers(0, 2**31 - 1), st.floats(0.2, 0.8))
def test_fast_nms_keeps_a_subset_of_sequential_nms(n, seed, threshold):
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand((n, 2), generator=g) * 30
    boxes = torch.cat([xy, xy + 5 + torch.rand((n, 2), generator=g) * 20], 1)
    labels = torch.randint(0, 2, (n,), generator=g)
    scores = torch.sort(torch.rand(n, generator=g), descending=True).values
    fast = set(torch.nonzero(fast_nms_boxes(boxes, labels, threshold)).flatten().tolist())
    sequential = set(batched_nms(boxes, scores, labels, threshold).tolist())
    assert 0 in fast and fast <= sequential


def test_box_masks_take_cells_whose_centre_is_inside():
    m = box_masks(torch.tensor([[4.0, 0.0, 12.0, 6.0]]), (3, 4), stride=4)
    # cell centres 2, 6, 10, 14: x in [4, 12) -> columns 1, 2; y in [0, 6) -> rows 0 (2) and 1 (6 excluded)
    assert m[0].int().tolist() == [[0, 1, 1, 0], [0, 0, 0, 0], [0, 0, 0, 0]]


def test_mask_loss_weighs_small_and_large_objects_alike():
    """BCE inside the box is divided by the box area, so a 10x area object does not count 10x."""
    torch.manual_seed(0)
    model = build_model("yolact", model_config("yolact", "default", SMALL), 1).train()
    image = torch.rand(3, 64, 64)
    losses = []
    for side in (8, 32):
        masks = torch.zeros((1, 64, 64), dtype=torch.uint8)
        masks[0, 16 : 16 + side, 16 : 16 + side] = 1
        target = {"boxes": torch.tensor([[16.0, 16, 16 + side, 16 + side]]), "labels": torch.tensor([1])}
        losses.append(model([image], [{**target, "masks": masks}])["loss_mask"].item())
    assert 0.5 < losses[0] / losses[1] < 2.0, losses


@pytest.mark.parametrize("nms", ["fast", "standard"])
def test_output_contract_in_input_coordinates(nms):
    assert_output_contract("yolact", {**SMALL, "nms": nms, "score_threshold": 0.0, "mask_threshold": 0.3})


def test_semantic_auxiliary_loss_and_mobile_backbone():
    model = build_model("yolact", model_config("yolact", "realtime", {"semantic_weight": 1.0}), 2).train()
    image, target = scene()
    losses = model([image], [target])
    assert set(losses) == {"loss_class", "loss_box", "loss_quality", "loss_mask", "loss_semantic"}
    assert all(torch.isfinite(v) for v in losses.values())


def test_overfits_one_image():
    assert_overfits_scene("yolact", SMALL)


def test_semantic_target_is_the_union_of_each_class_masks():
    model = build_model("yolact", model_config("yolact", "default", {**SMALL, "semantic_weight": 1.0}), 2)
    masks = torch.zeros((3, 16, 16), dtype=torch.uint8)
    masks[0, :4, :4] = masks[1, 8:, 8:] = masks[2, :4, 8:] = 1
    target = {"masks": masks, "labels": torch.tensor([1, 1, 2])}
    union = torch.zeros((1, 2, 4, 4))
    union[0, 0, 0, 0] = union[0, 0, 2:, 2:] = union[0, 1, 0, 2:] = 1  # 1/4 resolution (first_level 2)
    logits = torch.where(union > 0, 20.0, -20.0)
    assert model.criterion.masks.semantic_loss(logits, [target]).item() < 1e-6
    assert model.criterion.masks.semantic_loss(-logits, [target]).item() > 1.0


def test_point_refinement_trains_keeps_the_contract_and_still_overfits():
    """The point head learns on the box-cut masks inference refines, and refined masks still fit."""
    assert_point_head_trains("yolact", SMALL)
    assert_output_contract("yolact", {**SMALL, **POINT_REFINE, "score_threshold": 0.0, "mask_threshold": 0.3})
    assert_overfits_scene("yolact", {**SMALL, **POINT_REFINE})
