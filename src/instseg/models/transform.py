"""Resize, normalise and batch images (and their targets) inside a model, for every family.

torchvision's ``GeneralizedRCNNTransform`` does this for its detectors; instseg
adds a fixed-scale mode, because object size in microscopy (and many
industrial images) does not follow image size: "shorter side = 800" would
shrink the tiny nuclei of the largest images.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.models.detection.transform import GeneralizedRCNNTransform, resize_boxes

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class ResizeNormalize(GeneralizedRCNNTransform):
    """``scale=None``: torchvision's shorter-side resize; a number: resize every image by that factor.

    Either way the longest side is capped at ``max_size``; images are padded
    to a multiple of 32 and batched into an ``ImageList``.
    """

    def __init__(self, min_size: int, max_size: int, scale: float | None = None) -> None:
        super().__init__(min_size, max_size, image_mean=list(IMAGENET_MEAN), image_std=list(IMAGENET_STD))
        self.scale = scale

    def resize(
        self, image: Tensor, target: dict[str, Tensor] | None = None
    ) -> tuple[Tensor, dict[str, Tensor] | None]:
        if self.scale is None:
            return super().resize(image, target)
        return self.resize_to(image, target, self.output_size(*image.shape[-2:]))

    def output_size(self, height: int, width: int) -> tuple[int, int]:
        """The size an image of ``height`` x ``width`` is resized to at inference.

        Written with ``torch.sym_*`` so that an exported graph computes the same
        size from its input's symbolic shape; fixed scales round half up. The
        outer ``sym_min`` with ``max_size`` changes no value (the factor already
        caps the longer side) but tells the exporter the bound.
        """
        if self.scale is None:  # torchvision's rule: floor(side x factor)
            factor = torch.sym_min(
                self.min_size[-1] / torch.sym_min(height, width), self.max_size / torch.sym_max(height, width)
            )
            sides = (math.floor(height * factor), math.floor(width * factor))
        else:
            factor = torch.sym_min(self.scale, self.max_size / torch.sym_max(height, width))
            sides = (math.floor(height * factor + 0.5), math.floor(width * factor + 0.5))
        return tuple(torch.sym_min(self.max_size, torch.sym_max(1, side)) for side in sides)

    def resize_to(
        self,
        image: Tensor,
        target: dict[str, Tensor] | None,
        size: tuple[int, int],
        antialias: bool = False,
    ) -> tuple[Tensor, dict[str, Tensor] | None]:
        """``image`` (and its target's boxes and masks) resized to exactly ``size``."""
        h, w = image.shape[-2:]
        if size == (h, w):
            return image, target
        image = F.interpolate(
            image[None], size=size, mode="bilinear", align_corners=False, antialias=antialias
        )[0]
        if target is not None:
            target["boxes"] = resize_boxes(target["boxes"], (h, w), size)
            if "masks" in target and target["masks"].numel():
                masks = target["masks"][:, None].float()
                target["masks"] = F.interpolate(masks, size=size, mode="nearest")[:, 0].byte()
            elif "masks" in target:
                target["masks"] = target["masks"].new_zeros((0, *size))
        return image, target
