"""DETR's sine position encoding of a feature map: normalised to [0, 2 pi] over the map (the paper), or in
input pixels, so that a pixel's encoding does not depend on the image's size.

Normalised encodings tie positions to the image's extent: a model trained on
small crops and run on whole images sees every pixel at another phase.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

SPAN = 256.0  # encodings in pixels: input pixels per period of the fastest frequency


def sine_position_encoding(
    height: int,
    width: int,
    channels: int,
    device: torch.device | None = None,
    dtype: torch.dtype = torch.float32,
    stride: int | None = None,
) -> Tensor:
    """``[channels, height, width]``: half the channels encode y, half x, as interleaved sin/cos pairs.
    ``stride``: the map's input pixels per cell, for encodings in input pixels (2 pi per ``SPAN``);
    None normalises them over the map."""
    half = channels // 2
    y = torch.arange(1, height + 1, device=device, dtype=dtype)
    x = torch.arange(1, width + 1, device=device, dtype=dtype)
    if stride is None:
        y = y / (y[-1] + 1e-6) * 2 * math.pi
        x = x / (x[-1] + 1e-6) * 2 * math.pi
    else:
        y = y * (stride * 2 * math.pi / SPAN)
        x = x * (stride * 2 * math.pi / SPAN)
    ey = _sine(y, half)[:, None, :].expand(height, width, half)
    ex = _sine(x, half)[None, :, :].expand(height, width, half)
    return torch.cat([ey, ex], dim=2).permute(2, 0, 1)


def sine_box_encoding(boxes: Tensor, channels: int, extent: tuple[int, int] | None = None) -> Tensor:
    """``[..., 4]`` boxes as fractions of the image (cx, cy, w, h) -> ``[..., 2 * channels]``: the centre
    encoded as a map's cell is (y, then x), then the size alike (DAB-DETR's anchor encoding). Over 2 pi
    per image, or with ``extent`` (the image's height, width in input pixels) 2 pi per ``SPAN`` pixels,
    as the maps' encodings in pixels are: a box then reads the same on a crop and on a whole image."""
    half = channels // 2
    phases = boxes * (2 * math.pi)
    sides = (1, 1, 1, 1) if extent is None else (extent[1] / SPAN, extent[0] / SPAN) * 2
    order = (1, 0, 3, 2)  # y before x, as in the map's encoding
    return torch.cat([_sine(phases[..., i] * sides[i], half) for i in order], -1)


def _sine(v: Tensor, half: int) -> Tensor:
    """``[...]`` phases -> ``[..., half]`` interleaved sin/cos pairs at DETR's geometric frequencies."""
    freq = torch.arange(half, device=v.device).div(2, rounding_mode="floor").to(v.dtype)
    phase = v[..., None] / 10000 ** (2 * freq / half)
    return torch.stack([phase[..., 0::2].sin(), phase[..., 1::2].cos()], dim=-1).flatten(-2)
