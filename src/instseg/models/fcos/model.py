"""The skeleton the FCOS-based families (CondInst, YOLACT) share; each adds only its mask part.

Backbone + FPN and the FCOS head with the family's per-location mask
parameters make the network; point assignment and the detection losses
(``criterion.py``), box selection and mask assembly (``postprocess.py``) are
the same for both. A family brings one parameter-free ``FCOSMasks`` object,
which the criterion and the postprocessor share, so that training and
inference make masks the same way: its ``probs`` gives kept detections' mask
probabilities, its ``losses`` the mask terms of sampled positives.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol

from torch import Tensor, nn

from instseg.config import ModelConfig
from instseg.models.backbones import build_fpn_backbone
from instseg.models.fcos.criterion import FCOSCriterion
from instseg.models.fcos.head import FCOSHead, point_layout
from instseg.models.fcos.postprocess import FCOSPostprocessor
from instseg.models.fcos.targets import PointTargets
from instseg.models.point_head import PointFeatures, PointHead
from instseg.models.segmentation_model import SegmentationModel
from instseg.models.transform import ResizeNormalize


@dataclass
class FCOSConfig(ModelConfig):
    """The fields of every FCOS-based family; a family config adds its mask part and may change defaults."""

    fpn_channels: int = 256
    first_level: Literal[2, 3] = 3  # P3-P7 (the papers) or P2-P6 (small objects)
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
    # LVIS-style training of the sigmoid classifier (models/federated.py): the federated loss's classes
    # per batch (ground truth + sampled by frequency ** 0.5; 0: all), and training images per class
    # (filled from the data when empty)
    federated_classes: int = 0
    class_frequencies: tuple[float, ...] = ()
    # "equalized_focal": each class's own focusing factor from the gradient its positives and negatives
    # have produced (models/equalized_focal.py), for long-tailed data
    class_loss: Literal["focal", "equalized_focal"] = "focal"
    score_threshold: float = 0.05
    pre_nms_top: int = 1000  # per level
    nms: Literal["fast", "standard"] = "standard"  # YOLACT's one-matrix Fast NMS, or sequential NMS
    nms_threshold: float = 0.6
    mask_rescore: bool = True  # score x maskness (mean probability inside the mask), as SOLOv2 ranks
    # PointRend (models/point_head.py): a point head re-predicts the masks' most uncertain points from
    # the finest level and the input pixels; trained on importance-sampled points of up to
    # point_masks_per_image positives, applied by subdivision up to the input's resolution
    point_refine: bool = False
    point_head_channels: int = 128
    point_train_points: int = 196  # per mask
    point_masks_per_image: int = 64
    point_inference_points: int = 784  # re-predicted per mask and step


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


@dataclass
class FCOSOutputs:
    """The network's raw predictions for a batch; ``L`` locations over all levels, finest first."""

    class_logits: Tensor  # [B, L, K]
    ltrb: Tensor  # [B, L, 4] distances (input px) from each location to its box's sides
    quality_logits: Tensor  # [B, L] centre-ness (or IoU) logits
    mask_params: Tensor  # [B, L, E] per-location mask parameters (filters, coefficients)
    mask_input: Tensor  # [B, ...] the image-wide part of the masks
    locations: Tensor  # [L, 2] input-pixel (x, y) of each location
    levels: Tensor  # [L] pyramid level of each location
    semantic_logits: Tensor | None = None  # [B, K, h, w] auxiliary semantic head (training only)
    level_sizes: tuple[int, ...] = ()  # locations per level (``levels`` counted), for slicing without a sync
    points: PointFeatures | None = None  # with point_refine: the point head and its fine maps


