"""SOLOv2's criterion: which grid cell owns which object, then focal (``loss_class``) + Dice (``loss_dice``).

A cell is positive for an object when it lies in the object's centre region
(``sigma`` x its box around its mass centre, and at most one cell from the
centre cell) on every level whose scale range holds the object's size
(sqrt of box area). Where objects compete for a cell the smaller one wins, so
each positive cell has exactly one mask target: SOLO's reference keeps every
claimant, which trains one kernel towards two masks.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from instseg.distributed import mean_over_ranks, world_size
from instseg.masks import downsample_masks, mass_centres
from instseg.models.federated import federated_weights
from instseg.models.losses import dice_loss, focal_loss_sum
from instseg.models.point_head import image_point_loss
from instseg.models.point_sampling import draw_generator
from instseg.models.postprocess import MASK_STRIDE
from instseg.models.solov2.cells import KernelMasks

if TYPE_CHECKING:
    from instseg.models.solov2.model import SOLOv2Outputs


@dataclass
class LevelTargets:
    labels: Tensor  # int64 [S_h, S_w], 0 = background, else 1..K
    owner: Tensor  # int64 [S_h, S_w], index of the object whose mask the cell predicts, -1 if none


def assign_level(
    boxes: Tensor,
    labels: Tensor,
    centres: Tensor,
    grid: tuple[int, int],
    cell: tuple[float, float],
    scale_range: tuple[float, float],
    sigma: float,
) -> LevelTargets:
    """Targets of one image on one level; ``centres`` are (x, y) mass centres in input pixels."""
    s_h, s_w = grid
    cell_h, cell_w = cell
    device = boxes.device
    cls = torch.zeros((s_h, s_w), dtype=torch.int64, device=device)
    owner = torch.full((s_h, s_w), -1, dtype=torch.int64, device=device)
    if len(boxes) == 0:
        return LevelTargets(cls, owner)
    wh = (boxes[:, 2:] - boxes[:, :2]).clamp(min=0)
    size = (wh[:, 0] * wh[:, 1]).sqrt()
    lo, hi = scale_range
    chosen = torch.nonzero((size >= lo) & (size <= hi)).flatten()
    # largest first, so that smaller objects overwrite them where they compete
    for i in chosen[torch.argsort(size[chosen], descending=True)].tolist():
        cx, cy = centres[i].tolist()
        half_w, half_h = 0.5 * sigma * float(wh[i, 0]), 0.5 * sigma * float(wh[i, 1])
        ci, cj = min(int(cy / cell_h), s_h - 1), min(int(cx / cell_w), s_w - 1)
        top = max(0, int((cy - half_h) / cell_h), ci - 1)
        bottom = min(s_h - 1, int((cy + half_h) / cell_h), ci + 1)
        left = max(0, int((cx - half_w) / cell_w), cj - 1)
        right = min(s_w - 1, int((cx + half_w) / cell_w), cj + 1)
        cls[top : bottom + 1, left : right + 1] = int(labels[i])
        owner[top : bottom + 1, left : right + 1] = i
    return LevelTargets(cls, owner)


class SOLOv2Criterion(nn.Module):
    """``SOLOv2Outputs`` + targets -> ``loss_class`` (focal) and ``loss_dice``."""

    def __init__(
        self,
        num_classes: int,
        sigma: float,
        scale_ranges: list[tuple[float, float]],
        dice_weight: float,
        focal_alpha: float,
        focal_gamma: float,
        max_masks_per_image: int,
        masks: KernelMasks,
        federated_classes: int = 0,
        class_frequencies: Sequence[float] = (),
        point_loss_sizes: tuple[int, int] = (196, 64),
    ) -> None:
        """``masks`` makes mask logits from kernels as the postprocessor does, so training and inference
        make masks the same way. ``point_loss_sizes``: points per mask and masks per image of the point
        head's loss, when the network has one."""
        super().__init__()
        self.num_classes = num_classes
        self.sigma = sigma
        self.scale_ranges = scale_ranges
        self.dice_weight = dice_weight
        self.focal_alpha = focal_alpha
        self.focal_gamma = focal_gamma
        self.max_masks = max_masks_per_image
        self.masks = masks
        self.federated_classes, self.class_frequencies = federated_classes, tuple(class_frequencies)
        self.point_loss_sizes = point_loss_sizes

    def forward(self, outputs: SOLOv2Outputs, targets: list[dict[str, Tensor]]) -> dict[str, Tensor]:
        cate_logits, kernels = outputs.class_logits, outputs.kernels
        mask_feats, padded_size = outputs.mask_features, outputs.padded
        device = mask_feats.device
        cate_preds, cate_targets, cate_images = [], [], []
        pred_masks, mask_targets = [], []
        point_losses: list[Tensor] = []
        h, w = mask_feats.shape[-2:]
        for b, t in enumerate(targets):
            masks = t["masks"]
            boxes, labels = t["boxes"], t["labels"]
            centres = mass_centres(masks, boxes)
            small = downsample_masks(masks, MASK_STRIDE, (h, w))  # soft targets: area fraction
            kernel_rows, owners, cells = [], [], []
            offset = 0
            for level, (logits, kern) in enumerate(zip(cate_logits, kernels, strict=True)):
                grid = logits.shape[-2:]
                cell = (padded_size[0] / grid[0], padded_size[1] / grid[1])
                lt = assign_level(boxes, labels, centres, grid, cell, self.scale_ranges[level], self.sigma)
                cate_preds.append(logits[b].flatten(1).T)  # [S_h*S_w, K]
                cate_targets.append(lt.labels.flatten())
                cate_images.append(torch.full((grid[0] * grid[1],), b, dtype=torch.int64))
                pos = lt.owner.flatten() >= 0
                kernel_rows.append(kern[b].flatten(1).T[pos])  # [P, E]
                owners.append(lt.owner.flatten()[pos])
                cells.append(torch.nonzero(pos).flatten() + offset)
                offset += pos.numel()
            rows, owner, cell = torch.cat(kernel_rows), torch.cat(owners), torch.cat(cells)
            if len(owner) > self.max_masks:  # bound memory on crowded images
                keep = torch.randperm(len(owner), device=device, generator=draw_generator(t, device))
                keep = keep[: self.max_masks]
                rows, owner, cell = rows[keep], owner[keep], cell[keep]
            if len(owner):
                grids = [(c.shape[-2], c.shape[-1]) for c in cate_logits]
                logits = self.masks.logits(rows, cell, grids, mask_feats[b])
                pred_masks.append(logits)
                mask_targets.append(small[owner])
                if outputs.points is not None:
                    points, generator = outputs.points.image(b), draw_generator(t, device)
                    loss = image_point_loss(
                        points, logits, None, masks[owner], *self.point_loss_sizes, generator
                    )
                    point_losses.append(loss * len(logits))  # the caller divides by the instance count
        labels = torch.cat(cate_targets)
        onehot = F.one_hot(labels, self.num_classes + 1)[:, 1:]
        # normalisers averaged over the ranks: together, one process's num_pos + 1 and instance count
        num_pos = mean_over_ranks((labels > 0).sum()).to(device) + 1 / world_size()
        negative = federated_weights(
            targets, self.num_classes, self.federated_classes, self.class_frequencies
        )
        weight = None
        if negative is not None:  # each cell weighs its image's classes; positives always train
            weight = torch.maximum(onehot.float(), negative[torch.cat(cate_images)].to(device))
        loss_class = focal_loss_sum(torch.cat(cate_preds), onehot, self.focal_alpha, self.focal_gamma, weight)
        loss_class = loss_class / num_pos
        count = mean_over_ranks(sum(len(m) for m in mask_targets), least=1).to(device)
        if pred_masks:
            dice = dice_loss(torch.cat(pred_masks), torch.cat(mask_targets))
            loss_dice = dice.sum() / count * self.dice_weight
        else:
            loss_dice = mask_feats.sum() * 0.0 + sum(k.sum() * 0.0 for k in kernels)
        losses = {"loss_class": loss_class, "loss_dice": loss_dice}
        if outputs.points is not None:  # a mean over the batch's positives, like the Dice loss
            head = outputs.points.head
            total = sum(point_losses) if point_losses else sum(p.sum() * 0.0 for p in head.parameters())
            losses["loss_point"] = total / count
        return losses
