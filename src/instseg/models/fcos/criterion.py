"""The FCOS families' criterion: point assignment, detection losses, then the family's mask terms.

Every loss has one name across the project: ``loss_class`` (focal),
``loss_box`` (GIoU), ``loss_quality`` (centre-ness or IoU), ``loss_mask``
(mask BCE), ``loss_dice`` and ``loss_semantic``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import generalized_box_iou_loss

from instseg.distributed import mean_over_ranks
from instseg.models.equalized_focal import EqualizedFocalLoss
from instseg.models.fcos.head import level_ranges, ltrb_iou, ltrb_to_boxes
from instseg.models.fcos.targets import PointTargets, assign_targets
from instseg.models.federated import federated_weights
from instseg.models.losses import focal_loss_sum
from instseg.models.point_sampling import draw_generator

if TYPE_CHECKING:
    from instseg.models.fcos.model import FCOSConfig, FCOSMasks, FCOSOutputs


class FCOSCriterion(nn.Module):
    """``FCOSOutputs`` + targets -> named losses; the mask terms come from the family's ``FCOSMasks``."""

    def __init__(self, cfg: FCOSConfig, strides: tuple[int, ...], masks: FCOSMasks, num_classes: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.strides = strides
        self.masks = masks
        self.equalized = EqualizedFocalLoss(num_classes) if cfg.class_loss == "equalized_focal" else None
        self.register_buffer("ranges", level_ranges(cfg.size_bounds), persistent=False)

    def sample_positives(self, assigned: PointTargets, target: dict[str, Tensor]) -> Tensor:
        """Indices of the positive locations given a mask loss: all, or a random subset on crowded images
        (drawn with the image's own generator where the target has one)."""
        pos = torch.nonzero(assigned.owner >= 0).flatten()
        if len(pos) > self.cfg.max_masks_per_image:
            order = torch.randperm(len(pos), device=pos.device, generator=draw_generator(target, pos.device))
            pos = pos[order[: self.cfg.max_masks_per_image]]
        return pos

    def forward(self, outputs: FCOSOutputs, targets: list[dict[str, Tensor]]) -> dict[str, Tensor]:
        cfg = self.cfg
        locations, levels = outputs.locations, outputs.levels
        assigned = assign_targets(targets, locations, levels, self.strides, self.ranges, cfg.center_radius)
        labels = [t["labels"] for t in targets]
        num_classes = outputs.class_logits.shape[-1]
        negative = federated_weights(targets, num_classes, cfg.federated_classes, cfg.class_frequencies)
        losses = detection_losses(
            outputs, assigned, labels, cfg.focal_alpha, cfg.focal_gamma, cfg.quality, negative, self.equalized
        )
        positives = [self.sample_positives(a, t) for a, t in zip(assigned, targets, strict=True)]
        for name, weight, values in self.masks.losses(outputs, targets, assigned, positives):
            if weight <= 0:
                continue
            # the mean over every rank's instances (each rank takes part, with or without any)
            count = mean_over_ranks(sum(len(v) for v in values), least=1)
            if values:
                losses[name] = weight * torch.cat(values).sum() / count
            else:  # no positives in the batch: a zero that keeps the graph (and the point head in it)
                losses[name] = outputs.mask_params.sum() * 0.0 + outputs.mask_input.sum() * 0.0
                if outputs.points is not None:
                    losses[name] = losses[name] + sum(p.sum() * 0.0 for p in outputs.points.head.parameters())
        if outputs.semantic_logits is not None:
            losses["loss_semantic"] = self.masks.semantic_loss(outputs.semantic_logits, targets)
        return losses


def detection_losses(
    outputs: FCOSOutputs,
    targets: list[PointTargets],
    labels: list[Tensor],
    alpha: float = 0.25,
    gamma: float = 2.0,
    quality: str = "centerness",
    negative: Tensor | None = None,
    equalized: EqualizedFocalLoss | None = None,
) -> dict[str, Tensor]:
    """Focal classification over all locations (``loss_class``), GIoU (``loss_box``) and centre-ness BCE
    (``loss_quality``) over positives. ``negative`` ``[B, K]``: which classes each image may learn as
    absent (``federated.negative_weights``; None: all); ``equalized``: the equalized focal loss in place
    of the focal loss.

    The box loss is weighted by the centre-ness targets (as in FCOS), so the
    boxes that inference ranks highest are the ones trained hardest. With
    ``quality="iou"`` the centre-ness branch learns the IoU of the box its
    location predicts instead (IoU-aware ranking, Wu et al. 2020): geometry
    says where a good box should come from, the IoU says whether it did.
    """
    num_classes = outputs.class_logits.shape[-1]
    cls_t = torch.stack(
        [
            torch.where(t.owner >= 0, lab[t.owner.clamp(min=0)] if len(lab) else t.owner, 0)
            for t, lab in zip(targets, labels, strict=True)
        ]
    )  # [B, L], 0 = background, else 1..K
    onehot = F.one_hot(cls_t, num_classes + 1)[..., 1:]
    pos = cls_t > 0
    # normalisers averaged over the ranks, as the reference implementation does (one process: as is)
    num_pos = mean_over_ranks(pos.sum(), least=1).to(outputs.class_logits.device)
    weight = None if negative is None else torch.maximum(onehot.float(), negative.to(onehot.device)[:, None])
    if equalized is None:
        loss_class = focal_loss_sum(outputs.class_logits, onehot, alpha, gamma, weight) / num_pos
    else:
        loss_class = equalized(outputs.class_logits, onehot, alpha, gamma, weight) / num_pos
    ltrb_t = torch.stack([t.ltrb for t in targets])[pos]
    ctr_t = torch.stack([t.centerness for t in targets])[pos]
    ctr_sum = mean_over_ranks(ctr_t.sum(), least=1e-6).to(ctr_t.device)
    if len(ltrb_t) == 0:
        zero = outputs.ltrb.sum() * 0.0 + outputs.quality_logits.sum() * 0.0
        return {"loss_class": loss_class, "loss_box": zero, "loss_quality": zero}
    loc = outputs.locations[None].expand(len(targets), -1, -1)[pos]
    giou = generalized_box_iou_loss(
        ltrb_to_boxes(loc, outputs.ltrb[pos]), ltrb_to_boxes(loc, ltrb_t), reduction="none"
    )
    loss_box = (giou * ctr_t).sum() / ctr_sum
    quality_t = ltrb_iou(outputs.ltrb[pos].detach(), ltrb_t) if quality == "iou" else ctr_t
    logits = outputs.quality_logits[pos]
    loss_quality = F.binary_cross_entropy_with_logits(logits, quality_t, reduction="sum") / num_pos
    return {"loss_class": loss_class, "loss_box": loss_box, "loss_quality": loss_quality}
