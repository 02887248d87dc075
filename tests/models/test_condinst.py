"""CondInst: FCOS assignment, the batched dynamic mask head, the output contract, overfitting one image."""

import pytest
import torch
import torch.nn.functional as F

from instseg.models.build import build_model, model_config
from instseg.models.dynamic_mask_head import (
    blob_parameters,
    dynamic_mask_logits,
    layer_shapes,
    num_parameters,
)
from instseg.models.fcos.targets import assign_points, centerness, feature_locations
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
    "mask_branch_channels": 32,
    "mask_branch_convs": 2,
    "first_level": 2,
    "scale": 1.0,
    "size_bounds": [16, 32, 64, 128],
    "detections_per_image": 50,
}


def test_paper_dynamic_head_has_169_parameters():
    assert num_parameters(8, 8, 3) == 169
    assert layer_shapes(8, 8, 3) == [(8, 10), (8, 8), (1, 8)]


def test_dynamic_head_equals_per_instance_convolutions():
    """The batched form against the definition: three 1x1 convs on [features; relative coordinates]."""
    torch.manual_seed(0)
    n, c, h, w, stride = 5, 8, 6, 7, 8
    params = torch.randn(n, num_parameters(c, 8, 3))
    features = torch.randn(c, h, w)
    pixels = feature_locations([(h, w)], [stride], torch.device("cpu")).T
    locations = torch.rand(n, 2) * 50
    soi = torch.tensor([64.0, 64.0, 128.0, 256.0, 512.0])
    got = dynamic_mask_logits(params, features.flatten(1), pixels, locations, soi, 8, 3).view(n, h, w)
    for i in range(n):
        rel = ((locations[i][:, None] - pixels) / soi[i]).view(2, h, w)
        x = torch.cat([features, rel])[None]
        chunks = torch.split(params[i], [80, 64, 8, 8, 8, 1])
        x = F.relu(F.conv2d(x, chunks[0].view(8, 10, 1, 1), chunks[3]))
        x = F.relu(F.conv2d(x, chunks[1].view(8, 8, 1, 1), chunks[4]))
        x = F.conv2d(x, chunks[2].view(1, 8, 1, 1), chunks[5])
        torch.testing.assert_close(got[i], x[0, 0], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("layers", [2, 3, 4])
def test_blob_parameters_answer_a_diamond_around_the_location_whatever_the_features(layers):
    """``blob_parameters`` hand-set for any depth: logit 4 at the location, 0 at L1 distance
    ``radius`` (in soi units), falling linearly beyond; the features have no weight."""
    torch.manual_seed(0)
    params = blob_parameters(6, 8, layers, radius=0.25)[None]
    assert params.shape == (1, num_parameters(6, 8, layers))
    pixels = torch.stack(torch.meshgrid(torch.arange(48.0), torch.arange(40.0), indexing="xy")).flatten(1)
    location, soi = torch.tensor([[20.0, 13.0]]), torch.tensor([32.0])
    got = dynamic_mask_logits(params, torch.randn(6, pixels.shape[1]), pixels, location, soi, 8, layers)
    l1 = (pixels - location.T).abs().sum(0) / soi
    torch.testing.assert_close(got[0], 4.0 * (1 - l1 / 0.25))
    with pytest.raises(ValueError, match="at least 2 layers of width 4"):
        blob_parameters(6, 3, layers, radius=0.25)


def test_fcos_assignment_centre_sampling_ranges_and_smallest_object():
    locations = feature_locations([(8, 8), (4, 4)], [4, 8], torch.device("cpu"))
    strides = torch.tensor([4] * 64 + [8] * 16)
    ranges = torch.tensor([[0.0, 12.0]] * 64 + [[12.0, 1e8]] * 16)
    boxes = torch.tensor([[0.0, 0.0, 32.0, 32.0], [9.0, 9.0, 19.0, 19.0]])
    centres = torch.tensor([[16.0, 16.0], [14.0, 14.0]])
    t = assign_points(locations, strides, ranges, boxes, centres, radius=1.5)
    fine, coarse = t.owner[:64].view(8, 8), t.owner[64:].view(4, 4)
    # the small box (reach <= 12) lives on the fine level, within 6 px of its centre: cells at 10, 14, 18
    assert torch.nonzero(fine == 1).tolist() == [[i, j] for i in (2, 3, 4) for j in (2, 3, 4)]
    assert (fine == 0).sum() == 0  # the big box reaches 16+ px: not on the fine level
    # the big one on the coarse level, centre region 16 +- 12 px -> cells 1..2 (centres 12, 20); 28 is outside
    assert torch.nonzero(coarse == 0).tolist() == [[1, 1], [1, 2], [2, 1], [2, 2]]
    pos = t.owner >= 0
    torch.testing.assert_close(t.centerness[pos], centerness(t.ltrb[pos]))
    assert (t.centerness[~pos] == 0).all() and (t.ltrb[~pos] == 0).all()
    assert torch.allclose(t.ltrb[64 + 5], torch.tensor([12.0, 12.0, 20.0, 20.0]))


@pytest.mark.parametrize("options", [{}, POINT_REFINE])
def test_no_objects_means_all_background_and_finite_losses(options):
    torch.manual_seed(0)
    model = build_model("condinst", model_config("condinst", "default", {**SMALL, **options}), 2).train()
    empty = {
        "boxes": torch.zeros((0, 4)),
        "labels": torch.zeros(0, dtype=torch.int64),
        "masks": torch.zeros((0, 64, 64), dtype=torch.uint8),
    }
    losses = model([torch.rand(3, 64, 64)], [empty])
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    if model.point_head is not None:  # a zero loss that keeps the point head in the graph
        assert losses["loss_point"] == 0
        assert all(p.grad is not None for p in model.point_head.parameters())


def test_output_contract_in_input_coordinates():
    assert_output_contract("condinst", {**SMALL, "score_threshold": 0.0, "mask_threshold": 0.3})


def test_paper_levels_p3_to_p7():
    model = build_model("condinst", model_config("condinst", "default", {**SMALL, "first_level": 3}), 2)
    assert model.strides == (8, 16, 32, 64, 128)
    image, target = scene()
    losses = model.train()([image], [target])
    assert set(losses) == {"loss_class", "loss_box", "loss_quality", "loss_dice"}


def test_overfits_one_image():
    assert_overfits_scene("condinst", SMALL, steps=150)


@pytest.mark.parametrize("mask_stride", [4, 2])
def test_mask_windows_equal_the_whole_map_inside_them(mask_stride):
    """Windows are an exact shortcut: the same logits as the head run on the whole map, where they overlap.

    At mask stride 2 the whole map is the mask features upsampled x2, and a window is as many input
    pixels wide as at stride 4, so twice as many cells.
    """
    torch.manual_seed(0)
    cfg = model_config("condinst", "default", {**SMALL, "mask_stride": mask_stride})
    model = build_model("condinst", cfg, 2)
    feats = torch.randn(8, 24, 24)
    locs = torch.tensor([[6.0, 6.0], [20.0, 44.0], [60.0, 12.0], [40.0, 40.0]])
    levels = torch.tensor([0, 1, 2, 1])
    params = torch.randn(4, model.head.extra_out.out_channels)
    side = 24 * 4 // mask_stride
    masks = model.postprocessor.masks
    assert masks.size(feats) == (side, side)
    dense = F.interpolate(feats[None], size=(side, side), mode="bilinear")[0]
    pixels = feature_locations([(side, side)], [mask_stride], torch.device("cpu")).T
    full = dynamic_mask_logits(params, dense.flatten(1), pixels, locs, masks.soi[levels], 8, 3)
    full = full.view(4, side, side)
    seen = []
    for win in masks.windows(params, feats, locs, levels):
        inside = win.paste(torch.ones_like(win.logits), (side, side)).bool()
        pasted = win.paste(win.logits, (side, side))
        for k, i in enumerate(win.index.tolist()):
            torch.testing.assert_close(pasted[k][inside[k]], full[i][inside[k]], rtol=1e-5, atol=1e-5)
            # a level-0 location (bound 16 px) owns only boxes within 16 px of it: cells +-16 px, +1 margin
            if levels[i] == 0:
                ys, xs = torch.nonzero(inside[k], as_tuple=True)
                assert (ys.max() + 1) * mask_stride >= locs[i, 1] + 16
                assert (xs.max() + 1) * mask_stride >= locs[i, 0] + 16
            seen.append(i)
        torch.testing.assert_close(win.crop(pasted), win.logits * win.crop(inside.float()))
    assert sorted(seen) == [0, 1, 2, 3]


def test_mask_stride_2_trains_and_predicts_finer_masks():
    """Masks at 1/2: the loss is taken against 1/2 targets, and predictions keep the output contract."""
    torch.manual_seed(0)
    overrides = {**SMALL, "mask_stride": 2, "mask_weight": 1.0}
    model = build_model("condinst", model_config("condinst", "default", overrides), 2).train()
    image, target = scene()
    losses = model([image], [target])
    assert torch.isfinite(losses["loss_mask"]) and losses["loss_mask"] > 0
    sum(losses.values()).backward()
    assert model.mask_branch.out.weight.grad.abs().sum() > 0
    assert_output_contract("condinst", {**overrides, "score_threshold": 0.0, "mask_threshold": 0.3})


def test_semantic_auxiliary_loss_reaches_the_backbone_and_scores_the_class_union():
    torch.manual_seed(0)
    model = build_model("condinst", model_config("condinst", "default", {**SMALL, "semantic_weight": 1.0}), 2)
    image, target = scene()
    losses = model.train()([image], [target])
    assert set(losses) == {"loss_class", "loss_box", "loss_quality", "loss_dice", "loss_semantic"}
    losses["loss_semantic"].backward()
    assert model.backbone.body.conv1.weight.grad.abs().sum() > 0
    masks = torch.zeros((2, 16, 16), dtype=torch.uint8)
    masks[0, :8, :8] = masks[1, 8:, 8:] = 1
    small = {"masks": masks, "labels": torch.tensor([1, 2])}
    union = torch.zeros((1, 2, 4, 4), dtype=torch.bool)
    union[0, 0, :2, :2] = union[0, 1, 2:, 2:] = True
    right = torch.where(union, 20.0, -20.0)
    assert model.criterion.masks.semantic_loss(right, [small]).item() < 1e-6
    assert model.criterion.masks.semantic_loss(-right, [small]).item() > 1.0
    wrong_class = right.flip(1)  # the right cells, the other class
    assert model.criterion.masks.semantic_loss(wrong_class, [small]).item() > 1.0


@pytest.mark.parametrize("mask_stride", [4, 2])
def test_point_refinement_trains_on_windows_and_keeps_the_contract(mask_stride):
    """Each mask window is its own region for the point head; refinement reaches the input's resolution
    from either mask stride."""
    options = {**SMALL, "mask_stride": mask_stride}
    assert_point_head_trains("condinst", options)
    assert_output_contract("condinst", {**options, **POINT_REFINE, "score_threshold": 0.0})
