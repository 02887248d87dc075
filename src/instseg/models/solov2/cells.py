"""Where a SOLOv2 grid cell lies on the mask map (its centre, window and relative-position prior), and
the mask its kernel makes there (``KernelMasks``, shared by the criterion and the postprocessor).

Cells are indexed over all levels flattened in order, as the criterion and the
postprocessor gather them. All distances are in input pixels, so they mean the
same on a 256-pixel training crop and a 1300-pixel test image.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from instseg.models.postprocess import MASK_STRIDE

if TYPE_CHECKING:
    from instseg.models.solov2.model import SOLOv2Config

# offsets of the prior: dx, dy, dx^2, dy^2, dx*dy (a quadratic form: a Gaussian envelope in logit space)
POSITION_TERMS = 5


def cell_centres(
    cells: Tensor, grids: list[tuple[int, int]], size: tuple[int, int], stride: int = MASK_STRIDE
) -> tuple[Tensor, Tensor, Tensor]:
    """Level ``[N]`` and centre ``cy``, ``cx`` ``[N]`` (input px) of each cell, on CPU.

    ``size`` is the mask map's; a level's cells tile the padded input it covers.
    """
    h, w = size
    starts = torch.tensor([0] + [gh * gw for gh, gw in grids]).cumsum(0)
    level = torch.bucketize(cells.cpu(), starts[1:], right=True)
    local = cells.cpu() - starts[level]
    gh = torch.tensor([g[0] for g in grids])[level]
    gw = torch.tensor([g[1] for g in grids])[level]
    cy = ((local // gw).float() + 0.5) * (h * stride / gh)
    cx = ((local % gw).float() + 0.5) * (w * stride / gw)
    return level, cy, cx


def pixel_centres(n: int, stride: int) -> Tensor:
    """Input-pixel centres of ``n`` mask-map pixels along one axis."""
    return (torch.arange(n, dtype=torch.float32) + 0.5) * stride


def cell_windows(
    cells: Tensor,
    grids: list[tuple[int, int]],
    size: tuple[int, int],
    radii: list[float],
    stride: int = MASK_STRIDE,
) -> tuple[Tensor, Tensor]:
    """Rows ``[N, h]`` and columns ``[N, w]`` of the ``size`` map inside each cell's window.

    The window is their outer product; it is returned as two vectors so that it
    can be applied by broadcasting without building ``[N, h, w]``.
    """
    level, cy, cx = cell_centres(cells, grids, size, stride)
    r = torch.tensor(radii)[level]
    rows = (pixel_centres(size[0], stride)[None, :] - cy[:, None]).abs() <= r[:, None]
    cols = (pixel_centres(size[1], stride)[None, :] - cx[:, None]).abs() <= r[:, None]
    return rows.to(cells.device), cols.to(cells.device)


def relative_position_logits(
    weights: Tensor,
    cells: Tensor,
    grids: list[tuple[int, int]],
    size: tuple[int, int],
    scales: list[float],
    reach: float,
    stride: int = MASK_STRIDE,
) -> Tensor:
    """``[N, h, w]``: each cell's quadratic in its pixels' offset from the cell, with its own ``weights``.

    Offsets are divided by the level's ``scales`` (input px) and clamped to
    ``reach``, so the prior takes the same values whatever the input's size and
    stays bounded far from the cell. ``weights`` ``[N, 5]`` multiply dx, dy,
    dx^2, dy^2 and dx*dy: with a negative-definite quadratic part this is a
    Gaussian envelope (centre, size and orientation per instance) added to the
    kernel's logits, which tells two look-alike neighbours apart by where they
    are rather than by where they are in the image.
    """
    level, cy, cx = cell_centres(cells, grids, size, stride)
    scale = torch.tensor(scales)[level]
    dy = ((pixel_centres(size[0], stride)[None, :] - cy[:, None]) / scale[:, None]).clamp(-reach, reach)
    dx = ((pixel_centres(size[1], stride)[None, :] - cx[:, None]) / scale[:, None]).clamp(-reach, reach)
    dy, dx = dy.to(weights)[:, :, None], dx.to(weights)[:, None, :]  # [N, h, 1], [N, 1, w]
    q = weights[:, :, None, None]
    return q[:, 0] * dx + q[:, 1] * dy + q[:, 2] * dx * dx + q[:, 3] * dy * dy + q[:, 4] * dx * dy


class KernelMasks(nn.Module):
    """The masks of grid cells' kernels on one image's mask features (no parameters)."""

    def __init__(self, cfg: SOLOv2Config) -> None:
        super().__init__()
        self.cfg = cfg

    @property
    def window_radii(self) -> list[float]:
        """Per level: how far (input px) from its cell an object's pixels can lie, given its size range."""
        hi = self.cfg.scale_ranges[1::2]
        return [self.cfg.mask_window * h + c for h, c in zip(hi, self.cfg.grid_cells, strict=True)]

    def logits(
        self, kernels: Tensor, cells: Tensor, grids: list[tuple[int, int]], mask_feats: Tensor
    ) -> Tensor:
        """``[N, h, w]`` mask logits of N cells' kernels ``[N, D]`` on one image's mask features."""
        cfg = self.cfg
        e, h, w = mask_feats.shape
        logits = (kernels[:, :e] @ mask_feats.flatten(1)).view(-1, h, w)
        if cfg.coordinates == "relative":
            scales = [cfg.position_scale * c for c in cfg.grid_cells]
            logits = logits + relative_position_logits(
                kernels[:, e:], cells, grids, (h, w), scales, cfg.position_reach
            )
        if cfg.mask_window > 0:
            rows_in, cols_in = cell_windows(cells, grids, (h, w), self.window_radii)
            logits = logits.masked_fill(~rows_in[:, :, None], -30.0).masked_fill(~cols_in[:, None, :], -30.0)
        return logits
