"""Point sampling on mask logits: losses and matching costs on K points instead of every pixel.

Mask2Former (after PointRend) supervises masks on sampled points: memory then
grows with the number of points, not with the mask resolution, and
importance sampling spends most points where the prediction is uncertain.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def point_sample(maps: Tensor, points: Tensor, padding_mode: str = "zeros") -> Tensor:
    """Bilinear values of ``maps [N, C, H, W]`` at ``points [N, P, 2]`` ((x, y) in [0, 1]) -> ``[N, C, P]``.

    Coordinates are fractions of the map's extent, so a 1/4-resolution
    prediction and a full-resolution target are sampled at the same places.
    ``padding_mode`` (``grid_sample``'s): what lies beyond the map's edge, which
    the outermost half cell reads; "border" for logits, whose 0 means "unsure".
    """
    grid = 2.0 * points[:, :, None, :] - 1.0
    return F.grid_sample(
        maps, grid.to(maps.dtype), mode="bilinear", padding_mode=padding_mode, align_corners=False
    )[..., 0]


def point_count(num_points: int, per_pixel: float, size: tuple[int, int]) -> int:
    """Points per mask on a ``size`` map: ``num_points``, or more where ``per_pixel`` asks for a density.

    A fixed count spreads thinner as images grow: 2,048 points on a 96 x 96 map
    leave a 5 x 5 object about 5 of them, often none, and a small object with
    no point is neither matched nor supervised by its pixels.
    """
    return max(num_points, round(per_pixel * size[0] * size[1]))


def draw_generator(target: dict[str, Tensor], device: torch.device) -> torch.Generator | None:
    """A generator seeded from the training draw's own seed (``target["seed"]``), so the random points
    of an image do not depend on which images share its batch or its process; ``None`` (the global
    generator) for targets without one."""
    if "seed" not in target:
        return None
    return torch.Generator(device=device).manual_seed(int(target["seed"]))


@torch.no_grad()
def uncertain_points(
    logits: Tensor,
    num_points: int,
    oversample: float = 3.0,
    importance: float = 0.75,
    generator: torch.Generator | None = None,
) -> Tensor:
    """``[N, P, 2]`` points per mask: ``importance`` of them the most uncertain of ``oversample * P``
    random candidates (logit closest to 0), the rest uniform."""
    n = logits.shape[0]
    shape = (n, max(int(num_points * oversample), 1), 2)
    candidates = torch.rand(shape, device=logits.device, generator=generator)
    uncertainty = -point_sample(logits[:, None], candidates)[:, 0].abs()
    k = min(int(importance * num_points), candidates.shape[1])
    top = uncertainty.topk(k, dim=1).indices
    chosen = torch.gather(candidates, 1, top[..., None].expand(-1, -1, 2))
    uniform = torch.rand((n, num_points - k, 2), device=logits.device, generator=generator)
    return torch.cat([chosen, uniform], dim=1)


def box_points(boxes: Tensor, num_points: int, generator: torch.Generator | None = None) -> Tensor:
    """``[N, P, 2]`` points drawn uniformly in each box ``[N, 4]`` (xyxy as fractions of the map) widened to
    twice its side and cut to the map. (Drawn in the widened box and clamped, an object on the map's edge
    would get a share of its points piled on the border row.)

    Points spread over a whole map leave an object a few percent of the image
    almost none of them, so its mask loss is nearly all background and
    drives every logit negative; points around the object give it the balance
    of positives and near negatives a box-cropped RoI mask has (Mask R-CNN).
    """
    low, high = boxes[:, None, :2], boxes[:, None, 2:]
    centre, side = (low + high) / 2, high - low
    start, stop = (centre - side).clamp(0, 1), (centre + side).clamp(0, 1)
    draw = torch.rand((len(boxes), num_points, 2), device=boxes.device, generator=generator)
    return start + draw * (stop - start)
