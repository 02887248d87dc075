"""Point sampling on mask logits: losses and matching costs on K points instead of every pixel.

Mask2Former (after PointRend) supervises masks on sampled points: memory then
grows with the number of points, not with the mask resolution, and
importance sampling spends most points where the prediction is uncertain.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def point_sample(maps: Tensor, points: Tensor) -> Tensor:
    """Bilinear values of ``maps [N, C, H, W]`` at ``points [N, P, 2]`` ((x, y) in [0, 1]) -> ``[N, C, P]``.

    Coordinates are fractions of the map's extent, so a 1/4-resolution
    prediction and a full-resolution target are sampled at the same places.
    """
    grid = 2.0 * points[:, :, None, :] - 1.0
    return F.grid_sample(maps, grid.to(maps.dtype), mode="bilinear", align_corners=False)[..., 0]


@torch.no_grad()
def uncertain_points(
    logits: Tensor, num_points: int, oversample: float = 3.0, importance: float = 0.75
) -> Tensor:
    """``[N, P, 2]`` points per mask: ``importance`` of them the most uncertain of ``oversample * P``
    random candidates (logit closest to 0), the rest uniform."""
    n = logits.shape[0]
    candidates = torch.rand(n, max(int(num_points * oversample), 1), 2, device=logits.device)
    uncertainty = -point_sample(logits[:, None], candidates)[:, 0].abs()
    k = min(int(importance * num_points), candidates.shape[1])
    top = uncertainty.topk(k, dim=1).indices
    chosen = torch.gather(candidates, 1, top[..., None].expand(-1, -1, 2))
    uniform = torch.rand(n, num_points - k, 2, device=logits.device)
    return torch.cat([chosen, uniform], dim=1)
