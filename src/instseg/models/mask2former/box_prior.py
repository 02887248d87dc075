"""A query's own box as a prior on its mask, so a mask stays near its object.

A Mask2Former mask is the dot product of a query's embedding with every
pixel's. Where objects look alike (nuclei), their pixels' embeddings barely
differ, and one query's mask fires on look-alikes far from its own object.
With the prior, each query also predicts a box (cx, cy, w, h as fractions of
the padded map), supervised on matched pairs with L1 and GIoU as Mask DINO
does, and its mask logit gains the log-Gaussian term

    -s * ((x - cx)^2 / w^2 + (y - cy)^2 / h^2)

so a pixel one box side from the centre loses ``s`` and one at the box's edge
``s / 4``. The term is itself a dot product: with the channels x, y, x^2, y^2
and 1 appended to the mask features (``with_coordinates``) and five matching
numbers to the embedding (``prior_embedding``), every reader of masks (the
matcher, the losses, the three inference readings and the export) is
unchanged.

Coordinates are fractions of the padded map, as the paper's position
encodings are; so are the boxes, which makes the prior's width follow the
object's size whatever the image's. The channels hold them less one half,
so the expanded square's terms stay small and float32 keeps the prior
exact to about 0.01 logit at the narrowest box.
"""

from __future__ import annotations

import torch
from torch import Tensor

MIN_SIDE = 0.005  # the narrowest box side the prior uses, so its coefficients stay finite


def coordinate_channels(height: int, width: int, device: torch.device, dtype: torch.dtype) -> Tensor:
    """``[5, height, width]``: each cell centre's x, y, x^2, y^2 and 1, with x and y in fractions of the map
    less one half."""
    y = (torch.arange(height, device=device, dtype=dtype) + 0.5) / height - 0.5
    x = (torch.arange(width, device=device, dtype=dtype) + 0.5) / width - 0.5
    gy = y[:, None].expand(height, width)
    gx = x[None, :].expand(height, width)
    return torch.stack([gx, gy, gx * gx, gy * gy, torch.ones_like(gx)])


def with_coordinates(features: Tensor) -> Tensor:
    """``[B, C, h, w]`` -> ``[B, C + 5, h, w]``, the coordinate channels last."""
    b, _, h, w = features.shape
    coords = coordinate_channels(h, w, features.device, features.dtype)
    return torch.cat([features, coords[None].expand(b, -1, -1, -1)], 1)


def prior_embedding(boxes: Tensor, sharpness: float) -> Tensor:
    """``[..., 4]`` boxes (cx, cy, w, h) -> ``[..., 5]``, whose dot product with the coordinate channels is
    the log-Gaussian prior above."""
    cx, cy = boxes[..., 0] - 0.5, boxes[..., 1] - 0.5  # as the coordinate channels hold them
    ax = sharpness / boxes[..., 2].clamp(min=MIN_SIDE).square()
    ay = sharpness / boxes[..., 3].clamp(min=MIN_SIDE).square()
    constant = -(ax * cx * cx + ay * cy * cy)
    return torch.stack([2 * ax * cx, 2 * ay * cy, -ax, -ay, constant], -1)
