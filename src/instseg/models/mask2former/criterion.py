"""Mask2Former's set criterion: Hungarian matching per layer, then class + point-sampled mask losses.

Classification is cross-entropy over K classes + "no object", whose weight is
down-scaled (0.1) because nearly every query is unmatched; for long-tailed data
the cross-entropy can be Seesaw's (``models/seesaw.py``). Masks are
supervised on K points per matched pair, most of them where the prediction
is uncertain (``point_sampling.uncertain_points``): BCE (mean over points) and Dice,
each summed over matched masks and divided by the number of ground-truth
objects in the batch. Queries that predict boxes (a box prior, ``box_prior.py``)
also get L1 and GIoU losses on them (``loss_box``, ``loss_giou``), as Mask DINO's
do. Denoising queries (``denoising.py``), when the network
made them, get the same three losses against their own objects, no matching
involved (``loss_dn_*``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import box_convert, generalized_box_iou_loss

from instseg.distributed import mean_over_ranks
from instseg.masks import masks_to_boxes
from instseg.models.losses import point_dice_loss
from instseg.models.mask2former.decoder import QueryPredictions, mask_logits
from instseg.models.matcher import HungarianMatcher
from instseg.models.point_sampling import (
    box_points,
    draw_generator,
    point_count,
    point_sample,
    uncertain_points,
)
from instseg.models.seesaw import SeesawLoss

if TYPE_CHECKING:
    from instseg.models.mask2former.model import Mask2FormerOutputs


class SetCriterion(nn.Module):
    def __init__(
        self,
        num_classes: int,
        matcher: HungarianMatcher,
        class_weight: float = 2.0,
        mask_weight: float = 5.0,
        dice_weight: float = 5.0,
        no_object_weight: float = 0.1,
        num_points: int = 12544,
        oversample: float = 3.0,
        importance: float = 0.75,
        seesaw: SeesawLoss | None = None,
        points_per_pixel: float = 0.0,
        box_points: float = 0.0,
        box_weight: float = 5.0,
        giou_weight: float = 2.0,
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.matcher = matcher
        self.class_weight, self.mask_weight, self.dice_weight = class_weight, mask_weight, dice_weight
        self.num_points, self.oversample, self.importance = num_points, oversample, importance
        self.points_per_pixel, self.box_points = points_per_pixel, box_points
        self.box_weight, self.giou_weight = box_weight, giou_weight
        weights = torch.ones(num_classes + 1)
        weights[-1] = no_object_weight
        self.register_buffer("class_weights", weights, persistent=False)
        self.seesaw = seesaw

    def forward(self, outputs: Mask2FormerOutputs, targets: list[dict[str, Tensor]]) -> dict[str, Tensor]:
        """Each decoder layer's predictions matched and scored; losses are summed over the layers."""
        prepared = self.prepare(outputs, targets)
        losses = self.layer_sum(outputs.layers, prepared)
        if outputs.denoising is not None:
            losses |= self.denoising_sum(outputs.denoising_layers, prepared, outputs.denoising.indices())
        return losses

    def prepare(
        self, outputs: Mask2FormerOutputs, targets: list[dict[str, Tensor]]
    ) -> list[dict[str, Tensor]]:
        """The targets as the matcher and the losses read them (``set_targets``), with the objects' boxes
        when the box points or the queries' own boxes need them."""
        boxes = self.box_points > 0 or outputs.final.boxes is not None
        return set_targets(targets, outputs.padded, boxes=boxes)

    def denoising_sum(
        self,
        layers: list[QueryPredictions],
        targets: list[dict[str, Tensor]],
        indices: list[tuple[Tensor, Tensor]],
    ) -> dict[str, Tensor]:
        """The denoising queries' losses, each paired with its own object (``indices``), summed over the
        layers as ``loss_dn_class``, ``loss_dn_mask`` and ``loss_dn_dice``; padding queries learn "no
        object"."""
        num_masks = mean_over_ranks(sum(len(rows) for rows, _ in indices), least=1)
        device = layers[0].mask_embed.device
        generators = [draw_generator(t, device) for t in targets]
        totals: dict[str, Tensor] = {}
        for out in layers:
            for name, value in self.layer_losses(out, targets, indices, num_masks, generators).items():
                key = name.replace("loss_", "loss_dn_")
                totals[key] = totals[key] + value if key in totals else value
        return totals

    def layer_sum(
        self, layers: list[QueryPredictions], targets: list[dict[str, Tensor]]
    ) -> dict[str, Tensor]:
        """``targets``: 0-based ``labels`` and float ``masks`` covering the same extent as the mask
        features (``set_targets``)."""
        # objects per rank, averaged over the ranks: the gradient of one process on the whole batch
        num_masks = mean_over_ranks(sum(len(t["labels"]) for t in targets), least=1)
        if self.seesaw is not None:  # every object is matched once per layer: counted once per batch
            self.seesaw.count(torch.cat([t["labels"] for t in targets]))
        device = layers[0].mask_embed.device
        generators = [draw_generator(t, device) for t in targets]
        totals: dict[str, Tensor] = {}
        for out in layers:
            indices = self.matcher(
                out.class_logits, out.mask_embed, out.mask_features, targets, generators, out.boxes
            )
            for name, value in self.layer_losses(out, targets, indices, num_masks, generators).items():
                totals[name] = totals[name] + value if name in totals else value
        return totals

    def layer_losses(
        self,
        out: QueryPredictions,
        targets: list[dict[str, Tensor]],
        indices: list[tuple[Tensor, Tensor]],
        num_masks: Tensor,
        generators: list[torch.Generator | None],
    ) -> dict[str, Tensor]:
        logits = out.class_logits
        classes = torch.full(logits.shape[:2], self.num_classes, dtype=torch.int64, device=logits.device)
        for b, ((rows, cols), t) in enumerate(zip(indices, targets, strict=True)):
            classes[b, rows.to(logits.device)] = t["labels"][cols.to(logits.device)]
        # the weighted mean cross_entropy takes, with the weights' sum averaged over the ranks
        if self.seesaw is not None:
            per_query = self.seesaw(logits.flatten(0, 1), classes.flatten()).view(classes.shape)
        else:
            per_query = F.cross_entropy(logits.transpose(1, 2).float(), classes, reduction="none")
        weights = self.class_weights[classes]
        loss_class = self.class_weight * (per_query * weights).sum() / mean_over_ranks(weights.sum())
        bce, dice = [], []
        for b, ((rows, cols), t) in enumerate(zip(indices, targets, strict=True)):
            if len(rows) == 0:
                continue
            # full masks of the matched queries only; the points go where they are least certain
            pred = mask_logits(out.mask_embed[b][rows], out.mask_features[b])
            count = point_count(self.num_points, self.points_per_pixel, pred.shape[-2:])
            points = uncertain_points(pred, count, self.oversample, self.importance, generators[b])
            if self.box_points > 0:  # and more around each object, so a small one is not all background
                boxes = t["boxes"][cols.to(pred.device)]
                extra = box_points(boxes, round(self.box_points * count), generators[b])
                points = torch.cat([points, extra], 1)
            pred = point_sample(pred[:, None], points)[:, 0]
            # each target read at its query's points, without copying the target masks
            target_points = points.new_zeros((len(t["masks"]), *points.shape[1:]))
            target_points[cols] = points
            true = point_sample(t["masks"][:, None], target_points)[cols, 0]
            bce.append(F.binary_cross_entropy_with_logits(pred, true, reduction="none").mean(1))
            dice.append(point_dice_loss(pred, true))
        if not bce:  # no object in the batch: only "no object" to learn
            zero = out.mask_embed.sum() * 0.0 + out.mask_features.sum() * 0.0  # every parameter in the graph
            losses = {"loss_class": loss_class, "loss_mask": zero, "loss_dice": zero}
        else:
            losses = {
                "loss_class": loss_class,
                "loss_mask": self.mask_weight * torch.cat(bce).sum() / num_masks,
                "loss_dice": self.dice_weight * torch.cat(dice).sum() / num_masks,
            }
        if out.boxes is not None:
            losses |= self.box_losses(out.boxes, targets, indices, num_masks)
        return losses

    def box_losses(
        self,
        boxes: Tensor,
        targets: list[dict[str, Tensor]],
        indices: list[tuple[Tensor, Tensor]],
        num_masks: Tensor,
    ) -> dict[str, Tensor]:
        """L1 and GIoU between the matched queries' boxes ``[B, Q, 4]`` (cx, cy, w, h) and their objects'
        tight boxes, both as fractions of the padded batch."""
        pred = torch.cat([boxes[b, rows.to(boxes.device)] for b, (rows, _) in enumerate(indices)])
        true = torch.cat([t["boxes"][cols] for (_, cols), t in zip(indices, targets, strict=True)]).to(pred)
        l1 = F.l1_loss(pred, box_convert(true, "xyxy", "cxcywh"), reduction="sum")
        corners = box_convert(pred, "cxcywh", "xyxy")
        giou = generalized_box_iou_loss(corners, true, reduction="sum") if len(pred) else pred.sum()
        return {
            "loss_box": self.box_weight * l1 / num_masks,
            "loss_giou": self.giou_weight * giou / num_masks,
        }


def set_targets(
    targets: list[dict[str, Tensor]], padded: tuple[int, int], boxes: bool = False
) -> list[dict[str, Tensor]]:
    """0-based labels and float masks padded to the batch, so they span what the predictions span, and with
    ``boxes`` the masks' tight boxes as fractions of that extent, which the box points, the box losses
    and the matcher's box costs read (converted once here, not in every decoder layer's matching and
    loss)."""
    out = []
    for t in targets:
        masks = t["masks"]
        pad = (0, padded[1] - masks.shape[-1], 0, padded[0] - masks.shape[-2])
        kept = {"seed": t["seed"]} if "seed" in t else {}
        if boxes:
            h, w = padded
            extent = masks.new_tensor([w, h, w, h], dtype=torch.float)
            kept["boxes"] = masks_to_boxes(masks.bool()).to(masks.device) / extent
        out.append({"labels": t["labels"] - 1, "masks": F.pad(masks.float(), pad), **kept})
    return out
