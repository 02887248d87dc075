"""Mask2Former's three readings of one set of (class, mask) pairs: instances, semantic maps, panoptic.

No NMS anywhere: the matching loss already taught duplicate queries to say
"no object". Inputs are one image's final-layer ``class_logits [Q, K+1]``,
``mask_embed [Q, C]`` and ``mask_features [C, h, w]`` (1/4 resolution of the
padded batch); a query's mask is its embedding dotted with the features.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from instseg.models.mask2former.decoder import mask_logits
from instseg.models.postprocess import MASK_STRIDE, detections_from_masks, maskness

if TYPE_CHECKING:
    from instseg.models.mask2former.model import Mask2FormerOutputs


def instance_inference(
    class_logits: Tensor,
    mask_embed: Tensor,
    mask_features: Tensor,
    resized: tuple[int, int],
    original: tuple[int, int],
    detections: int = 100,
    threshold: float = 0.5,
) -> dict[str, Tensor]:
    """Top-k over queries x classes (a query may give several classes); score = class probability x
    mean mask probability inside its mask. Masks are computed for the selected queries only; boxes are
    taken from the masks."""
    probs = class_logits.softmax(-1)[:, :-1]
    k = probs.shape[1]
    scores, flat = probs.flatten().topk(min(detections, probs.numel()))
    query, labels = flat // k, flat % k
    soft = mask_logits(mask_embed[query], mask_features).sigmoid()
    scores = scores * maskness(soft, threshold)
    order = torch.argsort(scores, descending=True)
    return detections_from_masks(soft[order], labels[order], scores[order], resized, original, threshold)


def probs_at_input(logits: Tensor, resized: tuple[int, int], original: tuple[int, int]) -> Tensor:
    """Mask probabilities ``[Q, H, W]`` on the input image's pixels (bilinear, padding cut off)."""
    h = -(-resized[0] // MASK_STRIDE)
    w = -(-resized[1] // MASK_STRIDE)
    valid = logits[None, :, :h, :w]
    up = F.interpolate(valid, size=(h * MASK_STRIDE, w * MASK_STRIDE), mode="bilinear", align_corners=False)
    up = up[..., : resized[0], : resized[1]]
    return F.interpolate(up, size=original, mode="bilinear", align_corners=False)[0].sigmoid()


def semantic_inference(
    class_logits: Tensor,
    mask_embed: Tensor,
    mask_features: Tensor,
    resized: tuple[int, int],
    original: tuple[int, int],
) -> Tensor:
    """``[K, H, W]`` class scores per pixel: each query's class distribution spread over its mask."""
    probs = class_logits.softmax(-1)[:, :-1]
    masks = probs_at_input(mask_logits(mask_embed, mask_features), resized, original)
    return torch.einsum("qk,qhw->khw", probs, masks)


def panoptic_inference(
    class_logits: Tensor,
    mask_embed: Tensor,
    mask_features: Tensor,
    resized: tuple[int, int],
    original: tuple[int, int],
    is_thing: Tensor,
    object_threshold: float = 0.8,
    overlap_threshold: float = 0.8,
) -> tuple[Tensor, list[dict]]:
    """A segment id per pixel (0: void) and one record per segment (``id``, 1-based ``label``,
    ``isthing``, ``score``). Confident queries claim pixels by score x mask probability; a query
    keeps its segment only if it still holds ``overlap_threshold`` of its own mask, and the
    segments of one stuff class are merged."""
    scores, labels = class_logits.softmax(-1).max(-1)
    keep = (labels != class_logits.shape[-1] - 1) & (scores > object_threshold)
    segments = torch.zeros(original, dtype=torch.int32, device=class_logits.device)
    info: list[dict] = []
    if not keep.any():
        return segments, info
    probs = probs_at_input(mask_logits(mask_embed[keep], mask_features), resized, original)
    scores, labels = scores[keep], labels[keep]
    owner = (scores[:, None, None] * probs).argmax(0)
    stuff_segment: dict[int, int] = {}
    for q, label in enumerate(labels.tolist()):
        own = probs[q] >= 0.5
        region = (owner == q) & own
        area, full = int(region.sum()), int(own.sum())
        if area == 0 or full == 0 or area / full < overlap_threshold:
            continue
        thing = bool(is_thing[label])
        if not thing and label in stuff_segment:
            segments[region] = stuff_segment[label]
            continue
        segment_id = len(info) + 1
        segments[region] = segment_id
        info.append({"id": segment_id, "label": label + 1, "isthing": thing, "score": float(scores[q])})
        if not thing:
            stuff_segment[label] = segment_id
    return segments, info


class Mask2FormerPostprocessor(nn.Module):
    """The final layer's queries read as instances (``instance_inference``), image by image."""

    def __init__(self, detections: int = 100, threshold: float = 0.5) -> None:
        super().__init__()
        self.detections, self.threshold = detections, threshold

    @torch.no_grad()
    def forward(
        self, outputs: Mask2FormerOutputs, resized: list[tuple[int, int]], original: list[tuple[int, int]]
    ) -> list[dict[str, Tensor]]:
        final = outputs.final
        return [
            instance_inference(*final.image(b), resized[b], size, self.detections, self.threshold)
            for b, size in enumerate(original)
        ]
