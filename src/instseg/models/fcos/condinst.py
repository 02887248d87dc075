"""CondInst (Tian et al., ECCV 2020): FCOS detections, each with its own dynamically generated mask FCN.

For every location FCOS marks positive, a controller on the box tower predicts
the parameters of a tiny mask head. That head runs on one shared mask feature
map (at the finest pyramid level) concatenated with coordinates relative to
the location, so masks are neither cropped to a box nor limited to a fixed RoI
resolution. Inference: box NMS first, then masks for the kept detections only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from instseg.distributed import mean_over_ranks
from instseg.masks import class_maps, downsample_masks
from instseg.models.conv_tower import conv_tower
from instseg.models.dynamic_mask_head import dynamic_mask_logits, num_parameters
from instseg.models.fcos.model import NUCLEI_FCOS, FCOSConfig, FCOSInstanceModel, FCOSOutputs, level_strides
from instseg.models.fcos.targets import PointTargets, feature_locations
from instseg.models.losses import dice_loss, focal_loss_sum
from instseg.models.point_head import image_point_loss
from instseg.models.point_sampling import draw_generator
from instseg.models.postprocess import MASK_STRIDE


@dataclass
class MaskWindow:
    """Mask logits of some instances on equal-sized windows of the mask-stride map."""

    index: Tensor  # [n] positions of these instances among those asked for
    logits: Tensor  # [n, h, w] at the mask stride
    top: Tensor  # [n] window origin on the mask map (may be negative: windows run off the map)
    left: Tensor

    def _cells(self, pad: int) -> tuple[Tensor, Tensor, Tensor]:
        """Instance, row and column indices of every window cell, on maps padded by ``pad``."""
        h, w = self.logits.shape[-2:]
        device = self.logits.device
        rows = self.top[:, None] + torch.arange(h, device=device) + pad
        cols = self.left[:, None] + torch.arange(w, device=device) + pad
        n = torch.arange(rows.shape[0], device=device)[:, None, None]
        return n, rows[:, :, None], cols[:, None, :]

    def crop(self, maps: Tensor) -> Tensor:
        """The same windows cut from ``maps`` [n, H, W] (zero outside them)."""
        pad = max(self.logits.shape[-2:])
        return F.pad(maps, (pad,) * 4)[self._cells(pad)]

    def paste(self, values: Tensor, size: tuple[int, int], fill: float = 0.0) -> Tensor:
        """``values`` [n, h, w] (shaped like the windows) placed at the windows on maps of ``size``
        filled with ``fill``."""
        pad = max(self.logits.shape[-2:])
        canvas = values.new_full((values.shape[0], size[0] + 2 * pad, size[1] + 2 * pad), fill)
        canvas[self._cells(pad)] = values
        return canvas[:, pad : pad + size[0], pad : pad + size[1]]


@dataclass
class CondInstConfig(FCOSConfig):
    """FCOS fields (``FCOSConfig``; ``size_bounds`` also scale the relative coordinates) + the mask part."""

    mask_branch_channels: int = 128
    mask_branch_convs: int = 4
    mask_channels: int = 8  # mask branch output = dynamic head input (plus 2 coordinates)
    dynamic_width: int = 8
    dynamic_layers: int = 3
    dice_weight: float = 1.0
    # output stride of the masks: 4 (the paper), or 2: the dynamic head runs on the mask features
    # upsampled x2, so a 10-pixel object gets 5 mask cells across instead of 2-3
    mask_stride: Literal[2, 4] = 4
    mask_weight: float = 0.0  # optional mask BCE beside Dice
    # optional auxiliary semantic segmentation on the finest level: focal loss per class against the
    # union of its masks (the paper's "w/ sem. loss"), training only
    semantic_weight: float = 0.0


def nuclei_preset() -> CondInstConfig:
    """Small dense objects: ``NUCLEI_FCOS``, a light mask branch, BCE beside Dice and IoU-aware ranking
    (each measured on DSB2018 in BENCHMARKS.md)."""
    return CondInstConfig(
        **NUCLEI_FCOS, mask_branch_channels=64, mask_branch_convs=3, mask_weight=1.0, quality="iou"
    )


class MaskBranch(nn.Module):
    """The three finest levels, refined, resized to the finest and summed; a conv tower; C output maps."""

    def __init__(self, cfg: CondInstConfig) -> None:
        super().__init__()
        c = cfg.mask_branch_channels
        self.refine = nn.ModuleList([conv_tower(cfg.fpn_channels, c, 1, cfg.norm) for _ in range(3)])
        self.tower = conv_tower(c, c, cfg.mask_branch_convs, cfg.norm)
        self.out = nn.Conv2d(c, cfg.mask_channels, 1)

    def forward(self, features: list[Tensor]) -> Tensor:
        x = self.refine[0](features[0])
        for refine, f in zip(self.refine[1:], features[1:3], strict=True):
            y = refine(f)
            x = x + F.interpolate(y, size=x.shape[-2:], mode="bilinear")
        return self.out(self.tower(x))


class SemanticHead(nn.Module):
    """Two convs and class logits on the finest level: its loss shapes the features the mask branch reads."""

    def __init__(self, cfg: CondInstConfig, num_classes: int, prior: float = 0.01) -> None:
        super().__init__()
        self.tower = conv_tower(cfg.fpn_channels, cfg.mask_branch_channels, 2, cfg.norm)
        self.logits = nn.Conv2d(cfg.mask_branch_channels, num_classes, 1)
        nn.init.constant_(self.logits.bias, -math.log((1 - prior) / prior))

    def forward(self, finest: Tensor) -> Tensor:
        return self.logits(self.tower(finest))


class DynamicMasks(nn.Module):
    """CondInst's mask part (``FCOSMasks``): each instance's dynamic head on the shared mask features."""

    crop_to_boxes = False

    def __init__(self, cfg: CondInstConfig, strides: tuple[int, ...]) -> None:
        super().__init__()
        self.cfg = cfg
        self.strides = strides
        # each level's upper size bound, kept in Python: an exported graph must not read it from a buffer
        self.upper_bounds = [*cfg.size_bounds, math.inf]
        soi = [*cfg.size_bounds, 2 * cfg.size_bounds[-1]]
        self.register_buffer("soi", torch.tensor(soi), persistent=False)

    @property
    def stride(self) -> int:
        return self.cfg.mask_stride

    @property
    def head_stride(self) -> int:
        """Where the dynamic head runs: the mask branch's stride, or finer when masks are asked for at 1/2."""
        return self.cfg.mask_stride if self.cfg.mask_stride < MASK_STRIDE else self.strides[0]

    def size(self, mask_input: Tensor) -> tuple[int, int]:
        """The mask map's size for one image's mask features ``[C, h, w]``."""
        up = self.strides[0] // self.cfg.mask_stride
        return (mask_input.shape[-2] * up, mask_input.shape[-1] * up)

    def windows(
        self, params: Tensor, mask_feats: Tensor, locations: Tensor, levels: Tensor
    ) -> list[MaskWindow]:
        """Dynamic-head logits of N instances of one image at the mask stride, each on the window its
        level allows.

        A location only owns objects whose box sides all lie within its level's
        upper size bound, so the object's mask lies inside a square of that
        half-width around it: outside it the mask is background by
        construction, and the head runs on ~(2 bound)^2 pixels instead of the
        whole map. Levels whose window would cover the map use the map.
        """
        cfg = self.cfg
        stride = self.head_stride
        if stride < self.strides[0]:
            up_feats = self.strides[0] // stride
            mask_feats = F.interpolate(mask_feats[None], scale_factor=up_feats, mode="bilinear")[0]
        up = stride // cfg.mask_stride
        h, w = mask_feats.shape[-2:]
        out = []
        # an exported graph visits every level (some with no instance), and where a level's window may
        # cover the map it computes both readings and picks one by the map's size, read as a tensor
        exporting = torch.compiler.is_exporting()
        for level in range(len(self.strides)) if exporting else torch.unique(levels).tolist():
            idx = torch.nonzero(levels == level).flatten()
            bound = self.upper_bounds[level]
            radius = None if math.isinf(bound) else math.ceil(bound / stride) + 1
            if radius is not None and not exporting and 2 * radius + 1 >= max(h, w):
                radius = None  # the window would cover the map: use the map
            win = self._window(idx, params[idx], mask_feats, locations[idx], level, radius)
            if exporting and radius is not None:
                whole = self._window(idx, params[idx], mask_feats, locations[idx], level, None)
                side = torch.full((), 2 * radius + 1, device=mask_feats.device)
                covers = (torch.full((), h, device=side.device) <= side) & (
                    torch.full((), w, device=side.device) <= side
                )
                pasted = win.paste(win.logits, (h * up, w * up), fill=-math.inf)  # sigmoid 0 outside
                win = MaskWindow(idx, torch.where(covers, whole.logits, pasted), whole.top, whole.left)
            out.append(win)
        return out

    def _window(
        self, idx: Tensor, params: Tensor, mask_feats: Tensor, loc: Tensor, level: int, radius: int | None
    ) -> MaskWindow:
        """One level's instances (``idx``) on windows of ``radius`` cells around them, or on the whole
        map (``None``)."""
        cfg, stride = self.cfg, self.head_stride
        up = stride // cfg.mask_stride
        h, w = mask_feats.shape[-2:]
        if radius is None:
            feats = mask_feats.flatten(1)
            pixels = feature_locations([(h, w)], [stride], mask_feats.device).T
            top = left = torch.zeros(idx.shape[0], dtype=torch.int64, device=loc.device)
            shape = (h, w)
        else:
            span = torch.arange(-radius, radius + 1, device=loc.device)
            rows = (loc[:, 1] / stride).long()[:, None] + span  # [n, S], may run off the map
            cols = (loc[:, 0] / stride).long()[:, None] + span
            padded = F.pad(mask_feats, (radius,) * 4)
            feats = padded[:, rows[:, :, None] + radius, cols[:, None, :] + radius].transpose(0, 1)
            feats = feats.flatten(2)  # [n, C, S*S]
            side = 2 * radius + 1
            px = ((cols.float() + 0.5) * stride)[:, None, :].expand(-1, side, -1)
            py = ((rows.float() + 0.5) * stride)[:, :, None].expand(-1, -1, side)
            pixels = torch.stack([px, py], 1).flatten(2)  # [n, 2, S*S]
            top, left, shape = rows[:, 0], cols[:, 0], (side, side)
        logits = dynamic_mask_logits(
            params,
            feats,
            pixels,
            loc,
            self.soi[level].expand(idx.shape[0]),
            cfg.dynamic_width,
            cfg.dynamic_layers,
        ).view(idx.shape[0], *shape)
        if up > 1:
            logits = F.interpolate(logits[:, None], scale_factor=up, mode="bilinear")[:, 0]
        return MaskWindow(idx, logits, top * up, left * up)

    def losses(
        self,
        outputs: FCOSOutputs,
        targets: list[dict[str, Tensor]],
        assigned: list[PointTargets],
        positives: list[Tensor],
    ) -> list[tuple[str, float, list[Tensor]]]:
        """Dice (+ BCE) of each sampled positive's mask, on its window, against its object's mask."""
        cfg = self.cfg
        dice, bce, point = [], [], []
        for b, (t, a, pos) in enumerate(zip(targets, assigned, positives, strict=True)):
            if len(pos) == 0:
                continue
            mask_input = outputs.mask_input[b]
            small = downsample_masks(t["masks"], cfg.mask_stride, self.size(mask_input))
            params, locations = outputs.mask_params[b, pos], outputs.locations[pos]
            for win in self.windows(params, mask_input, locations, outputs.levels[pos]):
                gt = win.crop(small[a.owner[pos[win.index]]])
                dice.append(dice_loss(win.logits, gt))
                if cfg.mask_weight > 0:
                    pixel = F.binary_cross_entropy_with_logits(win.logits, gt, reduction="none")
                    bce.append(pixel.mean((1, 2)))
                if outputs.points is not None:  # each positive weighs its window group's mean point loss
                    point.append(self.point_loss(outputs, b, win, t["masks"][a.owner[pos[win.index]]], t))
        terms = [("loss_dice", cfg.dice_weight, dice), ("loss_mask", cfg.mask_weight, bce)]
        return terms + ([("loss_point", 1.0, point)] if outputs.points is not None else [])

    def point_loss(
        self, outputs: FCOSOutputs, b: int, win: MaskWindow, masks: Tensor, target: dict[str, Tensor]
    ) -> Tensor:
        """The point head's loss on up to ``point_masks_per_image`` of one window group, each window's
        logits covering its own region of the image; one value per instance of the group."""
        assert outputs.points is not None
        cfg = self.cfg
        h, w = win.logits.shape[-2:]
        top, left = win.top.to(win.logits.dtype), win.left.to(win.logits.dtype)
        regions = torch.stack([left, top, left + w, top + h], dim=1) * cfg.mask_stride
        sizes = cfg.point_train_points, cfg.point_masks_per_image
        generator = draw_generator(target, win.logits.device)
        loss = image_point_loss(outputs.points.image(b), win.logits, regions, masks, *sizes, generator)
        return loss.expand(len(win.index))

    def semantic_loss(self, logits: Tensor, targets: list[dict[str, Tensor]]) -> Tensor:
        """Focal loss over every cell, normalised by the cells a class covers (at least half of)."""
        wanted = class_maps(targets, logits.shape[1], self.strides[0], tuple(logits.shape[-2:])) >= 0.5
        alpha, gamma = self.cfg.focal_alpha, self.cfg.focal_gamma
        covered = mean_over_ranks(wanted.sum(), least=1).to(logits.device)  # averaged over ranks
        loss = focal_loss_sum(logits, wanted, alpha, gamma) / covered
        return self.cfg.semantic_weight * loss

    def probs(
        self, params: Tensor, mask_input: Tensor, locations: Tensor, levels: Tensor, boxes: Tensor
    ) -> Tensor:
        size = self.size(mask_input)
        probs = mask_input.new_zeros((params.shape[0], *size))
        for win in self.windows(params, mask_input, locations, levels):
            probs[win.index] = win.paste(win.logits.sigmoid(), size)
        return probs


class CondInst(FCOSInstanceModel):
    """FCOS + a controller output of dynamic mask-head parameters + a mask branch; boxes are the
    predicted boxes."""

    def __init__(self, cfg: CondInstConfig, num_classes: int) -> None:
        num_dynamic = num_parameters(cfg.mask_channels, cfg.dynamic_width, cfg.dynamic_layers)
        super().__init__(cfg, num_classes, num_dynamic, DynamicMasks(cfg, level_strides(cfg)))
        self.mask_branch = MaskBranch(cfg)
        self.semantic = SemanticHead(cfg, num_classes) if cfg.semantic_weight > 0 else None

    def mask_input(self, mask_params: Tensor, features: list[Tensor]) -> tuple[Tensor, Tensor]:
        return mask_params, self.mask_branch(features[:3])


def build_condinst(cfg: CondInstConfig, num_classes: int) -> CondInst:
    return CondInst(cfg, num_classes)
