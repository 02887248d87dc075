"""Crop layers for automatic mask generation: the image again as overlapping crops, each its own grid.

Layer 0 is the whole image; layer ``i`` cuts it into ``2^i x 2^i`` crops that
overlap, each embedded on its own and prompted with a grid of
``points_per_side / downscale^i`` points. An encoder that resizes its input
(the ViT presets) sees small objects larger in a crop; one that keeps the
input's scale (``nuclei``) gets a denser grid of points. A mask that touches
a crop's edge inside the image is cut by it and dropped: the overlapping
crop or the layer above sees it whole. Across crops, box NMS keeps the mask
from the smaller crop (the closer view), then the higher predicted IoU.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from torchvision.ops import nms

EDGE_TOLERANCE = 20.0  # px: a box this close to an inner crop edge counts as cut


@dataclass(frozen=True)
class Crop:
    layer: int
    x0: int
    y0: int
    x1: int
    y1: int


def crop_layers(size: tuple[int, int], layers: int, overlap: float) -> list[Crop]:
    """The whole image, then per layer ``i`` a ``2^i x 2^i`` tiling of an image of ``size`` (h, w)
    whose neighbours overlap by ``overlap`` of the shorter side, halved per layer."""
    h, w = size
    crops = [Crop(0, 0, 0, w, h)]
    for layer in range(1, layers + 1):
        n = 2**layer
        lap = int(overlap * min(h, w) * 2 / n)
        cw, ch = math.ceil((lap * (n - 1) + w) / n), math.ceil((lap * (n - 1) + h) / n)
        for i in range(n):
            for j in range(n):
                x0, y0 = (cw - lap) * j, (ch - lap) * i
                crops.append(Crop(layer, x0, y0, min(x0 + cw, w), min(y0 + ch, h)))
    return crops


def cut_by_crop(boxes: Tensor, crop: Crop, size: tuple[int, int]) -> Tensor:
    """Which ``boxes`` (x0, y0, x1, y1, in the crop's pixels) touch an edge of ``crop`` that is not an
    edge of the image of ``size`` (h, w)."""
    h, w = size
    edges = torch.tensor([0.0, 0.0, crop.x1 - crop.x0, crop.y1 - crop.y0])
    inner = torch.tensor([crop.x0 > 0, crop.y0 > 0, crop.x1 < w, crop.y1 < h])
    near = (boxes.float().cpu() - edges).abs() <= EDGE_TOLERANCE
    return (near & inner).any(dim=1)


def merge_crops(
    results: list[tuple[Crop, dict[str, Tensor]]], size: tuple[int, int], cfg: Any
) -> dict[str, Tensor]:
    """Each crop's masks back at their place in the image of ``size`` (h, w); cut masks dropped, box NMS
    across crops (smaller crops first, then predicted IoU), at most ``cfg.detections_per_image``."""
    boxes, keys, kept = [], [], []
    for crop, result in results:
        whole = ~cut_by_crop(result["boxes"], crop, size)  # layer 0 has no inner edge
        for i in torch.nonzero(whole).flatten().tolist():
            box = result["boxes"][i].cpu()
            boxes.append(box + torch.tensor([crop.x0, crop.y0, crop.x0, crop.y0], dtype=box.dtype))
            score = float(result["scores"][i])
            keys.append(crop.layer + min(max(score, 0.0), 1.0))
            kept.append((crop, result["masks"][i], score))
    h, w = size
    if not kept:
        empty = torch.zeros(0)
        return {
            "boxes": empty.reshape(0, 4),
            "labels": empty.long(),
            "scores": empty,
            "masks": torch.zeros(0, h, w, dtype=torch.bool),
        }
    order = nms(torch.stack(boxes).float(), torch.tensor(keys), cfg.nms_threshold)
    order = sorted(order.tolist(), key=lambda i: -kept[i][2])[: cfg.detections_per_image]
    masks = torch.zeros(len(order), h, w, dtype=torch.bool)
    for row, i in enumerate(order):
        crop, mask, _ = kept[i]
        masks[row, crop.y0 : crop.y1, crop.x0 : crop.x1] = mask.cpu()
    return {
        "boxes": torch.stack([boxes[i] for i in order]).float(),
        "labels": torch.ones(len(order), dtype=torch.int64),
        "scores": torch.tensor([kept[i][2] for i in order]),
        "masks": masks,
    }
