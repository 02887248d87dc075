"""FCOS (Tian et al., ICCV 2019): an anchor-free dense detection head, shared by the families built on it.

Every location of every pyramid level predicts class scores, the distances to
the four sides of its object's box, and a centre-ness that down-weights
boxes predicted far from an object's centre. CondInst adds a controller
output on the box tower (``extra_outputs``); the losses here cover the
detection part, and ``select_detections`` the detection half of inference.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.detection.transform import resize_boxes
from torchvision.ops import batched_nms, generalized_box_iou_loss

from instseg.losses import focal_loss_sum
from instseg.matching import PointTargets, assign_points, feature_locations
from instseg.models.conv_tower import conv_tower
from instseg.models.nms import fast_nms_boxes
from instseg.structures import any_pixel, masks_at_input, mass_centres

MASK_STRIDE = 4  # the FCOS-based families predict and supervise masks at 1/4 of the input
MASK_CACHE_BYTES = 256 * 2**20  # low-resolution mask probabilities kept between assembly's two passes


class FCOSHead(nn.Module):
    """Class, box and centre-ness outputs (plus ``extra_outputs`` channels from the box tower), all levels.

    ``shared_tower``: one tower feeds every output, as in YOLACT's head (FCOS
    has two); ``separable``: depthwise-separable tower convs (``conv_tower``).

    Returns per-level tensors flattened to ``[B, L_level, C]`` and concatenated
    over levels: ``cls`` [B, L, K] logits, ``ltrb`` [B, L, 4] in input pixels,
    ``ctr`` [B, L] logits, ``extra`` [B, L, E].
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        strides: tuple[int, ...],
        channels: int = 256,
        depth: int = 4,
        norm: str = "gn",
        extra_outputs: int = 0,
        prior: float = 0.01,
        shared_tower: bool = False,
        separable: bool = False,
    ) -> None:
        super().__init__()
        self.strides = strides
        self.cls_tower = conv_tower(in_channels, channels, depth, norm, len(strides), separable)
        self.box_tower = (
            None if shared_tower else conv_tower(in_channels, channels, depth, norm, len(strides), separable)
        )
        self.cls_out = nn.Conv2d(channels, num_classes, 3, padding=1)
        self.box_out = nn.Conv2d(channels, 4, 3, padding=1)
        self.ctr_out = nn.Conv2d(channels, 1, 3, padding=1)
        self.extra_out = nn.Conv2d(channels, extra_outputs, 3, padding=1) if extra_outputs else None
        self.scales = nn.Parameter(torch.ones(len(strides)))  # one learnable box scale per level
        for conv in [self.cls_out, self.box_out, self.ctr_out, self.extra_out]:
            if conv is not None:
                nn.init.normal_(conv.weight, std=0.01)
                nn.init.zeros_(conv.bias)
        nn.init.constant_(self.cls_out.bias, -math.log((1 - prior) / prior))
        self.merged_out: nn.Conv2d | None = None  # set by ``merge_outputs`` on inference copies
        self.merged_names: list[str] = []
        self.merged_sizes: list[int] = []

    def _tower_outputs(self) -> dict[str, nn.Conv2d]:
        """The output convolutions that read the box tower's features (with a shared tower: all)."""
        convs = {"ltrb": self.box_out, "ctr": self.ctr_out}
        if self.extra_out is not None:
            convs["extra"] = self.extra_out
        return convs if self.box_tower is not None else {"cls": self.cls_out, **convs}

    def merge_outputs(self) -> None:
        """One convolution, stacked from the outputs that read the same features (inference copies).

        A few wide convolutions beat many narrow ones on CPU: at P2 a 1-channel
        3x3 output costs about as much time as a 16-channel one.
        """
        convs = self._tower_outputs()
        merged = nn.Conv2d(
            self.box_out.in_channels, sum(c.out_channels for c in convs.values()), 3, padding=1
        )
        merged.weight = nn.Parameter(torch.cat([c.weight.detach() for c in convs.values()]))
        merged.bias = nn.Parameter(torch.cat([c.bias.detach() for c in convs.values()]))
        self.merged_out, self.merged_names = merged.to(self.box_out.weight), list(convs)
        self.merged_sizes = [c.out_channels for c in convs.values()]

    def _outputs(self, c: Tensor, b: Tensor) -> dict[str, Tensor]:
        if self.merged_out is None:
            return {"cls": self.cls_out(c)} | {k: conv(b) for k, conv in self._tower_outputs().items()}
        outs = dict(zip(self.merged_names, self.merged_out(b).split(self.merged_sizes, 1), strict=True))
        return outs if "cls" in outs else {"cls": self.cls_out(c), **outs}

    def forward(self, features: list[Tensor]) -> dict[str, Tensor]:
        outs: dict[str, list[Tensor]] = {"cls": [], "ltrb": [], "ctr": [], "extra": []}
        for level, (x, stride) in enumerate(zip(features, self.strides, strict=True)):
            c = self.cls_tower(x, level)
            b = c if self.box_tower is None else self.box_tower(x, level)
            out = self._outputs(c, b)
            outs["cls"].append(out["cls"].flatten(2).transpose(1, 2))
            ltrb = F.relu(out["ltrb"] * self.scales[level]) * stride
            outs["ltrb"].append(ltrb.flatten(2).transpose(1, 2))
            outs["ctr"].append(out["ctr"].flatten(1))
            if "extra" in out:
                outs["extra"].append(out["extra"].flatten(2).transpose(1, 2))
        return {k: torch.cat(v, 1) for k, v in outs.items() if v}


