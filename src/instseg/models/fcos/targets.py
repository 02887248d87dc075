"""FCOS point assignment (Tian et al., ICCV 2019): which feature location learns which object.

A location is positive for an object when it lies inside the object's box,
inside a small region around its centre (centre sampling, ``radius``
strides), and the largest of its four distances to the box sides falls in its
level's size range. A location claimed by several objects takes the smallest.
Every family with a per-location head (CondInst, an anchor-free YOLACT)
assigns its targets here.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from instseg.masks import mass_centres


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


def assign_targets(
    targets: list[dict[str, Tensor]],
    locations: Tensor,
    level_of: Tensor,
    strides: tuple[int, ...],
    ranges: Tensor,
    radius: float,
) -> list[PointTargets]:
    """FCOS targets of each image, centre regions around mask mass centres (as CondInst does)."""
    stride = torch.tensor(strides, device=locations.device)[level_of]
    rng = ranges.to(locations.device)[level_of]
    return [
        assign_points(locations, stride, rng, t["boxes"], mass_centres(t["masks"], t["boxes"]), radius)
        for t in targets
    ]
