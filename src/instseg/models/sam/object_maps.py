"""An auxiliary training signal for SAM's image encoder: where the objects are and where their edges run.

SAM's encoder learns only through the masks of the prompts sampled in each
image (16 of a crop's dozens of nuclei). This head reads two maps off the
embedding, every object's pixels and every object's edge (where touching
objects meet as well), supervised on all objects of the crop, so that the
embedding the decoder reads is taught where objects end. Used in training
only; predictions never read it. Off by default: on DSB2018 it did not change
what one click reads back (BENCHMARKS.md, "why one click reads back a blob").
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F


class ObjectMapHead(nn.Module):
    """The embedding ``[B, C, h, w]`` (``stride`` pixels a cell) -> logits ``[B, 2, stride h, stride w]``:
    object pixels, then object edges, by a 1x1 convolution and a pixel shuffle."""

    def __init__(self, dim: int, stride: int) -> None:
        super().__init__()
        self.project = nn.Conv2d(dim, 2 * stride * stride, 1)
        self.shuffle = nn.PixelShuffle(stride)

    def forward(self, embedding: Tensor) -> Tensor:
        return self.shuffle(self.project(embedding))


def object_maps(masks: Tensor, size: tuple[int, int]) -> Tensor:
    """Bool masks ``[N, H, W]`` of one image -> float targets ``[2, *size]``, padded with background:
    the union of the masks, and their inner edges (pixels of a mask with one of their 8 neighbours
    outside it; the image's border is not an edge)."""
    m = masks.float()[:, None]
    maps = m.new_zeros((2, *masks.shape[-2:]))
    if len(m):
        eroded = -F.max_pool2d(-m, 3, stride=1, padding=1)  # the padding never wins a max of -m
        maps = torch.stack([m.amax(0)[0], (m - eroded).amax(0)[0]])
    return F.pad(maps, (0, size[1] - maps.shape[-1], 0, size[0] - maps.shape[-2]))


def object_map_loss(logits: Tensor, targets: Tensor) -> Tensor:
    """Mean binary cross-entropy over both maps and every pixel of the padded batch."""
    return F.binary_cross_entropy_with_logits(logits, targets)