def level_ranges(bounds: tuple[float, ...]) -> Tensor:
    """(lo, hi) of the largest box-side distance per level, from the bounds between levels."""
    edges = [0.0, *bounds, math.inf]
    return torch.tensor([edges[i : i + 2] for i in range(len(edges) - 1)])


def point_layout(features: list[Tensor], strides: tuple[int, ...]) -> tuple[Tensor, Tensor]:
    """Input-pixel (x, y) of every location of every level ``[L, 2]``, and its level ``[L]``."""
    sizes = [tuple(f.shape[-2:]) for f in features]
    device = features[0].device
    locations = feature_locations(sizes, list(strides), device)
    level_of = torch.cat([torch.full((h * w,), i, device=device) for i, (h, w) in enumerate(sizes)])
    return locations, level_of


def assign_targets(
    targets: list[dict[str, Tensor]],
    locations: Tensor,
    level_of: Tensor,
    strides: tuple[int, ...],
    ranges: Tensor,
    radius: float,
) -> list[PointTargets]:
    """FCOS targets of each image, centre regions around mask mass centres (as CondInst does)."""
    stride = torch.tensor(strides, device=locations.device)[level_of]
    rng = ranges.to(locations.device)[level_of]
    return [
        assign_points(locations, stride, rng, t["boxes"], mass_centres(t["masks"], t["boxes"]), radius)
        for t in targets
    ]


def ltrb_to_boxes(locations: Tensor, ltrb: Tensor) -> Tensor:
    return torch.cat([locations - ltrb[..., :2], locations + ltrb[..., 2:]], -1)


def ltrb_iou(a: Tensor, b: Tensor) -> Tensor:
    """IoU of box pairs given as distances from one shared point to their sides, ``[N, 4]`` each."""
    lo = torch.minimum(a, b)
    inter = (lo[:, 0] + lo[:, 2]) * (lo[:, 1] + lo[:, 3])
    area_a = (a[:, 0] + a[:, 2]) * (a[:, 1] + a[:, 3])
    area_b = (b[:, 0] + b[:, 2]) * (b[:, 1] + b[:, 3])
    return inter / (area_a + area_b - inter).clamp(min=1e-6)


