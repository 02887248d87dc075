"""Who supervises what: point assignment for dense heads (FCOS) and, for set prediction, the matcher.

FCOS (Tian et al., ICCV 2019) makes a feature location positive for an object
when it lies inside the object's box, inside a small region around its
centre (centre sampling, ``radius`` strides), and the largest of its four
distances to the box sides falls in its level's size range. A location
claimed by several objects takes the smallest. Any family with a per-location
head (CondInst, an anchor-free YOLACT) assigns its targets here.

Set prediction (DETR, Mask2Former) instead pairs each ground truth with exactly
one query, the pairing of least total cost (Hungarian algorithm, scipy's
``linear_sum_assignment``); every other query learns "no object", which is why
such models need no NMS.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor, nn

from instseg.losses import pairwise_dice_loss, pairwise_sigmoid_bce
from instseg.points import point_sample


@dataclass
class PointTargets:
    owner: Tensor  # int64 [L], index of the assigned object, -1 for background
    ltrb: Tensor  # float [L, 4], distances (px) from the location to its object's box sides
    centerness: Tensor  # float [L], FCOS centre-ness of the location in its object's box (0 if none)


def feature_locations(sizes: list[tuple[int, int]], strides: list[int], device: torch.device) -> Tensor:
    """(x, y) input-pixel centres of every cell of every level, flattened level by level, ``[L, 2]``."""
    out = []
    for (h, w), s in zip(sizes, strides, strict=True):
        ys = (torch.arange(h, device=device, dtype=torch.float32) + 0.5) * s
        xs = (torch.arange(w, device=device, dtype=torch.float32) + 0.5) * s
        gy, gx = torch.meshgrid(ys, xs, indexing="ij")
        out.append(torch.stack([gx.flatten(), gy.flatten()], 1))
    return torch.cat(out)


def centerness(ltrb: Tensor) -> Tensor:
    """sqrt(min(l, r)/max(l, r) * min(t, b)/max(t, b)): 1 at the box centre, 0 on its edge."""
    lr, tb = ltrb[:, [0, 2]], ltrb[:, [1, 3]]
    ratio = (lr.min(1).values / lr.max(1).values.clamp(min=1e-6)) * (
        tb.min(1).values / tb.max(1).values.clamp(min=1e-6)
    )
    return ratio.clamp(min=0).sqrt()


def assign_points(
    locations: Tensor,
    strides: Tensor,
    ranges: Tensor,
    boxes: Tensor,
    centres: Tensor,
    radius: float = 1.5,
) -> PointTargets:
    """FCOS targets of one image.

    ``locations`` [L, 2], ``strides`` [L] and ``ranges`` [L, 2] (lo, hi of the
    largest box-side distance) per location; ``boxes`` [G, 4] xyxy and their
    ``centres`` [G, 2] (CondInst uses mass centres, FCOS box centres).
    """
    num = len(locations)
    if len(boxes) == 0:
        return PointTargets(
            torch.full((num,), -1, dtype=torch.int64, device=locations.device),
            locations.new_zeros((num, 4)),
            locations.new_zeros(num),
        )
    x, y = locations[:, 0:1], locations[:, 1:2]  # [L, 1]
    ltrb = torch.stack([x - boxes[:, 0], y - boxes[:, 1], boxes[:, 2] - x, boxes[:, 3] - y], 2)  # [L, G, 4]
    # centre region: radius strides around the centre, cut to the box
    rad = strides[:, None].float() * radius
    cx, cy = centres[:, 0], centres[:, 1]
    in_centre = (
        (x > torch.maximum(cx - rad, boxes[:, 0]))
        & (x < torch.minimum(cx + rad, boxes[:, 2]))
        & (y > torch.maximum(cy - rad, boxes[:, 1]))
        & (y < torch.minimum(cy + rad, boxes[:, 3]))
    )
    reach = ltrb.max(2).values
    in_range = (reach >= ranges[:, 0:1]) & (reach <= ranges[:, 1:2])
    area = ((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]))[None].expand(num, -1)
    area = torch.where(in_centre & in_range, area, torch.full_like(area, float("inf")))
    best, owner = area.min(1)
    owner = torch.where(torch.isinf(best), torch.full_like(owner, -1), owner)
    chosen = ltrb[torch.arange(num, device=locations.device), owner.clamp(min=0)]
    chosen = chosen * (owner >= 0)[:, None]
    return PointTargets(owner, chosen, torch.where(owner >= 0, centerness(chosen), chosen[:, 0]))


def hungarian_match(cost: Tensor) -> tuple[Tensor, Tensor]:
    """The one-to-one pairing of rows and columns of least total ``cost`` (``[Q, G]``), sorted by row.

    Non-finite costs (a NaN from a diverging model) are made the worst choice
    instead of failing inside scipy.
    """
    cost = torch.nan_to_num(cost.detach().float().cpu(), nan=1e8, posinf=1e8, neginf=-1e8)
    rows, cols = linear_sum_assignment(cost.numpy())
    return torch.as_tensor(rows, dtype=torch.int64), torch.as_tensor(cols, dtype=torch.int64)


class HungarianMatcher(nn.Module):
    """Mask2Former's matcher: cost = class + mask BCE + mask Dice, the masks compared on K random points.

    ``class_logits [B, Q, K+1]`` (last: no object); a query's mask is its
    ``mask_embed [B, Q, C]`` dotted with ``mask_features [B, C, h, w]``, so only
    the K sampled points of the features are read, never a full mask. Each
    target has ``labels [G]`` (0-based) and float ``masks [G, H, W]`` covering the
    same extent as the features. Returns one ``(query indices, target
    indices)`` pair per image.
    """

    def __init__(
        self, class_cost: float = 2.0, mask_cost: float = 5.0, dice_cost: float = 5.0, num_points: int = 12544
    ) -> None:
        super().__init__()
        self.class_cost, self.mask_cost, self.dice_cost = class_cost, mask_cost, dice_cost
        self.num_points = num_points

    @torch.no_grad()
    def forward(
        self,
        class_logits: Tensor,
        mask_embed: Tensor,
        mask_features: Tensor,
        targets: list[dict[str, Tensor]],
    ) -> list[tuple[Tensor, Tensor]]:
        indices = []
        for b, target in enumerate(targets):
            labels, gt = target["labels"], target["masks"]
            if len(labels) == 0:
                empty = torch.zeros(0, dtype=torch.int64)
                indices.append((empty, empty))
                continue
            points = torch.rand(1, self.num_points, 2, device=gt.device)
            pred = mask_embed[b] @ point_sample(mask_features[b : b + 1], points)[0]
            true = point_sample(gt[:, None], points.expand(len(gt), -1, -1))[:, 0]
            cost = (
                -self.class_cost * class_logits[b].float().softmax(-1)[:, labels]
                + self.mask_cost * pairwise_sigmoid_bce(pred.float(), true)
                + self.dice_cost * pairwise_dice_loss(pred.float(), true)
            )
            indices.append(hungarian_match(cost))
        return indices
