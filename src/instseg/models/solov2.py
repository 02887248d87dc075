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

from instseg.models.backbones import BackboneName, build_fpn_backbone, norm_layer
from instseg.models.conv_tower import conv_tower
from instseg.models.nms import matrix_nms
from instseg.models.solov2_cells import POSITION_TERMS, cell_windows, relative_position_logits
from instseg.models.solov2_targets import SOLOv2Criterion
from instseg.models.transform import ResizeNormalize
from instseg.structures import detections_from_masks


@dataclass
class SOLOv2Config:
    backbone: BackboneName = "resnet18"
    norm: Literal["gn", "bn", "frozen_bn"] = "gn"
    backbone_weights: str | None = None  # local torchvision state dict of the trunk
    fpn_channels: int = 256
    scale: float | None = None  # fixed resize factor; None: shorter side to min_size
    min_size: int = 800
    max_size: int = 1333
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
    score_threshold: float = 0.1
    mask_threshold: float = 0.5
    pre_nms_top: int = 500
    nms_kernel: Literal["gaussian", "linear"] = "gaussian"
    nms_sigma: float = 2.0
    update_threshold: float = 0.05
    detections_per_image: int = 100
    # Masks only within (window x the level's largest object size + one cell) of their cell; 0: off (SOLOv2).
    mask_window: float = 0.0
    # How masks know where their instance is. "image": CoordConv x, y normalised to [-1, 1] over the
    # input (SOLOv2), so the same distance in pixels reads smaller on a larger image. "relative": no
    # absolute coordinates; each kernel also predicts a quadratic in the offset from its cell, in units
    # of position_scale cells clamped to position_reach, added to its mask logits: the same on any size.
    coordinates: Literal["image", "relative"] = "image"
    position_scale: float = 2.0
    position_reach: float = 4.0


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


def coord_channels(x: Tensor) -> Tensor:
    """Normalised x and y in [-1, 1], one channel each (CoordConv)."""
    b, _, h, w = x.shape
    ys = torch.linspace(-1, 1, h, device=x.device, dtype=x.dtype)
    xs = torch.linspace(-1, 1, w, device=x.device, dtype=x.dtype)
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


class SOLOv2(nn.Module):
    """The detection contract: ``model(images, targets)`` -> losses; ``model(images)`` -> results."""

    def __init__(self, cfg: SOLOv2Config, num_classes: int) -> None:
        super().__init__()
        if len(cfg.grid_cells) != 5 or len(cfg.scale_ranges) != 10:
            raise ValueError("grid_cells needs 5 values (P2..P6) and scale_ranges 10 (lo, hi per level)")
        self.cfg = cfg
        self.num_classes = num_classes
        self.transform = ResizeNormalize(cfg.min_size, cfg.max_size, cfg.scale)
        self.backbone = build_fpn_backbone(
            cfg.backbone, cfg.norm, cfg.fpn_channels, (1, 2, 3, 4), cfg.backbone_weights
        )
        self.head = GridHead(cfg, num_classes)
        self.mask_features = MaskFeatures(cfg)
        ranges = [(cfg.scale_ranges[2 * i], cfg.scale_ranges[2 * i + 1]) for i in range(5)]
        self.criterion = SOLOv2Criterion(
            num_classes,
            cfg.sigma,
            ranges,
            cfg.dice_weight,
            cfg.focal_alpha,
            cfg.focal_gamma,
            cfg.max_masks_per_image,
            self.mask_logits,
        )

    @property
    def window_radii(self) -> list[float]:
        """Per level: how far (input px) from its cell an object's pixels can lie, given its size range."""
        hi = self.cfg.scale_ranges[1::2]
        return [self.cfg.mask_window * h + c for h, c in zip(hi, self.cfg.grid_cells, strict=True)]

    def mask_logits(
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

    def grids(self, padded: tuple[int, int]) -> list[tuple[int, int]]:
        return [(max(1, round(padded[0] / c)), max(1, round(padded[1] / c))) for c in self.cfg.grid_cells]

    def forward(
        self, images: list[Tensor], targets: list[dict[str, Tensor]] | None = None
    ) -> dict[str, Tensor] | list[dict[str, Tensor]]:
        if self.training and targets is None:
            raise ValueError("targets are required in training mode")
        original_sizes = [tuple(im.shape[-2:]) for im in images]
        batch, targets = self.transform(images, targets)
        padded = tuple(batch.tensors.shape[-2:])
        features = list(self.backbone(batch.tensors).values())  # P2..P6
        cate, kernels = [], []
        for level, (feature, grid) in enumerate(zip(features, self.grids(padded), strict=True)):
            c, k = self.head(feature, grid, level)
            cate.append(c)
            kernels.append(k)
        mask_feats = self.mask_features(features[:4])
        if self.training:
            return self.criterion(cate, kernels, mask_feats, targets, padded)
        return [
            self.postprocess(
                [c[b] for c in cate], [k[b] for k in kernels], mask_feats[b], batch.image_sizes[b], size
            )
            for b, size in enumerate(original_sizes)
        ]

    @torch.no_grad()
    def postprocess(
        self,
        cate: list[Tensor],
        kernels: list[Tensor],
        mask_feats: Tensor,
        resized: tuple[int, int],
        original: tuple[int, int],
    ) -> dict[str, Tensor]:
        """Point NMS on the grids, score threshold, masks for the candidates only, Matrix NMS, top-k."""
        cfg = self.cfg
        scores, kerns, min_area = [], [], []
        for level, (c, k) in enumerate(zip(cate, kernels, strict=True)):
            heat = c.sigmoid()
            peak = F.max_pool2d(heat[None], 2, stride=1, padding=1)[0, :, : heat.shape[1], : heat.shape[2]]
            scores.append((heat * (peak == heat)).flatten(1).T)  # [cells, K]
            kerns.append(k.flatten(1).T)
            min_area.append(torch.full((heat.shape[1] * heat.shape[2],), cfg.grid_cells[level] / 4))
        scores, kerns, min_area = (
            torch.cat(scores),
            torch.cat(kerns),
            torch.cat(min_area).to(mask_feats.device),
        )
        grids = [(c.shape[-2], c.shape[-1]) for c in cate]
        cells, labels = torch.nonzero(scores > cfg.score_threshold, as_tuple=True)
        cand = scores[cells, labels]
        if len(cand) > cfg.pre_nms_top:
            top = torch.topk(cand, cfg.pre_nms_top).indices
            cells, labels, cand = cells[top], labels[top], cand[top]
        soft = self.mask_logits(kerns[cells], cells, grids, mask_feats).sigmoid()
        hard = soft > cfg.mask_threshold
        area = hard.flatten(1).sum(1).float()
        keep = area > min_area[cells]
        soft, hard, area, labels, cand = soft[keep], hard[keep], area[keep], labels[keep], cand[keep]
        maskness = (soft * hard).flatten(1).sum(1) / area.clamp(min=1)
        order = torch.argsort(cand * maskness, descending=True)
        soft, hard, labels = soft[order], hard[order], labels[order]
        decayed = matrix_nms(hard, labels, (cand * maskness)[order], cfg.nms_kernel, cfg.nms_sigma)
        keep = torch.nonzero(decayed >= cfg.update_threshold).flatten()
        keep = keep[torch.argsort(decayed[keep], descending=True)][: cfg.detections_per_image]
        return detections_from_masks(
            soft[keep], labels[keep], decayed[keep], resized, original, cfg.mask_threshold
        )


def build_solov2(cfg: SOLOv2Config, num_classes: int) -> SOLOv2:
    return SOLOv2(cfg, num_classes)
