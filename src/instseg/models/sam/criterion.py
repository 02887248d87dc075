"""Training SAM: prompts simulated from the targets, then corrective clicks, as in interactive use.

Per image, up to ``prompts_per_image`` objects get a first prompt: a point
drawn uniformly inside the mask or, for ``box_prompt_ratio`` of the images,
the mask's box with its corners moved by up to ``box_jitter`` of its sides.
Each of ``click_rounds`` further rounds adds one click drawn uniformly from
the error region of the previous prediction (positive where it missed the
object, negative where it spilled over; with ``click_sampling="interior"``
first and corrective clicks favour pixels deep inside the object or the error,
where the evaluation clicks) and feeds the previous low-resolution
logits back as the mask prompt, detached, so that each round learns to
correct rather than to start over. A single click is ambiguous: its round
predicts three masks and only the best (lowest loss) is supervised; the other
rounds predict one. Mask loss: focal (x20) + Dice (x1) at the input's
resolution; the IoU head regresses the IoU of every output's mask (MSE).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torch.nn import functional as F
from torchvision.ops import sigmoid_focal_loss

from instseg.masks import boundary_distance, masks_to_boxes
from instseg.models.losses import point_dice_loss
from instseg.models.sam.object_maps import ObjectMapHead, object_map_loss, object_maps


def random_pixels(regions: Tensor, weights: Tensor | None = None) -> Tensor:
    """One (x, y) per region ``[N, H, W]`` (bool, each non-empty), uniformly among its pixels, or in
    proportion to ``weights`` ``[N, H, W]`` (positive inside the regions)."""
    w = regions.shape[-1]
    chance = regions.flatten(1).float() if weights is None else (weights * regions).flatten(1).float()
    # inverse transform sampling: torch.multinomial draws an exponential for every pixel for one sample
    cdf = chance.double().cumsum(1)
    u = torch.rand(len(cdf), 1, dtype=torch.float64, device=cdf.device) * cdf[:, -1:]
    index = torch.searchsorted(cdf, u, right=True)[:, 0].clamp(max=cdf.shape[1] - 1)
    return torch.stack([index % w, index // w], dim=1).float()


def jittered_boxes(masks: Tensor, jitter: float) -> Tensor:
    boxes = masks_to_boxes(masks.cpu()).to(masks.device)
    sides = (boxes[:, 2:] - boxes[:, :2]).repeat(1, 2)
    boxes = boxes + (torch.rand_like(boxes) * 2 - 1) * jitter * sides
    h, w = masks.shape[-2:]
    boxes = torch.minimum(boxes.clamp(min=0), boxes.new_tensor([w, h, w, h]))
    return torch.cat([boxes[:, :2], torch.maximum(boxes[:, 2:], boxes[:, :2] + 1)], dim=1)


def correction_clicks(predicted: Tensor, truth: Tensor, interior: bool = False) -> tuple[Tensor, Tensor]:
    """The next click per object: (x, y) in the error region, label 1 where the prediction missed
    object pixels, 0 where it covered background; a perfect prediction gets a positive click inside
    the object. Uniformly among the error's pixels, or with ``interior`` in proportion to the squared
    distance of each pixel from its error's boundary (the missed and the spilled part apart), so that
    clicks fall mostly inside wide errors rather than on one-pixel rims, near where the evaluation
    clicks (the farthest pixel)."""
    missed, spilled = truth & ~predicted, predicted & ~truth
    errors = missed | spilled
    perfect = ~errors.flatten(1).any(1)
    errors[perfect] = truth[perfect]
    weights = None
    if interior:
        missed_or_truth = torch.where(perfect[:, None, None], truth, missed)
        weights = (boundary_distance(missed_or_truth) + boundary_distance(spilled)).square()
    xy = random_pixels(errors, weights)
    rows = torch.arange(len(xy), device=xy.device)
    positive = missed[rows, xy[:, 1].long(), xy[:, 0].long()] | perfect
    return xy, positive.float()


def mask_iou(predicted: Tensor, truth: Tensor) -> Tensor:
    """IoU of bool masks ``[..., H, W]`` with their targets, shape ``[...]``."""
    inter = (predicted & truth).flatten(-2).sum(-1).float()
    union = (predicted | truth).flatten(-2).sum(-1).float()
    return inter / union.clamp(min=1)


class PromptCriterion:
    def __init__(self, cfg: Any, decode: Any, object_map_head: ObjectMapHead | None = None) -> None:
        self.cfg, self.decode, self.object_map_head = cfg, decode, object_map_head

    def __call__(self, embeddings: Tensor, targets: list[dict[str, Tensor]]) -> dict[str, Tensor]:
        zero = embeddings.sum() * 0  # keeps the graph when no image has an object
        totals = {"loss_mask": zero, "loss_dice": zero, "loss_iou": zero}
        images = 0
        padded = (embeddings.shape[-2] * self.decode.stride, embeddings.shape[-1] * self.decode.stride)
        for b, target in enumerate(targets):
            masks = target["masks"].bool()
            masks = masks[masks.flatten(1).any(1)]
            if len(masks) == 0:
                continue
            masks = masks[torch.randperm(len(masks), device=masks.device)[: self.cfg.prompts_per_image]]
            truth = F.pad(masks, (0, padded[1] - masks.shape[-1], 0, padded[0] - masks.shape[-2]))
            for name, value in self.image_losses(embeddings[b : b + 1], truth).items():
                totals[name] = totals[name] + value
            images += 1
        losses = {k: v / max(images, 1) for k, v in totals.items()}
        if self.object_map_head is not None:  # every object of the batch, not only the prompted ones
            maps = torch.stack([object_maps(t["masks"].bool(), padded) for t in targets])
            loss = object_map_loss(self.object_map_head(embeddings), maps)
            losses["loss_object_maps"] = self.cfg.object_map_weight * loss
        return losses

    def image_losses(self, embedding: Tensor, truth: Tensor) -> dict[str, Tensor]:
        cfg, n = self.cfg, len(truth)
        interior = cfg.click_sampling == "interior"
        boxes = jittered_boxes(truth, cfg.box_jitter) if torch.rand(()) < cfg.box_prompt_ratio else None
        points = truth.new_zeros((n, 0, 2), dtype=torch.float32)
        labels = truth.new_zeros((n, 0), dtype=torch.float32)
        if boxes is None:
            weights = boundary_distance(truth).square() if interior else None
            points, labels = random_pixels(truth, weights)[:, None], torch.ones(n, 1, device=truth.device)
        mask_input = None
        rounds = 1 + cfg.click_rounds
        losses = {"loss_mask": 0.0, "loss_dice": 0.0, "loss_iou": 0.0}
        rows = torch.arange(n, device=truth.device)
        for r in range(rounds):
            multimask = r == 0 and boxes is None
            prompt = (points, labels) if points.shape[1] else None
            logits, iou = self.decode(embedding, prompt, boxes, mask_input, multimask)
            full = F.interpolate(logits, size=truth.shape[-2:], mode="bilinear", align_corners=False)
            target = truth[:, None].expand_as(full).float()
            focal = sigmoid_focal_loss(full, target, reduction="none").flatten(2).mean(-1)
            dice = point_dice_loss(full.flatten(0, 1), target.flatten(0, 1)).view_as(focal)
            best = (cfg.focal_weight * focal + cfg.dice_weight * dice).argmin(1)
            with torch.no_grad():
                iou_true = mask_iou(full > 0, truth[:, None])
            losses["loss_mask"] = losses["loss_mask"] + cfg.focal_weight * focal[rows, best].mean() / rounds
            losses["loss_dice"] = losses["loss_dice"] + cfg.dice_weight * dice[rows, best].mean() / rounds
            losses["loss_iou"] = losses["loss_iou"] + cfg.iou_weight * F.mse_loss(iou, iou_true) / rounds
            if r + 1 < rounds:
                with torch.no_grad():
                    xy, positive = correction_clicks(full[rows, best] > 0, truth, interior)
                points = torch.cat([points, xy[:, None]], dim=1)
                labels = torch.cat([labels, positive[:, None]], dim=1)
                mask_input = logits[rows, best][:, None].detach()
        return losses
