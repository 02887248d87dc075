"""Multi-level RoI feature pooling.

``MultiScaleRoIPool`` is Fast R-CNN's quantised RoIPool over FPN levels, kept so
that the RoIAlign-vs-RoIPool ablation of the Mask R-CNN paper can be rerun:
torchvision ships ``roi_pool`` but only a multi-level wrapper for ``roi_align``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torchvision.ops import MultiScaleRoIAlign, roi_pool
from torchvision.ops.poolers import LevelMapper


class MultiScaleRoIPool(MultiScaleRoIAlign):
    """Same level assignment as ``MultiScaleRoIAlign`` (FPN paper, eq. 1), quantised pooling inside."""

    def forward(
        self, x: dict[str, Tensor], boxes: list[Tensor], image_shapes: list[tuple[int, int]]
    ) -> Tensor:
        features = [x[name] for name in self.featmap_names]
        if self.scales is None or self.map_levels is None:
            max_h = max(h for h, _ in image_shapes)
            scales = [2.0 ** round(math.log2(f.shape[-2] / max_h)) for f in features]
            self.scales = scales
            self.map_levels = LevelMapper(
                int(-math.log2(scales[0])),
                int(-math.log2(scales[-1])),
                canonical_scale=self.canonical_scale,
                canonical_level=self.canonical_level,
            )
        rois = torch.cat([torch.cat([torch.full_like(b[:, :1], i), b], dim=1) for i, b in enumerate(boxes)])
        levels = self.map_levels(boxes)
        out = features[0].new_zeros((rois.shape[0], features[0].shape[1], *self.output_size))
        for level, (feature, scale) in enumerate(zip(features, self.scales, strict=True)):
            idx = torch.where(levels == level)[0]
            if idx.numel():
                out[idx] = roi_pool(feature, rois[idx], self.output_size, scale).to(out.dtype)
        return out
