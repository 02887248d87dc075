"""The skeleton the FCOS-based families (CondInst, YOLACT) share; each adds only its mask part.

Resize, backbone + FPN, the FCOS head with the family's per-location mask
outputs, point assignment and the detection losses, then box selection and
output assembly are the same for both. A family fills in three hooks:
``mask_input`` (its image-wide mask representation), ``mask_loss`` and
``mask_probs``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

from instseg.matching import PointTargets
from instseg.models.backbones import BackboneName, build_fpn_backbone
from instseg.models.fcos import (
    MASK_STRIDE,
    FCOSHead,
    assemble_detections,
    assign_targets,
    fcos_losses,
    level_ranges,
    ltrb_to_boxes,
    point_layout,
    select_detections,
)
from instseg.models.transform import ResizeNormalize


@dataclass
class FCOSConfig:
    """The fields of every FCOS-based family; a family config adds its mask part and may change defaults."""

    backbone: BackboneName = "resnet18"
    norm: Literal["gn", "bn", "frozen_bn"] = "gn"
    backbone_weights: str | None = None  # local torchvision state dict of the trunk
    fpn_channels: int = 256
    first_level: Literal[2, 3] = 3  # P3-P7 (the papers) or P2-P6 (small objects)
    scale: float | None = None  # fixed resize factor; None: shorter side to min_size
    min_size: int = 800
    max_size: int = 1333
    # largest box-side distance (px) separating the 5 levels (FCOS's ranges)
    size_bounds: tuple[float, float, float, float] = (64, 128, 256, 512)
    center_radius: float = 1.5  # centre sampling, in strides
    head_channels: int = 256
    head_convs: int = 4
    shared_tower: bool = False  # one tower for class, box and masks (YOLACT's head) instead of two
    separable_head: bool = False  # depthwise-separable tower convs (mobile presets)
    focal_alpha: float = 0.25
    focal_gamma: float = 2.0
    # what the centre-ness branch learns and inference ranks by: FCOS's geometric centre-ness,
    # or the IoU of the location's own predicted box with its object's (IoU-aware ranking)
    quality: Literal["centerness", "iou"] = "centerness"
    max_masks_per_image: int = 256  # positive locations given a mask loss, sampled beyond this
    score_threshold: float = 0.05
    pre_nms_top: int = 1000  # per level
    nms: Literal["fast", "standard"] = "standard"  # YOLACT's one-matrix Fast NMS, or sequential NMS
    nms_threshold: float = 0.6
    detections_per_image: int = 100
    mask_threshold: float = 0.5
    mask_rescore: bool = True  # score x maskness (mean probability inside the mask), as SOLOv2 ranks


# Small dense objects (DSB2018 nuclei, ~7-40 px) at x1.5: P2-P6, small size ranges, light heads,
# 500 detections. The FCOS part of every family's ``nuclei`` preset.
NUCLEI_FCOS = {
    "fpn_channels": 96,
    "first_level": 2,
    "scale": 1.5,
    "max_size": 2048,
    "size_bounds": (32, 64, 128, 256),
    "head_channels": 64,
    "head_convs": 3,
    "pre_nms_top": 2000,
    "detections_per_image": 500,
}


class FCOSInstanceModel(nn.Module):
    """The detection contract: ``model(images, targets)`` -> losses; ``model(images)`` -> results."""

    crop_to_boxes = False  # cut masks to their detection's box at the input resolution
    mask_stride = MASK_STRIDE  # the stride of ``mask_probs``

    def __init__(self, cfg: FCOSConfig, num_classes: int, mask_outputs: int) -> None:
        super().__init__()
        if len(cfg.size_bounds) != 4 or list(cfg.size_bounds) != sorted(cfg.size_bounds):
            raise ValueError(f"size_bounds needs 4 increasing values, got {cfg.size_bounds}")
        self.cfg = cfg
        self.num_classes = num_classes
        self.transform = ResizeNormalize(cfg.min_size, cfg.max_size, cfg.scale)
        layers = (1, 2, 3, 4) if cfg.first_level == 2 else (2, 3, 4)
        extra = "maxpool" if cfg.first_level == 2 else "p6p7"
        self.backbone = build_fpn_backbone(
            cfg.backbone, cfg.norm, cfg.fpn_channels, layers, cfg.backbone_weights, extra
        )
        self.strides = tuple(2 ** (cfg.first_level + i) for i in range(5))
        self.head = FCOSHead(
            cfg.fpn_channels,
            num_classes,
            self.strides,
            cfg.head_channels,
            cfg.head_convs,
            cfg.norm,
            extra_outputs=mask_outputs,
            shared_tower=cfg.shared_tower,
            separable=cfg.separable_head,
        )
        self.register_buffer("ranges", level_ranges(cfg.size_bounds), persistent=False)
        self.semantic: nn.Module | None = None  # a family's auxiliary semantic head on the finest level

    def mask_input(self, head: dict[str, Tensor], features: list[Tensor]) -> Tensor:
        """The image-wide part of the masks, ``[B, ...]`` (may also transform ``head["extra"]``)."""
        raise NotImplementedError

    def mask_loss(
        self,
        head: dict[str, Tensor],
        mask_input: Tensor,
        features: list[Tensor],
        targets: list[dict[str, Tensor]],
        assigned: list[PointTargets],
        locations: Tensor,
        level_of: Tensor,
    ) -> dict[str, Tensor]:
        raise NotImplementedError

    def semantic_loss(self, logits: Tensor, targets: list[dict[str, Tensor]]) -> Tensor:
        """The auxiliary semantic loss of families that have a ``semantic`` head."""
        raise NotImplementedError

    def finish_mask_losses(
        self,
        parts: list[tuple[float, list[Tensor]]],
        head: dict[str, Tensor],
        mask_input: Tensor,
        features: list[Tensor],
        targets: list[dict[str, Tensor]],
    ) -> dict[str, Tensor]:
        """``loss_mask``: the weighted means of the per-instance terms; plus ``loss_semantic`` when the
        family has a semantic head."""
        terms = [weight * torch.cat(values).mean() for weight, values in parts if values]
        if not terms:  # no positives in the batch: a zero that keeps the graph
            terms = [head["extra"].sum() * 0.0 + mask_input.sum() * 0.0]
        losses = {"loss_mask": torch.stack(terms).sum()}
        if self.semantic is not None:
            losses["loss_semantic"] = self.semantic_loss(self.semantic(features[0]), targets)
        return losses

    def mask_probs(
        self,
        extra: Tensor,
        mask_input: Tensor,
        locations: Tensor,
        levels: Tensor,
        boxes: Tensor,
    ) -> Tensor:
        """Mask probabilities ``[N, h, w]`` at ``mask_stride`` of N detections of one image."""
        raise NotImplementedError

    def sample_positives(self, assigned: PointTargets) -> Tensor:
        """Indices of the positive locations given a mask loss: all, or a random subset on crowded images."""
        pos = torch.nonzero(assigned.owner >= 0).flatten()
        if len(pos) > self.cfg.max_masks_per_image:
            pos = pos[torch.randperm(len(pos), device=pos.device)[: self.cfg.max_masks_per_image]]
        return pos

    def forward(
        self, images: list[Tensor], targets: list[dict[str, Tensor]] | None = None
    ) -> dict[str, Tensor] | list[dict[str, Tensor]]:
        if self.training and targets is None:
            raise ValueError("targets are required in training mode")
        cfg = self.cfg
        original_sizes = [tuple(im.shape[-2:]) for im in images]
        batch, targets = self.transform(images, targets)
        features = list(self.backbone(batch.tensors).values())
        head = self.head(features)
        mask_input = self.mask_input(head, features)
        locations, level_of = point_layout(features, self.strides)
        if self.training:
            radius = cfg.center_radius
            assigned = assign_targets(targets, locations, level_of, self.strides, self.ranges, radius)
            labels = [t["labels"] for t in targets]
            losses = fcos_losses(
                head, assigned, labels, locations, cfg.focal_alpha, cfg.focal_gamma, cfg.quality
            )
            mask = self.mask_loss(head, mask_input, features, targets, assigned, locations, level_of)
            return {**losses, **mask}
        return [
            self.postprocess(
                {k: v[b] for k, v in head.items()},
                mask_input[b],
                locations,
                level_of,
                batch.image_sizes[b],
                size,
            )
            for b, size in enumerate(original_sizes)
        ]

    @torch.no_grad()
    def postprocess(
        self,
        head: dict[str, Tensor],
        mask_input: Tensor,
        locations: Tensor,
        level_of: Tensor,
        resized: tuple[int, int],
        original: tuple[int, int],
    ) -> dict[str, Tensor]:
        """Box NMS first; then masks for the kept detections only, a chunk at a time."""
        cfg = self.cfg
        boxes = ltrb_to_boxes(locations, head["ltrb"])
        keep, labels, scores = select_detections(
            head["cls"],
            head["ctr"],
            boxes,
            level_of,
            cfg.score_threshold,
            cfg.pre_nms_top,
            cfg.nms_threshold,
            cfg.detections_per_image,
            cfg.nms,
        )
        boxes = boxes[keep]

        def probs(idx: Tensor) -> Tensor:
            sel = keep[idx]
            return self.mask_probs(head["extra"][sel], mask_input, locations[sel], level_of[sel], boxes[idx])

        return assemble_detections(
            probs,
            boxes,
            labels,
            scores,
            resized,
            original,
            cfg.mask_threshold,
            self.crop_to_boxes,
            cfg.mask_rescore,
            stride=self.mask_stride,
        )