class FCOSMasks(Protocol):
    """A family's mask part, shared by its criterion and its postprocessor (no parameters)."""

    stride: int  # of ``probs``
    crop_to_boxes: bool  # cut masks to their detection's box at the input resolution

    def probs(
        self, params: Tensor, mask_input: Tensor, locations: Tensor, levels: Tensor, boxes: Tensor
    ) -> Tensor:
        """Mask probabilities ``[N, h, w]`` at ``stride`` of N detections of one image."""
        ...

    def losses(
        self,
        outputs: FCOSOutputs,
        targets: list[dict[str, Tensor]],
        assigned: list[PointTargets],
        positives: list[Tensor],
    ) -> list[tuple[str, float, list[Tensor]]]:
        """(loss name, weight, per-instance values) of each mask term, for the sampled ``positives``
        (location indices) of every image."""
        ...

    def semantic_loss(self, logits: Tensor, targets: list[dict[str, Tensor]]) -> Tensor:
        """The auxiliary semantic loss, for families whose network has a semantic head."""
        ...


def level_strides(cfg: FCOSConfig) -> tuple[int, ...]:
    """Strides of the five pyramid levels the head runs on: P3-P7, or P2-P6."""
    return tuple(2 ** (cfg.first_level + i) for i in range(5))


class FCOSInstanceModel(SegmentationModel):
    """Backbone + FPN + FCOS head; the family adds ``mask_input`` and its ``FCOSMasks``."""

    @property
    def classifier_prefixes(self) -> tuple[str, ...]:
        """What ``train_only: classifier`` trains: the class tower unless the box outputs share it."""
        return ("head.cls_out.",) if self.head.box_tower is None else ("head.cls_tower.", "head.cls_out.")

    def __init__(self, cfg: FCOSConfig, num_classes: int, mask_outputs: int, masks: FCOSMasks) -> None:
        if len(cfg.size_bounds) != 4 or list(cfg.size_bounds) != sorted(cfg.size_bounds):
            raise ValueError(f"size_bounds needs 4 increasing values, got {cfg.size_bounds}")
        strides = level_strides(cfg)
        super().__init__(
            ResizeNormalize(cfg.min_size, cfg.max_size, cfg.scale),
            FCOSCriterion(cfg, strides, masks, num_classes),
            FCOSPostprocessor(cfg, masks),
        )
        self.cfg = cfg
        self.num_classes = num_classes
        self.strides = strides
        layers = (1, 2, 3, 4) if cfg.first_level == 2 else (2, 3, 4)
        extra = "maxpool" if cfg.first_level == 2 else "p6p7"
        self.backbone = build_fpn_backbone(
            cfg.backbone, cfg.norm, cfg.fpn_channels, layers, cfg.backbone_weights, extra
        )
        self.head = FCOSHead(
            cfg.fpn_channels,
            num_classes,
            strides,
            cfg.head_channels,
            cfg.head_convs,
            cfg.norm,
            extra_outputs=mask_outputs,
            shared_tower=cfg.shared_tower,
            separable=cfg.separable_head,
        )
        self.semantic: nn.Module | None = None  # a family's auxiliary semantic head on the finest level
        self.point_head = (
            PointHead(cfg.fpn_channels + 3, cfg.point_head_channels) if cfg.point_refine else None
        )

    def mask_input(self, mask_params: Tensor, features: list[Tensor]) -> tuple[Tensor, Tensor]:
        """The family's (mask parameters, image-wide mask input ``[B, ...]``) from the head's raw
        per-location parameters and the pyramid."""
        raise NotImplementedError

    def network(self, pixels: Tensor) -> FCOSOutputs:
        features = list(self.backbone(pixels).values())
        head = self.head(features)
        params, mask_input = self.mask_input(head["extra"], features)
        locations, levels = point_layout(features, self.strides)
        semantic = self.semantic(features[0]) if self.semantic is not None and self.training else None
        sizes = tuple(f.shape[-2] * f.shape[-1] for f in features)
        points = None
        if self.point_head is not None:  # the finest level and the pixels: what a coarse mask cannot see
            points = PointFeatures(
                self.point_head, [features[0], pixels], (pixels.shape[-2], pixels.shape[-1])
            )
        return FCOSOutputs(
            head["cls"],
            head["ltrb"],
            head["ctr"],
            params,
            mask_input,
            locations,
            levels,
            semantic,
            sizes,
            points,
        )
