"""The FCOS families' postprocessor: box selection first, then masks for the kept detections only.

Score threshold, per-level top-k and class-wise box NMS pick the detections
(``select_detections``); the family's ``FCOSMasks.probs`` makes their mask
probabilities a chunk at a time, and the shared ``assemble_detections`` turns
them into the output.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Literal

import torch
from torch import Tensor, nn

from instseg.models.fcos.head import ltrb_to_boxes
from instseg.models.nms import class_wise_nms, fast_nms_boxes
from instseg.models.point_head import refine_image_masks
from instseg.models.postprocess import MaskAssembly, assemble_detections

if TYPE_CHECKING:
    from instseg.models.fcos.model import FCOSConfig, FCOSMasks, FCOSOutputs


@dataclass(frozen=True)
class DetectionRules:
    """Which candidate boxes become detections: the inference thresholds, in one record."""

    score_threshold: float  # class probability a candidate needs
    pre_nms_top: int  # candidates kept per level before NMS
    nms_threshold: float  # box IoU above which the lower-scored box of a class is dropped
    detections_per_image: int
    nms: Literal["fast", "standard"] = "standard"

    @classmethod
    def from_config(cls, cfg: FCOSConfig) -> DetectionRules:
        return cls(cfg.score_threshold, cfg.pre_nms_top, cfg.nms_threshold, cfg.detections_per_image, cfg.nms)


def select_detections(
    class_logits: Tensor,
    quality_logits: Tensor,
    boxes: Tensor,
    level_sizes: tuple[int, ...],
    rules: DetectionRules,
) -> tuple[Tensor, Tensor, Tensor]:
    """One image: (location index, label 0..K-1, score) of the detections kept after NMS, best first.

    Score = sqrt(class probability x centre-ness); candidates need a class
    probability above ``rules.score_threshold``, and each level (``level_sizes``
    locations, finest first) keeps its ``rules.pre_nms_top`` best before
    class-wise box NMS: torchvision's sequential ``batched_nms`` ("standard") or
    YOLACT's one-matrix Fast NMS ("fast"). No step reads a tensor's value back
    into Python, so the same code runs eagerly and inside an exported graph.
    """
    prob = class_logits.sigmoid()
    score = (prob * quality_logits.sigmoid()[:, None]).sqrt()
    ranked = torch.where(prob > rules.score_threshold, score, -1.0)  # -1: not a candidate
    num_classes = prob.shape[1]
    locs, labels, cand = [], [], []
    start = 0
    for size in level_sizes:
        level = ranked[start : start + size].flatten()
        top = level.topk(torch.sym_min(rules.pre_nms_top, level.numel()))
        is_candidate = top.values >= 0
        flat = top.indices[is_candidate]
        loc = flat // num_classes
        locs.append(loc + start)
        labels.append(flat - loc * num_classes)
        cand.append(top.values[is_candidate])
        start = start + size
    locs, labels, cand = torch.cat(locs), torch.cat(labels), torch.cat(cand)
    if rules.nms == "fast":
        order = torch.argsort(cand, descending=True)[: rules.pre_nms_top]
        locs, labels, cand = locs[order], labels[order], cand[order]
        survive = fast_nms_boxes(boxes[locs], labels, rules.nms_threshold)
        kept = torch.nonzero(survive).flatten()[: rules.detections_per_image]
    else:
        kept = class_wise_nms(boxes[locs], cand, labels, rules.nms_threshold)[: rules.detections_per_image]
    return locs[kept], labels[kept], cand[kept]


class FCOSPostprocessor(nn.Module):
    """``FCOSOutputs`` -> one output dict per image (boxes are the predicted boxes)."""

    def __init__(self, cfg: FCOSConfig, masks: FCOSMasks) -> None:
        super().__init__()
        self.rules = DetectionRules.from_config(cfg)
        self.assembly = MaskAssembly(cfg.mask_threshold, masks.stride, masks.crop_to_boxes, cfg.mask_rescore)
        self.masks = masks
        self.point_inference_points = cfg.point_inference_points

    @torch.no_grad()
    def forward(
        self, outputs: FCOSOutputs, resized: list[tuple[int, int]], original: list[tuple[int, int]]
    ) -> list[dict[str, Tensor]]:
        return [self.image(outputs, b, resized[b], original[b]) for b in range(len(original))]

    def image(
        self, outputs: FCOSOutputs, b: int, resized: tuple[int, int], original: tuple[int, int]
    ) -> dict[str, Tensor]:
        locations, levels = outputs.locations, outputs.levels
        level_sizes = outputs.level_sizes or tuple(torch.bincount(levels).tolist())
        params, mask_input = outputs.mask_params[b], outputs.mask_input[b]
        boxes = ltrb_to_boxes(locations, outputs.ltrb[b])
        keep, labels, scores = select_detections(
            outputs.class_logits[b], outputs.quality_logits[b], boxes, level_sizes, self.rules
        )
        boxes = boxes[keep]

        def probs(idx: Tensor) -> Tensor:
            sel = keep[idx]
            return self.masks.probs(params[sel], mask_input, locations[sel], levels[sel], boxes[idx])

        refine = None
        if outputs.points is not None:  # point refinement up to the input's resolution
            points = outputs.points.image(b)
            refine = partial(refine_image_masks, points, self.point_inference_points, self.assembly.stride)
        return assemble_detections(
            probs, boxes, labels, scores, resized, original, self.assembly, refine=refine
        )