def fcos_losses(
    head: dict[str, Tensor],
    targets: list[PointTargets],
    labels: list[Tensor],
    locations: Tensor,
    alpha: float = 0.25,
    gamma: float = 2.0,
    quality: str = "centerness",
) -> dict[str, Tensor]:
    """Focal classification over all locations, GIoU and centre-ness BCE over positives.

    The box loss is weighted by the centre-ness targets (as in FCOS), so the
    boxes that inference ranks highest are the ones trained hardest. With
    ``quality="iou"`` the centre-ness branch learns the IoU of the box its
    location predicts instead (IoU-aware ranking, Wu et al. 2020): geometry
    says where a good box should come from, the IoU says whether it did.
    """
    num_classes = head["cls"].shape[-1]
    cls_t = torch.stack(
        [
            torch.where(t.owner >= 0, lab[t.owner.clamp(min=0)] if len(lab) else t.owner, 0)
            for t, lab in zip(targets, labels, strict=True)
        ]
    )  # [B, L], 0 = background, else 1..K
    onehot = F.one_hot(cls_t, num_classes + 1)[..., 1:]
    pos = cls_t > 0
    num_pos = max(int(pos.sum()), 1)
    loss_cls = focal_loss_sum(head["cls"], onehot, alpha, gamma) / num_pos
    ltrb_t = torch.stack([t.ltrb for t in targets])[pos]
    ctr_t = torch.stack([t.centerness for t in targets])[pos]
    if len(ltrb_t) == 0:
        zero = head["ltrb"].sum() * 0.0 + head["ctr"].sum() * 0.0
        return {"loss_cls": loss_cls, "loss_box": zero, "loss_ctr": zero}
    loc = locations[None].expand(len(targets), -1, -1)[pos]
    giou = generalized_box_iou_loss(
        ltrb_to_boxes(loc, head["ltrb"][pos]), ltrb_to_boxes(loc, ltrb_t), reduction="none"
    )
    loss_box = (giou * ctr_t).sum() / ctr_t.sum().clamp(min=1e-6)
    quality_t = ltrb_iou(head["ltrb"][pos].detach(), ltrb_t) if quality == "iou" else ctr_t
    loss_ctr = F.binary_cross_entropy_with_logits(head["ctr"][pos], quality_t, reduction="sum") / num_pos
    return {"loss_cls": loss_cls, "loss_box": loss_box, "loss_ctr": loss_ctr}


def select_detections(
    cls_logits: Tensor,
    ctr_logits: Tensor,
    boxes: Tensor,
    level_of: Tensor,
    score_threshold: float,
    pre_nms_top: int,
    nms_threshold: float,
    max_detections: int,
    nms: str = "standard",
) -> tuple[Tensor, Tensor, Tensor]:
    """One image: (location index, label 0..K-1, score) of the detections kept after NMS, best first.

    Score = sqrt(class probability x centre-ness); candidates need a class
    probability above ``score_threshold``, and each level keeps its
    ``pre_nms_top`` best before class-wise box NMS: torchvision's sequential
    ``batched_nms`` ("standard") or YOLACT's one-matrix Fast NMS ("fast").
    """
    prob = cls_logits.sigmoid()
    score = (prob * ctr_logits.sigmoid()[:, None]).sqrt()
    locs, labels = torch.nonzero(prob > score_threshold, as_tuple=True)
    cand = score[locs, labels]
    keep = []
    for level in torch.unique(level_of[locs]).tolist():
        idx = torch.nonzero(level_of[locs] == level).flatten()
        keep.append(idx[torch.topk(cand[idx], min(pre_nms_top, len(idx))).indices])
    if keep:
        sel = torch.cat(keep)
        locs, labels, cand = locs[sel], labels[sel], cand[sel]
    if nms == "fast":
        order = torch.argsort(cand, descending=True)[:pre_nms_top]
        locs, labels, cand = locs[order], labels[order], cand[order]
        kept = torch.nonzero(fast_nms_boxes(boxes[locs], labels, nms_threshold)).flatten()[:max_detections]
    else:
        kept = batched_nms(boxes[locs], cand, labels, nms_threshold)[:max_detections]
    return locs[kept], labels[kept], cand[kept]


