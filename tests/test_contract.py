"""The model contract, checked on every (family, preset) pair of the registry, Mask R-CNN included.

Inference runs each preset as shipped, untrained, with its gates opened (every
candidate kept, a lower mask threshold) so that there is output to check.
Training runs one step of each preset's architecture with a small resize, so
that the 800-pixel presets stay cheap.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from instseg.cropped_masks import CroppedMasks, cropped_masks
from instseg.masks import any_pixel, masks_to_boxes
from instseg.models.build import FAMILIES, build_model, model_config
from instseg.models.fcos.head import FCOSHead

PAIRS = [(name, preset) for name, fam in FAMILIES.items() for preset in fam.presets]
OPEN_GATES = {
    "iou_threshold": 0.0,
    "stability_threshold": 0.0,
    "score_threshold": 0.0,
    "update_threshold": 0.0,
    "mask_threshold": 0.3,
    "detections_per_image": 30,
}
LOSS_NAMES = {
    "loss_class",
    "loss_box",
    "loss_quality",
    "loss_mask",
    "loss_dice",
    "loss_semantic",
    "loss_objectness",
    "loss_rpn_box",
    "loss_iou",
    "loss_giou",
}
# every family names its classification loss loss_class; SAM is class-agnostic and learns masks and IoU
REQUIRED_LOSSES = {"sam": {"loss_mask", "loss_iou"}}
# the official SAM encoders take a 1024-px square: their contract is checked at 128 px and two blocks
SMALL = {"sam": {"image_size": 128, "vit_depth": 2, "global_blocks": (1,), "window": 4, "points_per_side": 4}}
SIZES = [(70, 90), (41, 53)]


def _model(name: str, preset: str, **overrides: object) -> torch.nn.Module:
    fields = {f.name for f in dataclasses.fields(FAMILIES[name].config)}
    small = SMALL.get(name, {}) if preset != "nuclei" else {}
    wanted = {k: v for k, v in {**OPEN_GATES, **small, **overrides}.items() if k in fields}
    torch.manual_seed(0)
    model = build_model(name, model_config(name, preset, wanted), 2)
    if isinstance(getattr(model, "head", None), FCOSHead):
        # an untrained FCOS head predicts boxes of zero size, which YOLACT's box crop would empty
        torch.nn.init.constant_(model.head.box_out.bias, 1.0)
    return model


def test_every_family_is_in_the_registry_with_presets():
    assert set(FAMILIES) == {"mask_rcnn", "solov2", "yolact", "condinst", "mask2former", "sam"}
    assert len(PAIRS) == 20


@pytest.mark.parametrize(("name", "preset"), PAIRS)
def test_inference_output_contract(name, preset):
    model = _model(name, preset).eval()
    with torch.no_grad():
        outputs = model([torch.rand(3, *size) for size in SIZES])
    assert len(outputs) == len(SIZES)
    for out, (h, w) in zip(outputs, SIZES, strict=True):
        n = len(out["scores"])
        assert n > 0, "gates open, an untrained model still outputs candidates"
        assert out["boxes"].shape == (n, 4) and out["boxes"].dtype == torch.float32
        assert out["labels"].shape == (n,) and out["labels"].dtype == torch.int64
        assert out["scores"].dtype == torch.float32
        assert out["masks"].shape == (n, h, w) and out["masks"].dtype == torch.bool
        assert all(v.device.type == "cpu" for v in out.values())
        assert ((out["labels"] >= 1) & (out["labels"] <= 2)).all()
        assert torch.all(out["scores"][:-1] >= out["scores"][1:]), "scores in descending order"
        assert any_pixel(out["masks"]).all(), "no empty masks"
        boxes = out["boxes"]
        assert (boxes >= 0).all() and (boxes[:, 2] <= w + 1e-4).all() and (boxes[:, 3] <= h + 1e-4).all()
        assert (boxes[:, 2:] >= boxes[:, :2]).all()
        if FAMILIES[name].boxes == "mask":
            assert torch.equal(boxes, masks_to_boxes(out["masks"]))


@pytest.mark.parametrize(("name", "preset"), [p for p in PAIRS if p[0] != "sam"])
def test_cropped_masks_are_the_dense_masks_cut_to_boxes(name, preset):
    model = _model(name, preset, min_size=64, max_size=96).eval()  # the 800-pixel presets stay cheap
    images = [torch.rand(3, *size) for size in SIZES]
    with torch.no_grad():
        dense = model(images)
        with cropped_masks():
            cropped = model(images)
    for d, c in zip(dense, cropped, strict=True):
        assert isinstance(c["masks"], CroppedMasks) and len(c["masks"]) == len(d["scores"]) > 0
        assert torch.equal(c["masks"].dense(), d["masks"])
        assert all(torch.equal(c[k], d[k]) for k in ("boxes", "labels", "scores"))


@pytest.mark.parametrize(("name", "preset"), PAIRS)
def test_training_step_returns_finite_named_losses(name, preset):
    model = _model(name, preset, min_size=64, max_size=96).train()
    image = torch.rand(3, 64, 80)
    masks = torch.zeros((2, 64, 80), dtype=torch.uint8)
    masks[0, 8:30, 10:40] = 1
    masks[1, 36:60, 44:70] = 1
    target = {"boxes": torch.tensor([[10.0, 8, 40, 30], [44, 36, 70, 60]]), "labels": torch.tensor([1, 2])}
    flipped = {
        "boxes": torch.tensor([[40.0, 8, 70, 30]]),
        "labels": torch.tensor([2]),
        "masks": masks[:1].flip(-1),
    }
    losses = model([image, image.flip(-1)], [{**target, "masks": masks}, flipped])
    assert set(losses) <= LOSS_NAMES and REQUIRED_LOSSES.get(name, {"loss_class"}) <= set(losses)
    assert all(v.ndim == 0 and torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    assert sum(p.grad.abs().sum() for p in model.parameters() if p.grad is not None) > 0


@pytest.mark.parametrize(("name", "preset"), [p for p in PAIRS if p[0] != "sam"])
def test_every_parameter_is_in_the_loss_graph_with_and_without_objects(name, preset):
    # DistributedDataParallel waits for a gradient of every parameter: a branch left out of the loss on
    # a batch without objects would stop a multi-process run at its first empty crop
    model = _model(name, preset, min_size=64, max_size=96).train()
    image = torch.rand(3, 64, 80)
    empty = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}
    empty["masks"] = torch.zeros((0, 64, 80), dtype=torch.uint8)
    masks = torch.zeros((1, 64, 80), dtype=torch.uint8)
    masks[0, 8:30, 10:40] = 1
    one = {"boxes": torch.tensor([[10.0, 8, 40, 30]]), "labels": torch.tensor([1]), "masks": masks}
    for targets in ([empty, empty], [one, empty]):
        model.zero_grad(set_to_none=True)
        sum(model([image, image], targets).values()).backward()
        missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
        assert not missing, missing[:5]
