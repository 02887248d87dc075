"""Point-based mask refinement (PointRend), for any family whose masks are coarse logit maps.

A coarse mask (a 28x28 RoI grid, a 1/4-resolution map) blurs whatever is
thinner than its cells. The point head re-predicts the logit at chosen points
from the coarse logit there and fine features sampled at the same place (the
finest pyramid level and the input pixels), so the work goes where the mask is
uncertain: in training on importance-sampled points, at inference by adaptive
subdivision (upsample x2, re-predict the most uncertain points, repeat).

Every coarse map covers a ``region`` of its image (xyxy input pixels of the
padded batch): the whole image for the 1/4-resolution families, the box for
RoI masks. Fine maps cover the whole padded batch.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from instseg.models.point_sampling import point_sample, uncertain_points
from instseg.models.postprocess import widened_extents

WINDOW_FLOOR = 0.01  # refinement's window: where a coarse mask's probability exceeds this


class PointHead(nn.Module):
    """An MLP on each point (1x1 convolutions) that sees the coarse logit again at every layer."""

    def __init__(self, fine_channels: int, channels: int = 128, layers: int = 3) -> None:
        super().__init__()
        widths = [fine_channels + 1] + [channels + 1] * (layers - 1)
        self.layers = nn.ModuleList(nn.Conv1d(w, channels, 1) for w in widths)
        self.predict = nn.Conv1d(channels + 1, 1, 1)
        nn.init.normal_(self.predict.weight, std=1e-3)
        nn.init.zeros_(self.predict.bias)

    def forward(self, fine: Tensor, coarse: Tensor) -> Tensor:
        """``fine [N, C, P]``, ``coarse [N, 1, P]`` logits -> refined logits ``[N, 1, P]``.

        The output is the coarse logit plus a learned correction, so an
        untrained head leaves the coarse mask as it is.
        """
        x = fine
        for layer in self.layers:
            x = F.relu(layer(torch.cat([x, coarse], dim=1)))
        return coarse + self.predict(torch.cat([x, coarse], dim=1))


@dataclass
class PointFeatures:
    """The point head and a batch's fine maps, as a network hands them to its criterion and its
    postprocessor (which hold no parameters of their own)."""

    head: PointHead
    fine: list[Tensor]  # [B, C_i, H_i, W_i], each covering the padded batch
    padded: tuple[int, int]  # the padded batch's (H, W) in input pixels

    def image(self, b: int) -> PointFeatures:
        """The same for image ``b`` alone (its instances then all have image index 0)."""
        return PointFeatures(self.head, [f[b : b + 1] for f in self.fine], self.padded)


def image_points(regions: Tensor, points: Tensor) -> Tensor:
    """Points given as fractions of each region ``[N, P, 2]`` -> input pixels ``[N, P, 2]``."""
    return regions[:, None, :2] + points * (regions[:, None, 2:] - regions[:, None, :2])


def fine_at(fine: Sequence[Tensor], image_index: Tensor, xy: Tensor, batch_size: tuple[int, int]) -> Tensor:
    """Fine features at input-pixel points ``xy [N, P, 2]`` -> ``[N, C, P]``, the maps concatenated.

    Points are sampled image by image, so no map is copied per instance.
    """
    height, width = batch_size
    norm = xy / xy.new_tensor([width, height])
    n, p = xy.shape[:2]
    out = xy.new_zeros((n, sum(f.shape[1] for f in fine), p))
    for b in image_index.unique().tolist():
        rows = torch.nonzero(image_index == b).flatten()
        grid = norm[rows].reshape(1, -1, 2)
        sampled = [point_sample(f[b : b + 1].to(xy.dtype), grid)[0] for f in fine]  # [C, len(rows) * P]
        out[rows] = torch.cat(sampled, 0).reshape(-1, len(rows), p).transpose(0, 1)
    return out


def point_loss(
    points: PointFeatures,
    coarse: Tensor,
    regions: Tensor,
    image_index: Tensor,
    gt_masks: Tensor,
    num_points: int,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Mean BCE of the refined logits on ``num_points`` importance-sampled points of each coarse map.

    ``gt_masks [N, H, W]``: each instance's ground truth on the input pixels
    (unpadded is fine: points beyond it read 0, as padding is background).
    """
    head = points.head
    if coarse.shape[0] == 0:
        return coarse.sum() * 0.0 + sum(p.sum() * 0.0 for p in head.parameters())
    chosen = uncertain_points(coarse.detach(), num_points, generator=generator)
    xy = image_points(regions, chosen)
    fine = fine_at(points.fine, image_index, xy, points.padded)
    logits = head(fine, point_sample(coarse[:, None], chosen, "border"))
    size = xy.new_tensor([gt_masks.shape[-1], gt_masks.shape[-2]])
    target = point_sample(gt_masks[:, None].to(logits.dtype), xy / size)
    return F.binary_cross_entropy_with_logits(logits, (target > 0.5).to(logits.dtype))


