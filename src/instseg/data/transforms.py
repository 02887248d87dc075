"""Training augmentation: random rescale + crop, flips and colour jitter, masks moved with the image.

Rescale and crop are chosen before any mask is decoded, so a 1024x1024 image with
hundreds of objects only ever decodes the objects inside the crop window. The
flips and colour jitter are torchvision ``transforms.v2``, which move the masks
with the image. Boxes are recomputed from the final masks, so a crop never
leaves a box larger than what remains of its object.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torchvision.transforms.v2 as v2
import torchvision.transforms.v2.functional as TF
from torch import Tensor
from torchvision import tv_tensors

from instseg.data.coco import decode_window
from instseg.masks import masks_to_boxes


class TrainTransform:
    """Turn a uint8 image and its RLE objects into a float image and a training target."""

    def __init__(
        self,
        scale_range: tuple[float, float] = (1.0, 1.0),
        crop_size: int | None = None,
        hflip: bool = True,
        vflip: bool = False,
        color_jitter: float = 0.0,
        crop_min_visible: float = 0.0,
        paste: Callable[[Tensor, np.ndarray, list[int]], tuple[Tensor, np.ndarray, list[int]]] | None = None,
    ) -> None:
        if not 0 < scale_range[0] <= scale_range[1]:
            raise ValueError(f"scale_range must be 0 < low <= high, got {scale_range}")
        self.scale_range = scale_range
        self.crop_size = crop_size
        if not 0.0 <= crop_min_visible <= 1.0:
            raise ValueError(f"crop_min_visible must be in [0, 1], got {crop_min_visible}")
        self.crop_min_visible = crop_min_visible
        self.paste = paste  # e.g. data/copy_paste.py: objects pasted into the window before it is resized
        steps: list[v2.Transform] = []
        if hflip:
            steps.append(v2.RandomHorizontalFlip())
        if vflip:
            steps.append(v2.RandomVerticalFlip())
        if color_jitter > 0:
            steps.append(
                v2.ColorJitter(
                    brightness=color_jitter,
                    contrast=color_jitter,
                    saturation=color_jitter,
                    hue=min(color_jitter, 0.5) / 4,
                )
            )
        self.photometric = v2.Compose(steps) if steps else None

    def window(self, height: int, width: int) -> tuple[tuple[int, int, int, int], float]:
        """A crop window in source pixels and the scale it is resized by (log-uniform)."""
        lo, hi = self.scale_range
        scale = math.exp(math.log(lo) + (math.log(hi) - math.log(lo)) * float(torch.rand(())))
        if self.crop_size is None:
            return (0, 0, width, height), scale
        side = max(1, round(self.crop_size / scale))
        cw, ch = min(side, width), min(side, height)
        x0 = int(torch.randint(0, width - cw + 1, ()))
        y0 = int(torch.randint(0, height - ch + 1, ()))
        return (x0, y0, x0 + cw, y0 + ch), scale

    def __call__(self, image: Tensor, objects: list[dict[str, Any]]) -> tuple[Tensor, dict[str, Tensor]]:
        (x0, y0, x1, y1), scale = self.window(image.shape[1], image.shape[2])
        masks_np, labels = decode_window(objects, (x0, y0, x1, y1), self.crop_min_visible)
        window = image[:, y0:y1, x0:x1]
        if self.paste is not None:
            window, masks_np, labels = self.paste(window, masks_np, labels)
        img = tv_tensors.Image(window)
        masks = tv_tensors.Mask(torch.from_numpy(masks_np))
        size = [max(1, round((y1 - y0) * scale)), max(1, round((x1 - x0) * scale))]
        if size != list(img.shape[-2:]):
            img = TF.resize(img, size, antialias=True)
            if len(masks):
                masks = TF.resize(masks, size, interpolation=v2.InterpolationMode.NEAREST)
            else:
                masks = tv_tensors.Mask(torch.zeros((0, *size), dtype=torch.uint8))
        if self.photometric is not None:
            img, masks = self.photometric(img, masks)
        keep = masks.flatten(1).any(1).bool() if len(masks) else torch.zeros(0, dtype=torch.bool)
        masks = masks.as_subclass(Tensor)[keep]
        target = {
            "boxes": masks_to_boxes(masks.bool()),
            "labels": torch.tensor(labels, dtype=torch.int64)[keep],
            "masks": masks.to(torch.uint8),
        }
        return img.as_subclass(Tensor).float().div_(255.0), target
