"""Automatic mask generation: SAM prompted with a grid of points, every confident, stable, distinct mask.

Each point of a ``points_per_side`` x ``points_per_side`` grid over the image
is one positive click; its three readings are kept when the predicted IoU
reaches ``iou_threshold`` and the mask is stable: thresholding its logits at
``+stability_offset`` and ``-stability_offset`` gives masks whose IoU reaches
``stability_threshold``. Duplicates (many points land on one object) go by
box NMS, the higher predicted IoU winning. Scores are the predicted IoU.
Filtering runs on the low-resolution logits; only the survivors are
upsampled to the image, in chunks, so memory does not grow with the grid.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor
from torchvision.ops import nms

from instseg.masks import any_pixel, masks_to_boxes
from instseg.models.sam.mask_decoder import upsample_logits

UPSAMPLE_CHUNK = 32


def point_grid(n: int, size: tuple[int, int], device: torch.device) -> Tensor:
    """``[n * n, 2]`` (x, y) cell centres of an ``n x n`` grid over an image of ``size`` (h, w)."""
    steps = (torch.arange(n, device=device, dtype=torch.float32) + 0.5) / n
    ys, xs = torch.meshgrid(steps * size[0], steps * size[1], indexing="ij")
    return torch.stack([xs.flatten(), ys.flatten()], dim=1)


def stability(logits: Tensor, offset: float) -> Tensor:
    """IoU of each mask thresholded at ``+offset`` with itself at ``-offset`` (the first is inside the
    second, so it is a ratio of areas)."""
    inner = (logits > offset).flatten(1).sum(1).float()
    outer = (logits > -offset).flatten(1).sum(1).float()
    return inner / outer.clamp(min=1)


class AutomaticMasks:
    def __init__(self, cfg: Any, decode: Any) -> None:
        self.cfg, self.decode = cfg, decode

    @torch.no_grad()
    def __call__(
        self, embeddings: Tensor, resized: list[tuple[int, int]], original: list[tuple[int, int]]
    ) -> list[dict[str, Tensor]]:
        return [self.image(embeddings[b : b + 1], resized[b], original[b]) for b in range(len(resized))]

    def image(
        self, embedding: Tensor, resized: tuple[int, int], original: tuple[int, int]
    ) -> dict[str, Tensor]:
        cfg = self.cfg
        threshold = math.log(cfg.mask_threshold / (1 - cfg.mask_threshold))  # the probability as a logit
        kept_logits, kept_scores = [], []
        points = point_grid(cfg.points_per_side, resized, embedding.device)
        for chunk in points.split(cfg.points_batch):
            labels = torch.ones(len(chunk), 1, device=chunk.device)
            logits, iou = self.decode(embedding, (chunk[:, None], labels), None, None, True)
            logits, iou = logits.flatten(0, 1), iou.flatten()
            good = (iou >= cfg.iou_threshold) & (
                stability(logits, cfg.stability_offset) >= cfg.stability_threshold
            )
            good &= any_pixel(logits > threshold)
            kept_logits.append(logits[good])
            kept_scores.append(iou[good])
        logits, scores = torch.cat(kept_logits), torch.cat(kept_scores)
        if len(scores):
            boxes = masks_to_boxes((logits > threshold).cpu()).to(scores.device)
            order = nms(boxes, scores, cfg.nms_threshold)[: cfg.detections_per_image]
            logits, scores = logits[order], scores[order]
        masks = [
            upsample_logits(part[:, None], self.decode.stride, resized, original)[:, 0] > threshold
            for part in logits.split(UPSAMPLE_CHUNK)
        ] or [torch.zeros((0, *original), dtype=torch.bool, device=embedding.device)]
        masks = torch.cat(masks)
        nonempty = any_pixel(masks)
        masks, scores = masks[nonempty], scores[nonempty]
        order = torch.argsort(scores, descending=True)
        masks, scores = masks[order], scores[order].float()
        return {
            "boxes": masks_to_boxes(masks.cpu()).to(masks.device),
            "labels": torch.ones(len(scores), dtype=torch.int64, device=scores.device),
            "scores": scores,
            "masks": masks,
        }
