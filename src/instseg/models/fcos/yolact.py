"""YOLACT (Bolya et al., ICCV 2019): image-wide prototype masks, mixed per detection by its coefficients.

A protonet turns the finest pyramid level into k prototype masks at 1/4
resolution, once per image. The detection head predicts, at every location,
class scores, a box and k coefficients; a detection's mask is
``sigmoid(coefficients . prototypes)`` cropped to its box. Masks cost one matrix
product for all detections, which is what makes the family real-time.

Where instseg departs from the paper, and why: detections come from the
anchor-free FCOS head and point assignment shared with CondInst (no anchor
shapes to tune; FCOS matches anchor-based RetinaNet accuracy), with focal loss
rather than OHEM (no sampling ratio, and no softmax background class to
balance) and GIoU rather than smooth-L1 (scale-free, so small and large boxes
weigh alike).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from instseg.masks import box_masks, class_maps, downsample_masks
from instseg.models.conv_tower import conv_tower
from instseg.models.fcos.model import NUCLEI_FCOS, FCOSConfig, FCOSInstanceModel, FCOSOutputs, level_strides
from instseg.models.fcos.targets import PointTargets
from instseg.models.losses import dice_loss
from instseg.models.point_head import image_point_loss
from instseg.models.point_sampling import draw_generator
from instseg.models.postprocess import MASK_STRIDE


@dataclass
class YOLACTConfig(FCOSConfig):
    """FCOS fields (``FCOSConfig``, with YOLACT's input size, head depth and NMS) + the mask part."""

    min_size: int = 550
    max_size: int = 920
    head_convs: int = 2
    nms: Literal["fast", "standard"] = "fast"
    nms_threshold: float = 0.5
    num_prototypes: int = 32
    proto_channels: int = 256
    proto_convs: int = 3
    proto_refine: bool = True  # a conv after upsampling to 1/4 (the paper); off: upsample the prototypes
    mask_weight: float = 1.0  # BCE inside the ground-truth box, normalised by the box area
    dice_weight: float = 0.0  # optional Dice beside it
    semantic_weight: float = 0.0  # optional auxiliary semantic segmentation loss (the paper uses 1)


def nuclei_preset() -> YOLACTConfig:
    """Small dense objects: ``NUCLEI_FCOS`` and a light protonet on P2 (prototypes at 1/4 directly)."""
    return YOLACTConfig(**NUCLEI_FCOS, proto_channels=64, proto_convs=2)


REALTIME = {
    "backbone": "mobilenet_v3_large",
    "norm": "bn",
    "fpn_channels": 64,
    "head_channels": 64,
    "head_convs": 1,
    "proto_channels": 64,
    "proto_convs": 1,
    "proto_refine": False,
    "num_prototypes": 16,
}


def realtime_preset() -> YOLACTConfig:
    """A mobile configuration: MobileNetV3-Large, BatchNorm, a 64-channel FPN, one-conv towers."""
    return YOLACTConfig(**REALTIME, min_size=512, max_size=853)


def realtime_nuclei_preset() -> YOLACTConfig:
    """The realtime network with ``NUCLEI_FCOS``'s small-object levels (P2-P6) and 500 detections, on a
    half-width ResNet-18 and at the input's own scale.

    On DSB2018 the half-width ResNet-18 trains faster per step than MobileNetV3-Large, runs faster
    on CPU and reached a higher mask AP (BENCHMARKS.md); at x1.0 the network trained is the one
    timed at 512.
    """
    return YOLACTConfig(**{**NUCLEI_FCOS, **REALTIME, "backbone": "resnet18_half", "scale": 1.0})


class ProtoNet(nn.Module):
    """Convolutions on the finest level, brought to 1/4 resolution, then k non-negative prototypes.

    With ``proto_refine`` the features are upsampled and convolved once more at
    1/4 (the paper); without it only the k prototypes are upsampled, which
    saves the most expensive convolution of a mobile model.
    """

    def __init__(self, cfg: YOLACTConfig, stride: int) -> None:
        super().__init__()
        self.up = stride // MASK_STRIDE
        self.tower = conv_tower(cfg.fpn_channels, cfg.proto_channels, cfg.proto_convs, cfg.norm)
        refine = cfg.proto_refine and self.up > 1
        self.refine = conv_tower(cfg.proto_channels, cfg.proto_channels, 1, cfg.norm) if refine else None
        self.out = nn.Conv2d(cfg.proto_channels, cfg.num_prototypes, 1)

    def forward(self, x: Tensor) -> Tensor:
        x = self.tower(x)
        if self.refine is not None:
            x = self.refine(F.interpolate(x, scale_factor=self.up, mode="bilinear"))
        x = F.relu(self.out(x))
        if self.refine is None and self.up > 1:
            x = F.interpolate(x, scale_factor=self.up, mode="bilinear")
        return x


def widened(boxes: Tensor) -> Tensor:
    """Boxes grown by one mask cell on every side: where a detection's mask may be non-zero before the
    final crop at full resolution (bilinear upsampling near the box edge must still see real values)."""
    return boxes + boxes.new_tensor([-1.0, -1.0, 1.0, 1.0]) * MASK_STRIDE


class PrototypeMasks(nn.Module):
    """YOLACT's mask part (``FCOSMasks``): coefficients times prototypes, cut to the box."""

    stride = MASK_STRIDE
    crop_to_boxes = True

    def __init__(self, cfg: YOLACTConfig, strides: tuple[int, ...]) -> None:
        super().__init__()
        self.cfg = cfg
        self.strides = strides

    def losses(
        self,
        outputs: FCOSOutputs,
        targets: list[dict[str, Tensor]],
        assigned: list[PointTargets],
        positives: list[Tensor],
    ) -> list[tuple[str, float, list[Tensor]]]:
        """Each sampled positive's mask: BCE inside its object's box divided by the box area (+ Dice)."""
        cfg = self.cfg
        size = tuple(outputs.mask_input.shape[-2:])
        bce, dice, point = [], [], []
        for b, (t, a, pos) in enumerate(zip(targets, assigned, positives, strict=True)):
            if len(pos) == 0:
                continue
            owner = a.owner[pos]
            logits = (outputs.mask_params[b, pos] @ outputs.mask_input[b].flatten(1)).view(-1, *size)
            gt = downsample_masks(t["masks"], MASK_STRIDE, size)[owner]
            inside = box_masks(t["boxes"][owner], size, MASK_STRIDE).to(logits.dtype)
            pixel = F.binary_cross_entropy_with_logits(logits, gt, reduction="none")
            bce.append((pixel * inside).sum((1, 2)) / inside.sum((1, 2)).clamp(min=1))
            if cfg.dice_weight > 0:
                dice.append(dice_loss(logits.masked_fill(inside == 0, -30.0), gt))
            if outputs.points is not None:  # each positive weighs its image's mean point loss
                sizes = cfg.point_train_points, cfg.point_masks_per_image
                generator = draw_generator(t, logits.device)
                # cut to the box and a cell as inference cuts them (probability 1e-6 outside)
                near = box_masks(widened(t["boxes"][owner]), size, MASK_STRIDE)
                coarse = logits.masked_fill(near == 0, math.log(1e-6))
                loss = image_point_loss(
                    outputs.points.image(b), coarse, None, t["masks"][owner], *sizes, generator
                )
                point.append(loss.expand(len(pos)))
        terms = [("loss_mask", cfg.mask_weight, bce), ("loss_dice", cfg.dice_weight, dice)]
        return terms + ([("loss_point", 1.0, point)] if outputs.points is not None else [])

    def semantic_loss(self, logits: Tensor, targets: list[dict[str, Tensor]]) -> Tensor:
        """Per-class BCE against the union of that class's masks, at the finest level (training only)."""
        wanted = class_maps(targets, logits.shape[1], self.strides[0], tuple(logits.shape[-2:]))
        return self.cfg.semantic_weight * F.binary_cross_entropy_with_logits(logits, wanted.to(logits))

    def probs(
        self, params: Tensor, mask_input: Tensor, locations: Tensor, levels: Tensor, boxes: Tensor
    ) -> Tensor:
        """One matrix product for all detections, cut to their ``widened`` boxes."""
        size = tuple(mask_input.shape[-2:])
        probs = (params @ mask_input.flatten(1)).sigmoid().view(-1, *size)
        return probs * box_masks(widened(boxes), size, MASK_STRIDE)


class YOLACT(FCOSInstanceModel):
    """FCOS + k mask coefficients per location + a protonet; boxes are the predicted boxes."""

    def __init__(self, cfg: YOLACTConfig, num_classes: int) -> None:
        super().__init__(cfg, num_classes, cfg.num_prototypes, PrototypeMasks(cfg, level_strides(cfg)))
        self.protonet = ProtoNet(cfg, self.strides[0])
        self.semantic = nn.Conv2d(cfg.fpn_channels, num_classes, 1) if cfg.semantic_weight > 0 else None

    def mask_input(self, mask_params: Tensor, features: list[Tensor]) -> tuple[Tensor, Tensor]:
        return torch.tanh(mask_params), self.protonet(features[0])  # coefficients in [-1, 1]


def build_yolact(cfg: YOLACTConfig, num_classes: int) -> YOLACT:
    return YOLACT(cfg, num_classes)
