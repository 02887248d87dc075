"""SOLOv2 (Wang et al., NeurIPS 2020): segmenting objects by locations, with dynamic kernels.

Each FPN level is resampled to a grid; the cell holding an object's centre
predicts its class and a 1x1 convolution kernel, which is applied to one
unified mask feature map at 1/4 resolution. Duplicates are removed with
Matrix NMS, so there are no boxes anywhere until the output, where they are
taken from the masks.

Grids are given as cell sizes in input pixels rather than cell counts: SOLO's
40/36/24/16/12 cells across an 800-pixel image become 20/22/33/50/67-pixel
cells, so an image of any size (nuclei are predicted at full resolution) gets
as many cells as it needs. On SOLO's fixed input sizes the two are the same.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from instseg.config import ModelConfig
from instseg.models.backbones import build_fpn_backbone, norm_layer
from instseg.models.conv_tower import conv_tower
from instseg.models.point_head import PointFeatures, PointHead
from instseg.models.segmentation_model import SegmentationModel
from instseg.models.solov2.cells import POSITION_TERMS, KernelMasks
from instseg.models.solov2.criterion import SOLOv2Criterion
from instseg.models.solov2.postprocess import SOLOv2Postprocessor
from instseg.models.transform import ResizeNormalize


@dataclass
class SOLOv2Config(ModelConfig):
    fpn_channels: int = 256
    grid_cells: tuple[float, ...] = (20.0, 22.2, 33.3, 50.0, 66.7)  # cell size (input px) on P2..P6
    scale_ranges: tuple[float, ...] = (1, 96, 48, 192, 96, 384, 192, 768, 384, 2048)  # (lo, hi) per level
    head_channels: int = 256
    head_convs: int = 4
    mask_channels: int = 128  # width of the unified mask feature branch
    kernel_dim: int = 256  # channels of the mask features = size of each dynamic 1x1 kernel
    sigma: float = 0.2  # centre region, as a fraction of the object's box
    dice_weight: float = 3.0
    focal_alpha: float = 0.25
    focal_gamma: float = 2.0
    max_masks_per_image: int = 1000  # positive cells given a mask loss, sampled beyond this
    # LVIS-style training of the sigmoid classifier (models/federated.py): the federated loss's classes
    # per batch (ground truth + sampled by frequency ** 0.5; 0: all), and training images per class
    # (filled from the data when empty)
    federated_classes: int = 0
    class_frequencies: tuple[float, ...] = ()
    score_threshold: float = 0.1
    pre_nms_top: int = 500
    nms_kernel: Literal["gaussian", "linear"] = "gaussian"
    nms_sigma: float = 2.0
    update_threshold: float = 0.05
    # Masks only within (window x the level's largest object size + one cell) of their cell; 0: off (SOLOv2).
    mask_window: float = 0.0
    # How masks know where their instance is. "image": CoordConv x, y normalised to [-1, 1] over the
    # input (SOLOv2), so the same distance in pixels reads smaller on a larger image. "relative": no
    # absolute coordinates; each kernel also predicts a quadratic in the offset from its cell, in units
    # of position_scale cells clamped to position_reach, added to its mask logits: the same on any size.
    coordinates: Literal["image", "relative"] = "image"
    position_scale: float = 2.0
    position_reach: float = 4.0
    # PointRend (models/point_head.py): a point head re-predicts the 1/4-resolution masks' most uncertain
    # points from P2 features and the input pixels; trained on importance-sampled points of up to
    # point_masks_per_image positives, applied by subdivision from 1/4 to the input's resolution
    point_refine: bool = False
    point_head_channels: int = 128
    point_train_points: int = 196  # per mask
    point_masks_per_image: int = 64
    point_inference_points: int = 784  # re-predicted per mask and step


def light_preset() -> SOLOv2Config:
    """The paper's real-time SOLOv2-Light: smaller input (448), fewer and thinner head convolutions."""
    return SOLOv2Config(
        fpn_channels=128,
        min_size=448,
        max_size=768,
        grid_cells=(11.2, 12.4, 18.7, 28.0, 37.3),  # the 40/36/24/16/12 grids on a 448-pixel side
        scale_ranges=(1, 56, 28, 112, 56, 224, 112, 448, 224, 2048),
        head_channels=128,
        head_convs=2,
        mask_channels=64,
        kernel_dim=64,
    )


