"""Mask2Former's pixel decoders: backbone stages -> per-pixel embeddings at 1/4 + three coarser maps.

``DeformablePixelDecoder`` is the paper's: deformable-attention encoder layers
over 1/32, 1/16 and 1/8 (every token sees all three scales), then one FPN
step down to 1/4. ``FPNPixelDecoder`` is the light option (MaskFormer's): a
plain top-down FPN, no attention, about half the pixel-decoder cost.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from instseg.models.mask2former.deformable_attention import MultiScaleDeformableAttention
from instseg.models.mask2former.position_encoding import sine_position_encoding

LEVELS = 3  # the maps the transformer decoder attends to, coarsest first
STRIDES = (32, 16, 8)  # their input pixels per cell


def _conv_norm(
    cin: int, cout: int, kernel: int, relu: bool, bias: bool = False, batch_norm: bool = False
) -> nn.Sequential:
    """Convolution, then GroupNorm (the paper's) or BatchNorm. GroupNorm's statistics are the whole
    image's, so a region's features change with what surrounds it; BatchNorm's, at inference, are fixed."""
    norm = nn.BatchNorm2d(cout) if batch_norm else nn.GroupNorm(32, cout)
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, kernel, padding=kernel // 2, bias=bias), norm]
    return nn.Sequential(*layers, nn.ReLU()) if relu else nn.Sequential(*layers)


def cell_centres(height: int, width: int, device: torch.device, dtype: torch.dtype) -> Tensor:
    """``[height * width, 2]``: each cell's centre as (x, y) fractions of the map, in the order of
    ``flatten``."""
    y, x = torch.meshgrid(
        (torch.arange(height, device=device, dtype=dtype) + 0.5) / height,
        (torch.arange(width, device=device, dtype=dtype) + 0.5) / width,
        indexing="ij",
    )
    return torch.stack([x.flatten(), y.flatten()], -1)


def reference_points(shapes: list[tuple[int, int]], device: torch.device, dtype: torch.dtype) -> Tensor:
    """``[1, S, levels, 2]``: every token's cell centre as (x, y) fractions, the same on each level."""
    points = torch.cat([cell_centres(h, w, device, dtype) for h, w in shapes])
    return points[None, :, None, :].expand(-1, -1, len(shapes), -1)


class DeformableEncoderLayer(nn.Module):
    """Deformable self-attention over the flattened levels, then an FFN; post-norm, as in the paper."""

    def __init__(self, dim: int, heads: int, ffn: int, points: int = 4) -> None:
        super().__init__()
        self.attn = MultiScaleDeformableAttention(dim, heads, LEVELS, points)
        self.attn_norm = nn.LayerNorm(dim)
        self.linear1 = nn.Linear(dim, ffn)
        self.linear2 = nn.Linear(ffn, dim)
        self.ffn_norm = nn.LayerNorm(dim)

    def forward(self, x: Tensor, pos: Tensor, reference: Tensor, shapes: list[tuple[int, int]]) -> Tensor:
        x = self.attn_norm(x + self.attn(x + pos, reference, x, shapes))
        return self.ffn_norm(x + self.linear2(F.relu(self.linear1(x))))


class DeformablePixelDecoder(nn.Module):
    def __init__(
        self,
        in_channels: list[int],
        dim: int,
        layers: int = 6,
        heads: int = 8,
        ffn: int = 1024,
        pixel_positions: bool = False,
        batch_norm: bool = False,
    ) -> None:
        super().__init__()
        self.strides = STRIDES if pixel_positions else (None,) * LEVELS
        if dim % 32:
            raise ValueError(f"pixel decoder width {dim} must be a multiple of 32 (GroupNorm(32))")
        # 1x1 projections of res5, res4, res3 (coarsest first, the order of the tokens)
        self.input_proj = nn.ModuleList(
            _conv_norm(c, dim, 1, relu=False, bias=True, batch_norm=batch_norm) for c in in_channels[:0:-1]
        )
        self.level_embed = nn.Parameter(torch.empty(LEVELS, dim).normal_())
        self.layers = nn.ModuleList(DeformableEncoderLayer(dim, heads, ffn) for _ in range(layers))
        self.lateral = _conv_norm(in_channels[0], dim, 1, relu=False, batch_norm=batch_norm)
        self.output = _conv_norm(dim, dim, 3, relu=True, batch_norm=batch_norm)
        self.mask_proj = nn.Conv2d(dim, dim, 1)

    def forward(self, features: list[Tensor]) -> tuple[Tensor, list[Tensor]]:
        """``features`` res2..res5 -> (mask features ``[B, C, H/4, W/4]``, [1/32, 1/16, 1/8] maps)."""
        maps = [proj(f) for proj, f in zip(self.input_proj, features[:0:-1], strict=True)]
        shapes = [(m.shape[-2], m.shape[-1]) for m in maps]
        tokens = torch.cat([m.flatten(2).transpose(1, 2) for m in maps], 1)
        pos = torch.cat(
            [
                sine_position_encoding(h, w, m.shape[1], m.device, m.dtype, self.strides[i]).flatten(1).T
                + self.level_embed[i]
                for i, ((h, w), m) in enumerate(zip(shapes, maps, strict=True))
            ]
        )[None]
        reference = reference_points(shapes, tokens.device, tokens.dtype)
        for layer in self.layers:
            tokens = layer(tokens, pos, reference, shapes)
        b, _, dim = tokens.shape
        outs = [
            t.transpose(1, 2).reshape(b, dim, h, w)
            for t, (h, w) in zip(tokens.split([h * w for h, w in shapes], 1), shapes, strict=True)
        ]
        fine = self.lateral(features[0])
        fine = fine + F.interpolate(outs[-1], size=fine.shape[-2:], mode="bilinear", align_corners=False)
        return self.mask_proj(self.output(fine)), outs


class FPNPixelDecoder(nn.Module):
    """The light option: lateral 1x1 + output 3x3 convolutions, top-down from res5."""

    def __init__(self, in_channels: list[int], dim: int, batch_norm: bool = False) -> None:
        super().__init__()
        self.top = _conv_norm(in_channels[-1], dim, 3, relu=True, batch_norm=batch_norm)
        self.lateral = nn.ModuleList(
            _conv_norm(c, dim, 1, relu=False, batch_norm=batch_norm) for c in in_channels[-2::-1]
        )
        self.output = nn.ModuleList(
            _conv_norm(dim, dim, 3, relu=True, batch_norm=batch_norm) for _ in in_channels[:-1]
        )
        self.mask_proj = nn.Conv2d(dim, dim, 1)

    def forward(self, features: list[Tensor]) -> tuple[Tensor, list[Tensor]]:
        y = self.top(features[-1])
        outs = [y]
        for lateral, output, f in zip(self.lateral, self.output, features[-2::-1], strict=True):
            x = lateral(f)
            y = output(x + F.interpolate(y, size=x.shape[-2:], mode="nearest"))
            outs.append(y)
        return self.mask_proj(outs[-1]), outs[:LEVELS]
