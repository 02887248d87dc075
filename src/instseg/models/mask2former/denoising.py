"""Denoising queries (DN-DETR, Li et al. CVPR 2022; Mask DINO's mask denoising): a training signal with no
matching.

In training, each ground-truth object also enters the decoder as a query built
from its own label (flipped to another class at random) and its box (moved and
resized at random): its label's embedding is the query's content, its box's sine
encoding its position, and its first masked attention reads only the noised box.
That query must give back the object's class and mask, and it is supervised with
them directly. Hungarian matching pairs a query with a different object from step
to step while a model is young; a denoising query's target never changes, which
is what lets the decoder and the per-pixel embeddings learn objects at all on
crowded images. The learned queries cannot attend to the denoising queries (they
would read the answers), and prediction has none, so the output and the export
are unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor
from torchvision.ops import masks_to_boxes


@dataclass
class DenoisingQueries:
    """One batch's denoising queries, ``D`` per image (images with fewer objects padded)."""

    labels: Tensor  # [B, D] noised 0-based labels; K (the "no object" index) for padding
    boxes: Tensor  # [B, D, 4] noised xyxy in the padded batch's pixels; zeros for padding
    objects: Tensor  # [B, D] the target index each query gives back; -1 for padding
    padded: tuple[int, int]  # the padded batch's (H, W)

    def indices(self) -> list[tuple[Tensor, Tensor]]:
        """Per image, ``(query indices, target indices)`` as the matcher returns them: each denoising query
        paired with its own object."""
        pairs = []
        for objects in self.objects:
            rows = torch.nonzero(objects >= 0).flatten()
            pairs.append((rows.cpu(), objects[rows].cpu()))
        return pairs

    def normalised_boxes(self) -> Tensor:
        """``[B, D, 4]`` as (cx, cy, w, h), each a fraction of the padded batch's side."""
        h, w = self.padded
        x0, y0, x1, y1 = self.boxes.unbind(-1)
        return torch.stack([(x0 + x1) / (2 * w), (y0 + y1) / (2 * h), (x1 - x0) / w, (y1 - y0) / h], -1)


def denoising_queries(
    targets: list[dict[str, Tensor]],
    padded: tuple[int, int],
    limit: int,
    num_classes: int,
    box_noise: float = 0.4,
    label_noise: float = 0.2,
    generator: torch.Generator | None = None,
) -> DenoisingQueries | None:
    """One denoising query per object, at most ``limit`` per image (a random subset of a crowded one);
    ``None`` when the batch has no object.

    ``targets``: 1-based ``labels``, ``masks`` (and ``boxes`` when the data has them) in the padded batch's
    pixels, as the transform returns them. Box noise as DINO draws it: each corner moves by up to
    ``box_noise`` times half the box's side; a label is replaced by a random class with probability
    ``label_noise``.
    """
    chosen = []
    for t in targets:
        order = torch.randperm(len(t["labels"]), generator=generator)[:limit]
        chosen.append(order.to(t["labels"].device))
    count = max(len(c) for c in chosen)
    if count == 0:
        return None
    device = targets[0]["labels"].device
    labels = torch.full((len(targets), count), num_classes, dtype=torch.int64, device=device)
    boxes = torch.zeros((len(targets), count, 4), device=device)
    objects = torch.full((len(targets), count), -1, dtype=torch.int64, device=device)
    for b, (t, order) in enumerate(zip(targets, chosen, strict=True)):
        n = len(order)
        if n == 0:
            continue
        true = t["boxes"][order] if "boxes" in t else masks_to_boxes(t["masks"][order])
        labels[b, :n] = _flipped(t["labels"][order] - 1, num_classes, label_noise, generator)
        boxes[b, :n] = _moved(true.float(), padded, box_noise, generator)
        objects[b, :n] = order
    return DenoisingQueries(labels, boxes, objects, padded)


def _flipped(labels: Tensor, num_classes: int, rate: float, generator: torch.Generator | None) -> Tensor:
    flip = torch.rand(labels.shape, generator=generator).to(labels.device) < rate
    other = torch.randint(0, num_classes, labels.shape, generator=generator).to(labels.device)
    return torch.where(flip, other, labels)


def _moved(boxes: Tensor, padded: tuple[int, int], scale: float, generator: torch.Generator | None) -> Tensor:
    """xyxy boxes with each corner moved at random by up to ``scale`` x half the side, kept on the batch
    and at least one pixel wide."""
    half = (boxes[:, 2:] - boxes[:, :2]).repeat(1, 2) / 2
    shift = (torch.rand(boxes.shape, generator=generator).to(boxes.device) * 2 - 1) * half * scale
    moved = boxes + shift
    h, w = padded
    bound = moved.new_tensor([w, h, w, h]).float()
    moved = torch.minimum(moved.clamp(min=0), bound)
    low = torch.minimum(moved[:, :2], moved[:, 2:])
    high = torch.maximum(torch.maximum(moved[:, :2], moved[:, 2:]), low + 1)
    return torch.cat([low, high], 1)


def box_attention_mask(boxes: Tensor, padded: tuple[int, int], size: tuple[int, int]) -> Tensor:
    """``[B, D, h * w]`` True where a map cell of ``size`` does not overlap its query's box (not attended);
    a query whose box overlaps no cell (padding) attends everywhere, as an empty predicted mask does."""
    h, w = size
    cell_y, cell_x = padded[0] / h, padded[1] / w
    ys = torch.arange(h, device=boxes.device, dtype=boxes.dtype)
    xs = torch.arange(w, device=boxes.device, dtype=boxes.dtype)
    x0, y0, x1, y1 = (c[..., None] for c in boxes.unbind(-1))
    rows = (y0 < (ys + 1) * cell_y) & (y1 > ys * cell_y)  # [B, D, h]
    cols = (x0 < (xs + 1) * cell_x) & (x1 > xs * cell_x)  # [B, D, w]
    blocked = ~(rows[..., :, None] & cols[..., None, :]).flatten(2)
    return blocked & ~blocked.all(-1, keepdim=True)