def assemble_detections(
    mask_probs: Callable[[Tensor], Tensor],
    boxes: Tensor,
    labels: Tensor,
    scores: Tensor,
    resized: tuple[int, int],
    original: tuple[int, int],
    threshold: float,
    crop_to_boxes: bool = False,
    rescore: bool = False,
    chunk: int = 64,
    stride: int = MASK_STRIDE,
) -> dict[str, Tensor]:
    """The output dict of one image.

    Masks come from ``mask_probs(detection indices)`` (1/``stride``
    probabilities on the padded batch), a chunk at a time to bound memory, and
    are pasted at the input resolution into one output, best score first, where
    ``crop_to_boxes`` cuts them to their boxes; boxes are clipped and rescaled;
    empty masks are dropped. ``rescore`` multiplies each score by its mask's
    mean probability inside the thresholded mask (SOLOv2's maskness), so
    confident masks rank first; it is read at 1/``stride`` in a first pass, so
    that full-size masks are written once, already in order (the first pass's
    probabilities are kept for the second up to ``MASK_CACHE_BYTES``).
    """
    boxes = boxes.clone()
    boxes[:, 0::2] = boxes[:, 0::2].clamp(0, resized[1])
    boxes[:, 1::2] = boxes[:, 1::2].clamp(0, resized[0])
    boxes = resize_boxes(boxes, resized, original)
    kept: list[Tensor] = []  # the rescoring pass's probabilities, reused while they fit the budget
    if rescore and len(boxes):
        maskness, fits = [], True
        for idx in torch.arange(len(boxes), device=boxes.device).split(chunk):
            probs = mask_probs(idx)
            hard = probs > threshold
            maskness.append((probs * hard).flatten(1).sum(1) / hard.flatten(1).sum(1).clamp(min=1))
            fits = fits and sum(p.nbytes for p in kept) + probs.nbytes <= MASK_CACHE_BYTES
            kept = [*kept, probs] if fits else []
        scores = scores * torch.cat(maskness).to(scores.device)
    probs_all = torch.cat(kept) if kept else None  # else computed again, a chunk at a time
    order = torch.argsort(scores, descending=True, stable=True)
    masks = torch.zeros((len(boxes), *original), dtype=torch.bool, device=boxes.device)
    for k, idx in enumerate(order.split(chunk)):
        probs = probs_all[idx] if probs_all is not None else mask_probs(idx)
        clip = boxes[idx] if crop_to_boxes else None
        out = masks[k * chunk : k * chunk + len(idx)]
        masks_at_input(probs, resized, original, threshold, stride, clip, out)
    boxes, labels, scores = boxes[order], labels[order], scores[order]
    nonempty = any_pixel(masks)
    if not bool(nonempty.all()):
        masks, boxes, labels, scores = masks[nonempty], boxes[nonempty], labels[nonempty], scores[nonempty]
    return {"boxes": boxes, "labels": labels + 1, "scores": scores, "masks": masks}


def box_masks(boxes: Tensor, size: tuple[int, int], stride: int = MASK_STRIDE) -> Tensor:
    """``[N, h, w]`` bool: which cells of a 1/stride map have their centre inside each xyxy box."""
    ys = (torch.arange(size[0], device=boxes.device, dtype=boxes.dtype) + 0.5) * stride
    xs = (torch.arange(size[1], device=boxes.device, dtype=boxes.dtype) + 0.5) * stride
    rows = (ys[None] >= boxes[:, 1:2]) & (ys[None] < boxes[:, 3:4])
    cols = (xs[None] >= boxes[:, 0:1]) & (xs[None] < boxes[:, 2:3])
    return rows[:, :, None] & cols[:, None, :]