def nuclei_preset() -> SOLOv2Config:
    """Small dense objects (~7-40 px) at x1.5: fine cells, small scale ranges, 500 detections, masks
    windowed around their cell and positioned relative to it (BENCHMARKS.md)."""
    return SOLOv2Config(
        fpn_channels=96,
        scale=1.5,
        max_size=2048,
        grid_cells=(8.0, 12.0, 16.0, 32.0, 64.0),
        scale_ranges=(1, 24, 16, 48, 32, 96, 64, 192, 128, 4096),
        head_channels=96,
        head_convs=3,
        mask_channels=64,
        kernel_dim=64,
        pre_nms_top=1000,
        detections_per_image=500,
        mask_window=0.5,
        coordinates="relative",  # predicted at full resolution, larger than the training crops
    )


def rounded_ratio(a: int, b: float) -> int:
    """``round(a / b)`` (ties to even, as Python rounds) with ``floor`` and integer arithmetic only,
    so that an exported graph computes it from a symbolic size."""
    x = a / b
    up = math.floor(x + 0.5)  # ties rounded up
    tie = math.floor(up - x + 0.5)  # up - x lies in (-0.5, 0.5]: 1 exactly at a tie
    return up - tie * (up - (up // 2) * 2)  # a tie that went up to an odd number goes back down


def coord_channels(x: Tensor) -> Tensor:
    """Normalised x and y in [-1, 1], one channel each (CoordConv). ``linspace``'s values, by ``arange``:
    an export would fix ``linspace``'s length to the example image's."""
    b, _, h, w = x.shape
    ys = torch.arange(h, device=x.device, dtype=x.dtype) * (2.0 / torch.sym_max(h - 1, 1)) - 1
    xs = torch.arange(w, device=x.device, dtype=x.dtype) * (2.0 / torch.sym_max(w - 1, 1)) - 1
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([gx, gy])[None].expand(b, -1, -1, -1)


class GridHead(nn.Module):
    """Category and kernel branches, shared across levels. The kernel branch sees image coordinates
    (``coordinates="image"``), or predicts its cell's position-prior weights too ("relative")."""

    def __init__(self, cfg: SOLOv2Config, num_classes: int) -> None:
        super().__init__()
        c = cfg.head_channels
        levels = len(cfg.grid_cells)
        self.coords = cfg.coordinates == "image"
        extra = 0 if self.coords else POSITION_TERMS
        self.kernel_convs = conv_tower(
            cfg.fpn_channels + 2 * self.coords, c, cfg.head_convs, cfg.norm, levels
        )
        self.cate_convs = conv_tower(cfg.fpn_channels, c, cfg.head_convs, cfg.norm, levels)
        self.kernel_out = nn.Conv2d(c, cfg.kernel_dim + extra, 3, padding=1)
        self.cate_out = nn.Conv2d(c, num_classes, 3, padding=1)
        nn.init.normal_(self.kernel_out.weight, std=0.01)
        nn.init.zeros_(self.kernel_out.bias)
        nn.init.normal_(self.cate_out.weight, std=0.01)
        nn.init.constant_(self.cate_out.bias, -math.log((1 - 0.01) / 0.01))  # prior 0.01

    def forward(self, feature: Tensor, grid: tuple[int, int], level: int) -> tuple[Tensor, Tensor]:
        if self.coords:
            feature = torch.cat([feature, coord_channels(feature)], 1)
        x = F.interpolate(feature, size=grid, mode="bilinear", align_corners=False)
        kernels = self.kernel_out(self.kernel_convs(x, level))
        cate = self.cate_out(self.cate_convs(x[:, : x.shape[1] - 2 * self.coords], level))
        return cate, kernels


class MaskFeatures(nn.Module):
    """P2..P5 brought to 1/4 resolution and summed (P5 with image coordinates, if used), then
    projected to E channels."""

    def __init__(self, cfg: SOLOv2Config) -> None:
        super().__init__()
        c = cfg.mask_channels
        self.coords = cfg.coordinates == "image"
        self.levels = nn.ModuleList()
        for level in range(4):
            blocks: list[nn.Module] = []
            cin = cfg.fpn_channels + (2 if level == 3 and self.coords else 0)
            for k in range(max(level, 1)):
                blocks.append(conv_tower(cin if k == 0 else c, c, 1, cfg.norm))
                if level > 0:
                    blocks.append(nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False))
            self.levels.append(nn.Sequential(*blocks))
        self.project = nn.Sequential(
            nn.Conv2d(c, cfg.kernel_dim, 1, bias=False),
            norm_layer(cfg.norm)(cfg.kernel_dim),
            nn.ReLU(inplace=True),
        )

    def forward(self, features: list[Tensor]) -> Tensor:
        out = self.levels[0](features[0])
        for level in range(1, 4):
            x = features[level]
            if level == 3 and self.coords:
                x = torch.cat([x, coord_channels(x)], 1)
            y = self.levels[level](x)
            out = out + y[..., : out.shape[-2], : out.shape[-1]]
        return self.project(out)


@dataclass
class SOLOv2Outputs:
    """The network's raw predictions for a batch."""

    class_logits: list[Tensor]  # per level [B, K, S_h, S_w]
    kernels: list[Tensor]  # per level [B, D, S_h, S_w]: a kernel (E) and any position weights
    mask_features: Tensor  # [B, E, h, w] at 1/MASK_STRIDE of the padded batch
    padded: tuple[int, int]  # the padded batch's (H, W)
    points: PointFeatures | None = None  # with point_refine: the point head and its fine maps


class SOLOv2(SegmentationModel):
    """Backbone + FPN, a grid head and unified mask features; boxes are the masks' tight boxes."""

    classifier_prefixes = ("head.cate_convs.", "head.cate_out.")  # what ``train_only: classifier`` trains

    def __init__(self, cfg: SOLOv2Config, num_classes: int) -> None:
        if len(cfg.grid_cells) != 5 or len(cfg.scale_ranges) != 10:
            raise ValueError("grid_cells needs 5 values (P2..P6) and scale_ranges 10 (lo, hi per level)")
        masks = KernelMasks(cfg)
        ranges = [(cfg.scale_ranges[2 * i], cfg.scale_ranges[2 * i + 1]) for i in range(5)]
        criterion = SOLOv2Criterion(
            num_classes,
            cfg.sigma,
            ranges,
            cfg.dice_weight,
            cfg.focal_alpha,
            cfg.focal_gamma,
            cfg.max_masks_per_image,
            masks,
            cfg.federated_classes,
            cfg.class_frequencies,
            (cfg.point_train_points, cfg.point_masks_per_image),
        )
        transform = ResizeNormalize(cfg.min_size, cfg.max_size, cfg.scale)
        super().__init__(transform, criterion, SOLOv2Postprocessor(cfg, masks))
        self.cfg = cfg
        self.num_classes = num_classes
        self.backbone = build_fpn_backbone(
            cfg.backbone, cfg.norm, cfg.fpn_channels, (1, 2, 3, 4), cfg.backbone_weights
        )
        self.head = GridHead(cfg, num_classes)
        self.mask_features = MaskFeatures(cfg)
        self.point_head = (
            PointHead(cfg.fpn_channels + 3, cfg.point_head_channels) if cfg.point_refine else None
        )

    def grids(self, padded: tuple[int, int]) -> list[tuple[int, int]]:
        return [
            (torch.sym_max(1, rounded_ratio(padded[0], c)), torch.sym_max(1, rounded_ratio(padded[1], c)))
            for c in self.cfg.grid_cells
        ]

    def network(self, pixels: Tensor) -> SOLOv2Outputs:
        padded = (pixels.shape[-2], pixels.shape[-1])
        features = list(self.backbone(pixels).values())  # P2..P6
        cate, kernels = [], []
        for level, (feature, grid) in enumerate(zip(features, self.grids(padded), strict=True)):
            c, k = self.head(feature, grid, level)
            cate.append(c)
            kernels.append(k)
        points = None
        if self.point_head is not None:  # P2 and the pixels: what a 1/4-resolution mask cannot see
            points = PointFeatures(self.point_head, [features[0], pixels], padded)
        return SOLOv2Outputs(cate, kernels, self.mask_features(features[:4]), padded, points)


def build_solov2(cfg: SOLOv2Config, num_classes: int) -> SOLOv2:
    return SOLOv2(cfg, num_classes)
