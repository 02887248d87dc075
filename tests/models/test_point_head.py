"""The point head: subdivision's resolution and reach, and a thin line the coarse mask misses."""

import torch
import torch.nn.functional as F

from instseg.models.point_head import PointFeatures, PointHead, fine_at, point_loss, subdivide


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
