"""The point head: subdivision's resolution and reach, and a thin line the coarse mask misses."""

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from instseg.engine import checkpoint as ckpt
from instseg.errors import CheckpointError
from instseg.models.build import build_model, checkpoint_meta, model_config
from instseg.models.point_head import (
    PointFeatures,
    PointHead,
    fine_at,
    point_loss,
    refine_image_masks,
    subdivide,
)
from instseg.predictor import model_from_checkpoint
from instseg.structures import Category


def _full(n: int, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.tensor([[0.0, 0.0, size, size]]).repeat(n, 1), torch.zeros(n, dtype=torch.long)


def test_subdivision_reaches_the_resolution_and_changes_only_the_chosen_points():
    torch.manual_seed(0)
    head = PointHead(fine_channels=3, channels=16, layers=2)
    torch.nn.init.constant_(head.predict.bias, 5.0)  # a correction large enough to see everywhere
    coarse = torch.randn(2, 8, 8) * 3
    regions, index = _full(2, 32)
    points = PointFeatures(head, [torch.rand(1, 3, 32, 32)], (32, 32))
    out = subdivide(points, coarse, regions, index, steps=2, num_points=10)
    assert out.shape == (2, 32, 32)

    one = subdivide(points, coarse, regions, index, steps=1, num_points=10)
    upsampled = F.interpolate(coarse[:, None], scale_factor=2.0, mode="bilinear", align_corners=False)[:, 0]
    for i in range(2):
        changed = set(torch.nonzero((one[i] != upsampled[i]).flatten()).flatten().tolist())
        chosen = set((-upsampled[i].abs()).flatten().topk(10).indices.tolist())
        assert changed == chosen


def test_fine_features_are_read_at_input_pixels_of_the_right_image():
    fine = [torch.zeros(2, 1, 8, 8)]
    fine[0][1, 0, 2, 5] = 1.0  # image 1, pixel (x=5, y=2)
    xy = torch.tensor([[[5.5, 2.5]], [[5.5, 2.5]]])
    out = fine_at(fine, torch.tensor([0, 1]), xy, (8, 8))
    assert out.shape == (2, 1, 1)
    assert out[0, 0, 0] == 0.0 and out[1, 0, 0] == 1.0


def test_a_thin_line_the_coarse_mask_misses_is_recovered():
    """Overfit one image: a 2 px line is below 0.5 in every 4x4 cell of the coarse mask, visible in
    the pixels; the point head learns to read it from the pixels at the uncertain points."""
    torch.manual_seed(0)
    size = 64
    gt = torch.zeros(1, size, size)
    gt[0, 30:32, 4:60] = 1.0  # horizontal, 2 px
    gt[0, 36:60, 45:47] = 1.0  # vertical, 2 px, not crossing the other
    image = gt[None].repeat(1, 3, 1, 1) * 0.8 + 0.1 + 0.05 * torch.randn(1, 3, size, size)
    cells = F.avg_pool2d(gt[None], 4)[0]  # at most 0.5: no cell is mostly line
    coarse = torch.logit((cells * 0.9).clamp(1e-3, 1 - 1e-3))
    regions, index = _full(1, size)

    def iou(mask: torch.Tensor) -> float:
        return float((mask & (gt > 0)).sum() / (mask | (gt > 0)).sum())

    upsampled = F.interpolate(coarse[:, None], size=(size, size), mode="bilinear", align_corners=False)[:, 0]
    assert iou(upsampled > 0) < 0.05  # the coarse mask misses the line

    head = PointHead(fine_channels=3, channels=32, layers=2)
    points = PointFeatures(head, [image], (size, size))
    optimizer = torch.optim.Adam(head.parameters(), lr=1e-2)
    for _ in range(150):
        loss = point_loss(points, coarse, regions, index, gt, num_points=256)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    refined = subdivide(points, coarse, regions, index, steps=2, num_points=400)
    assert refined.shape == (1, size, size)
    assert iou(refined > 0) > 0.9


def test_refinement_on_windows_equals_subdivision_of_the_whole_image_inside_them():
    """Each mask is refined on the window of its cells above the floor (and one more): inside it the
    values are those of refining the whole map, outside it 0; an empty mask stays empty."""
    torch.manual_seed(0)
    head = PointHead(fine_channels=3, channels=16, layers=2)
    torch.nn.init.normal_(head.predict.weight, std=0.3)  # a correction that differs from point to point
    points = PointFeatures(head, [torch.rand(1, 3, 64, 64)], (64, 64))
    probs = torch.zeros(3, 16, 16)
    probs[0, 0:3, 1:5] = torch.rand(3, 4) * 0.9 + 0.05  # at the map's edge: the window is shifted inside
    probs[1, 6:11, 7:9] = torch.rand(5, 2) * 0.9 + 0.05
    every = 64 * 64  # every point re-predicted, as in the whole-map version
    out = refine_image_masks(points, every, 4, probs)
    coarse = torch.logit(probs.clamp(1e-6, 1 - 1e-6))
    regions, index = _full(3, 64)
    whole = subdivide(points, coarse, regions, index, steps=2, num_points=every).sigmoid()
    # windows widened by a cell: mask 0 rows 0-3, columns 0-5; mask 1 rows 5-11, columns 6-9; the
    # common size is 7 x 6 cells (28 x 24 px): mask 0's rows 0-6, mask 1's columns 6-11
    inside = [(0, slice(0, 28), slice(0, 24)), (1, slice(20, 48), slice(24, 48))]
    for i, rows, cols in inside:
        torch.testing.assert_close(out[i, rows, cols], whole[i, rows, cols])
        outside = torch.ones(64, 64, dtype=torch.bool)
        outside[rows, cols] = False
        assert out[i][outside].eq(0).all()
    assert out[2].eq(0).all()


def test_a_refining_checkpoint_predicts_without_its_head_when_refinement_is_turned_off(tmp_path: Path):
    cfg = model_config("solov2", "light", {"point_refine": True})
    saved = build_model("solov2", cfg, 1).state_dict()
    ckpt.save_checkpoint(tmp_path / "m", saved, checkpoint_meta("solov2", cfg, [Category(1, "a")]))
    assert model_from_checkpoint(tmp_path / "m")[0].point_head is not None
    plain = model_from_checkpoint(tmp_path / "m", {"point_refine": False})[0]
    assert plain.point_head is None
    rest = {k: v for k, v in saved.items() if not k.startswith("point_head.")}
    assert len(rest) < len(saved) and plain.state_dict().keys() == rest.keys()
    assert all(torch.equal(plain.state_dict()[k], v) for k, v in rest.items())
    # the other way round is still an error: a head cannot be made up from weights that lack it
    ckpt.save_checkpoint(tmp_path / "p", rest, checkpoint_meta("solov2", cfg, [Category(1, "a")]))
    with pytest.raises(CheckpointError, match="missing"):
        model_from_checkpoint(tmp_path / "p")