def image_point_loss(
    points: PointFeatures,
    coarse: Tensor,
    regions: Tensor | None,
    gt_masks: Tensor,
    num_points: int,
    most: int,
    generator: torch.Generator | None = None,
) -> Tensor:
    """``point_loss`` on up to ``most`` of one image's coarse maps, drawn with ``generator`` (a bound
    on crowded images). ``regions`` None: each map covers the whole padded image (the 1/4-resolution
    families)."""
    pick = torch.randperm(len(coarse), device=coarse.device, generator=generator)[:most]
    if regions is None:
        height, width = points.padded
        regions = coarse.new_tensor([[0.0, 0.0, width, height]]).expand(len(coarse), 4)
    index = torch.zeros(len(pick), dtype=torch.int64, device=coarse.device)
    return point_loss(points, coarse[pick], regions[pick], index, gt_masks[pick], num_points, generator)


@torch.no_grad()
def subdivide(
    points: PointFeatures,
    coarse: Tensor,
    regions: Tensor,
    image_index: Tensor,
    steps: int,
    num_points: int,
) -> Tensor:
    """Adaptive subdivision: ``coarse [N, h, w]`` logits -> ``[N, h * 2**steps, w * 2**steps]``.

    Each step upsamples the current logits x2 (bilinear) and replaces the
    ``num_points`` most uncertain of them (closest to 0) by the head's
    prediction at their cell centres; every other value is the upsampled one.
    """
    logits = coarse
    for _ in range(steps):
        logits = F.interpolate(logits[:, None], scale_factor=2.0, mode="bilinear", align_corners=False)[:, 0]
        n, h, w = logits.shape
        if n == 0:
            continue
        k = min(num_points, h * w)
        chosen = (-logits.abs()).flatten(1).topk(k, dim=1).indices  # [N, k]
        where = torch.stack([(chosen % w + 0.5) / w, (chosen // w + 0.5) / h], dim=-1).to(logits.dtype)
        fine = fine_at(points.fine, image_index, image_points(regions.to(logits.dtype), where), points.padded)
        new = points.head(fine, point_sample(coarse[:, None], where, "border"))
        logits = logits.flatten(1).scatter(1, chosen, new[:, 0].to(logits.dtype)).view(n, h, w)
    return logits


def refine_image_masks(points: PointFeatures, num_points: int, stride: int, probs: Tensor) -> Tensor:
    """One image's mask probabilities at 1/``stride`` of the padded batch ``[N, h, w]`` -> at its input
    pixels ``[N, h * stride, w * stride]``, by subdivision (the 1/4-resolution families' refinement).

    Each mask is subdivided on a window only: the cells above ``WINDOW_FLOOR``
    and one more on every side (the masks of a call share the largest
    window's size). Outside it nothing is near 0.5, so the most uncertain
    points lie inside, and the work scales with the objects' size rather than
    the image's; the output is 0 there.
    """
    n, h, w = probs.shape
    out = probs.new_zeros((n, h * stride, w * stride))
    present, y0, y1, x0, x1 = widened_extents(probs > WINDOW_FLOOR)
    if len(present) == 0:
        return out
    side_h, side_w = int((y1 - y0).max()), int((x1 - x0).max())
    y0, x0 = y0.clamp(max=h - side_h), x0.clamp(max=w - side_w)  # the common size, inside the map
    at = present[:, None, None]
    ys, xs = window_cells(y0, x0, side_h, side_w)
    coarse = torch.logit(probs[at, ys, xs].clamp(1e-6, 1 - 1e-6))
    regions = torch.stack([x0, y0, x0 + side_w, y0 + side_h], dim=1).to(probs.dtype) * stride
    index = torch.zeros(len(present), dtype=torch.int64, device=probs.device)
    refined = subdivide(points, coarse, regions, index, int(math.log2(stride)), num_points).sigmoid()
    ys, xs = window_cells(y0 * stride, x0 * stride, side_h * stride, side_w * stride)
    out[at, ys, xs] = refined
    return out


def window_cells(top: Tensor, left: Tensor, height: int, width: int) -> tuple[Tensor, Tensor]:
    """Row and column indices ``[N, height, 1]``, ``[N, 1, width]`` of N windows at (top, left)."""
    rows = top[:, None, None] + torch.arange(height, device=top.device)[None, :, None]
    cols = left[:, None, None] + torch.arange(width, device=left.device)[None, None, :]
    return rows, cols
