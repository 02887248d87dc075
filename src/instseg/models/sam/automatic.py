"""Automatic mask generation: SAM prompted with a grid of points, every confident, stable, distinct mask.

Each point of a ``points_per_side`` x ``points_per_side`` grid over the image
is one positive click; its three readings are kept when the predicted IoU
reaches ``iou_threshold`` and the mask is stable: thresholding its logits at
``+stability_offset`` and ``-stability_offset`` gives masks whose IoU reaches
``stability_threshold``. Duplicates (many points land on one object) go by
box NMS, the higher predicted IoU winning. Scores are the predicted IoU. With
``min_region_area``, islands and holes below that area are removed from each
mask, and NMS runs again on the cleaned masks.
Filtering runs on the low-resolution logits; only the survivors are
upsampled to the image, in chunks, so memory does not grow with the grid.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torchvision.ops import nms

from instseg.masks import any_pixel, masks_to_boxes, remove_small_regions
from instseg.models.sam.mask_decoder import logit_threshold, stability, upsample_logits

UPSAMPLE_CHUNK = 32


def point_grid(n: int, size: tuple[int, int], device: torch.device) -> Tensor:
    """``[n * n, 2]`` (x, y) cell centres of an ``n x n`` grid over an image of ``size`` (h, w)."""
    steps = (torch.arange(n, device=device, dtype=torch.float32) + 0.5) / n
    ys, xs = torch.meshgrid(steps * size[0], steps * size[1], indexing="ij")
    return torch.stack([xs.flatten(), ys.flatten()], dim=1)


class AutomaticMasks:
    def __init__(self, cfg: Any, decode: Any) -> None:
        self.cfg, self.decode = cfg, decode

    @torch.no_grad()
    def __call__(
        self, embeddings: Tensor, resized: list[tuple[int, int]], original: list[tuple[int, int]]
    ) -> list[dict[str, Tensor]]:
        return [self.image(embeddings[b : b + 1], resized[b], original[b]) for b in range(len(resized))]

    def image(
        self,
        embedding: Tensor,
        resized: tuple[int, int],
        original: tuple[int, int],
        points_per_side: int | None = None,
    ) -> dict[str, Tensor]:
        cfg = self.cfg
        threshold = logit_threshold(cfg.mask_threshold)
        kept_logits, kept_scores, kept_corners, kept_boxes = [], [], [], []
        points = point_grid(points_per_side or cfg.points_per_side, resized, embedding.device)
        grid = (int(embedding.shape[-2]), int(embedding.shape[-1]))
        for chunk in points.split(cfg.points_batch):
            labels = torch.ones(len(chunk), 1, device=chunk.device)
            logits, iou, corners = self.decode.decode_windows(
                embedding, (chunk[:, None], labels), None, None, True
            )
            m = logits.shape[1]
            logits, iou = logits.flatten(0, 1), iou.flatten()
            corners = (
                torch.zeros(len(logits), 2, dtype=torch.long)
                if corners is None
                else corners.repeat_interleave(m, 0)
            )
            good = (iou >= cfg.iou_threshold) & (
                stability(logits, cfg.stability_offset) >= cfg.stability_threshold
            )
            binary = logits > threshold
            good &= any_pixel(binary)
            kept_logits.append(logits[good])
            kept_scores.append(iou[good])
            kept_corners.append(corners[good.cpu()])
            boxes = masks_to_boxes(binary[good].cpu())  # in the window's logit grid
            kept_boxes.append(boxes + corners[good.cpu()].flip(1).repeat(1, 2).float())
        logits, scores = torch.cat(kept_logits), torch.cat(kept_scores)
        corners, boxes = torch.cat(kept_corners), torch.cat(kept_boxes)
        if len(scores):
            order = nms(boxes, scores.cpu(), cfg.nms_threshold)[: cfg.detections_per_image]
            logits, scores, corners = logits[order], scores[order], corners[order]
        windowed = logits.shape[-2:] != (4 * grid[0], 4 * grid[1])
        masks = [
            upsample_logits(
                self.decode.paste(part[:, None], corner if windowed else None, grid),
                self.decode.stride,
                resized,
                original,
            )[:, 0]
            > threshold
            for part, corner in zip(logits.split(UPSAMPLE_CHUNK), corners.split(UPSAMPLE_CHUNK), strict=True)
        ] or [torch.zeros((0, *original), dtype=torch.bool, device=embedding.device)]
        masks = torch.cat(masks)
        if cfg.min_region_area:
            masks = remove_small_regions(masks, cfg.min_region_area)
        nonempty = any_pixel(masks)
        masks, scores = masks[nonempty], scores[nonempty]
        boxes = masks_to_boxes(masks.cpu())
        if cfg.min_region_area:  # a clean-up can make two masks alike
            keep = nms(boxes, scores.cpu().float(), cfg.nms_threshold)
            masks, scores, boxes = masks[keep], scores[keep], boxes[keep]
        order = torch.argsort(scores, descending=True)
        masks, scores, boxes = masks[order], scores[order].float(), boxes[order.cpu()]
        return {
            "boxes": boxes.to(masks.device),
            "labels": torch.ones(len(scores), dtype=torch.int64, device=scores.device),
            "scores": scores,
            "masks": masks,
        }
