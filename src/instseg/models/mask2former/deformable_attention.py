"""Multi-scale deformable attention (Zhu et al., Deformable DETR, ICLR 2021) in plain PyTorch.

Each query looks at a few learned offsets around its reference point on every
level, instead of at every pixel: attention over the 1/8-1/32 pyramid costs
O(tokens x heads x levels x points). The official implementation is a CUDA
extension; here the bilinear sampling is ``grid_sample``, so it runs anywhere
the wheel does, the CPU included.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def deformable_sample(
    value: Tensor, shapes: list[tuple[int, int]], locations: Tensor, weights: Tensor
) -> Tensor:
    """``value [B, S, H, d]``, ``locations [B, L, H, levels, P, 2]`` in [0, 1] (x, y), ``weights
    [B, L, H, levels, P]`` -> ``[B, L, H * d]``: the weighted sum of the bilinear samples."""
    b, _, heads, d = value.shape
    length = locations.shape[1]
    out = value.new_zeros(b * heads, d, length)
    start = 0
    for level, (h, w) in enumerate(shapes):
        v = value[:, start : start + h * w].permute(0, 2, 3, 1).reshape(b * heads, d, h, w)
        start += h * w
        grid = 2 * locations[:, :, :, level].transpose(1, 2).flatten(0, 1) - 1  # [B*H, L, P, 2]
        sampled = F.grid_sample(v, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        out += (sampled * weights[:, :, :, level].transpose(1, 2).flatten(0, 1)[:, None]).sum(-1)
    return out.view(b, heads * d, length).transpose(1, 2)


class MultiScaleDeformableAttention(nn.Module):
    def __init__(self, dim: int, heads: int = 8, levels: int = 3, points: int = 4) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim {dim} is not divisible by {heads} heads")
        self.heads, self.levels, self.points = heads, levels, points
        self.sampling_offsets = nn.Linear(dim, heads * levels * points * 2)
        self.attention_weights = nn.Linear(dim, heads * levels * points)
        self.value_proj = nn.Linear(dim, dim)
        self.output_proj = nn.Linear(dim, dim)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Deformable DETR's start: head h samples along direction h, its k-th point k cells out."""
        nn.init.zeros_(self.sampling_offsets.weight)
        angle = torch.arange(self.heads, dtype=torch.float32) * (2 * math.pi / self.heads)
        direction = torch.stack([angle.cos(), angle.sin()], -1)
        direction = direction / direction.abs().max(-1, keepdim=True).values
        grid = direction[:, None, None, :].repeat(1, self.levels, self.points, 1)
        grid *= torch.arange(1, self.points + 1, dtype=torch.float32)[None, None, :, None]
        with torch.no_grad():
            self.sampling_offsets.bias.copy_(grid.flatten())
        nn.init.zeros_(self.attention_weights.weight)
        nn.init.zeros_(self.attention_weights.bias)
        for proj in (self.value_proj, self.output_proj):
            nn.init.xavier_uniform_(proj.weight)
            nn.init.zeros_(proj.bias)

    def forward(
        self, query: Tensor, reference: Tensor, value: Tensor, shapes: list[tuple[int, int]]
    ) -> Tensor:
        """``query [B, L, C]`` with ``reference [B or 1, L, levels, 2]`` points; ``value [B, S, C]`` the
        flattened levels of ``shapes``."""
        b, length, dim = query.shape
        heads, levels, points = self.heads, self.levels, self.points
        v = self.value_proj(value).view(b, value.shape[1], heads, dim // heads)
        offsets = self.sampling_offsets(query).view(b, length, heads, levels, points, 2)
        weights = self.attention_weights(query).view(b, length, heads, levels * points).softmax(-1)
        weights = weights.view(b, length, heads, levels, points)
        extent = torch.tensor([[w, h] for h, w in shapes], dtype=query.dtype, device=query.device)
        locations = reference[:, :, None, :, None, :] + offsets / extent[None, None, None, :, None, :]
        return self.output_proj(deformable_sample(v, shapes, locations, weights))
