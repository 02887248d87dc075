"""Mask R-CNN on torchvision's implementation, configured for training from scratch.

torchvision's ``GeneralizedRCNN`` is the seam every instseg family follows
(transform -> backbone, RPN, RoI heads -> transform.postprocess), so the model
is torchvision's own. What instseg changes around it: trainable normalisation
and small-object anchors (``backbones``), a fixed-scale resize mode
(``transform``), bool masks pasted box by box instead of a full-image float
stack with empty masks dropped, the project's loss names, and a quantised
RoIPool option for the ablation (``MultiScaleRoIPool``: torchvision ships
``roi_pool`` but only a multi-level wrapper for ``roi_align``). Boxes are the
predicted boxes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.detection import MaskRCNN
from torchvision.models.detection._utils import BalancedPositiveNegativeSampler
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import FastRCNNConvFCHead, FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.models.detection.rpn import RPNHead
from torchvision.models.detection.transform import resize_boxes
from torchvision.ops import MultiScaleRoIAlign, box_iou, roi_pool
from torchvision.ops.poolers import LevelMapper

from instseg.config import ModelConfig
from instseg.cropped_masks import as_requested
from instseg.distributed import mean_over_ranks
from instseg.models.backbones import build_fpn_backbone, norm_layer
from instseg.models.point_head import PointFeatures, PointHead, point_loss, subdivide
from instseg.models.postprocess import paste_masks
from instseg.models.seesaw import NormedLinear, SeesawLoss
from instseg.models.transform import ResizeNormalize

# torchvision's loss names -> the project's (one name per meaning across families)
LOSS_NAMES = {
    "loss_classifier": "loss_class",
    "loss_box_reg": "loss_box",
    "loss_mask": "loss_mask",
    "loss_objectness": "loss_objectness",
    "loss_rpn_box_reg": "loss_rpn_box",
}


@dataclass
class MaskRCNNConfig(ModelConfig):
    fpn_channels: int = 256
    returned_layers: tuple[int, ...] = (1, 2, 3, 4)
    anchor_sizes: tuple[int, ...] = (32, 64, 128, 256, 512)  # one per pyramid level
    aspect_ratios: tuple[float, ...] = (0.5, 1.0, 2.0)
    roi_pooler: Literal["align", "pool"] = "align"
    # v2: torchvision's maskrcnn_resnet50_fpn_v2 heads (two-conv RPN head, four convs + one FC in the
    # box head, BatchNorm in the FPN and the heads); v1: the original paper's
    heads: Literal["v1", "v2"] = "v1"
    mask_resolution: Literal[14, 28] = 28
    mask_head_channels: int = 256
    mask_head_convs: int = 4
    box_head_dim: int = 1024
    rpn_pre_nms_train: int = 2000
    rpn_post_nms_train: int = 2000
    rpn_pre_nms_test: int = 1000
    rpn_post_nms_test: int = 1000
    rpn_batch_per_image: int = 256
    box_batch_per_image: int = 512
    score_threshold: float = 0.05
    nms_threshold: float = 0.5
    # the box classifier's loss: torchvision's softmax cross-entropy, or for long-tailed data Seesaw
    # (models/seesaw.py) on a normalised linear classifier with an object/background output apart
    class_loss: Literal["cross_entropy", "seesaw"] = "cross_entropy"
    # PointRend (models/point_head.py): a point head re-predicts the RoI masks' most uncertain points
    # from the finest pyramid level and the input pixels; trained on importance-sampled points, applied
    # by adaptive subdivision until the mask grid is as fine as the largest box (at most point_steps x2)
    point_refine: bool = False
    point_head_channels: int = 128
    point_train_points: int = 196  # per positive RoI
    point_steps: int = 3
    point_inference_points: int = 784  # re-predicted per mask and step


def nuclei_preset() -> MaskRCNNConfig:
    """Small dense objects (~7-40 px): 1.5x upsampling, small anchors, light heads, 500 detections.

    Chosen for a 2-core CPU budget on DSB2018 train (BENCHMARKS.md): more
    upsampling costs time per step in proportion, and the RoI heads at
    torchvision's widths cost as much as the backbone.
    """
    return MaskRCNNConfig(
        backbone="resnet18",
        norm="gn",
        fpn_channels=96,
        scale=1.5,
        max_size=2048,
        anchor_sizes=(12, 24, 48, 96, 192),
        aspect_ratios=(0.5, 1.0, 2.0),
        mask_head_channels=96,
        box_head_dim=512,
        rpn_pre_nms_test=2000,
        rpn_post_nms_test=1500,
        box_batch_per_image=128,
        score_threshold=0.05,
        detections_per_image=500,
    )


class MultiScaleRoIPool(MultiScaleRoIAlign):
    """Same level assignment as ``MultiScaleRoIAlign`` (FPN paper, eq. 1), quantised pooling inside."""

    def forward(
        self, x: dict[str, Tensor], boxes: list[Tensor], image_shapes: list[tuple[int, int]]
    ) -> Tensor:
        features = [x[name] for name in self.featmap_names]
        if self.scales is None or self.map_levels is None:
            max_h = max(h for h, _ in image_shapes)
            scales = [2.0 ** round(math.log2(f.shape[-2] / max_h)) for f in features]
            self.scales = scales
            self.map_levels = LevelMapper(
                int(-math.log2(scales[0])),
                int(-math.log2(scales[-1])),
                canonical_scale=self.canonical_scale,
                canonical_level=self.canonical_level,
            )
        rois = torch.cat([torch.cat([torch.full_like(b[:, :1], i), b], dim=1) for i, b in enumerate(boxes)])
        levels = self.map_levels(boxes)
        out = features[0].new_zeros((rois.shape[0], features[0].shape[1], *self.output_size))
        for level, (feature, scale) in enumerate(zip(features, self.scales, strict=True)):
            idx = torch.where(levels == level)[0]
            if idx.numel():
                out[idx] = roi_pool(feature, rois[idx], self.output_size, scale).to(out.dtype)
        return out


class RoIMaskTransform(ResizeNormalize):
    """The shared resize/normalise, with RoI masks pasted box by box as bool at the end, empty ones
    dropped (as every family drops them)."""

    def __init__(self, cfg: MaskRCNNConfig) -> None:
        super().__init__(cfg.min_size, cfg.max_size, cfg.scale)
        self.mask_threshold = cfg.mask_threshold

    def postprocess(
        self,
        result: list[dict[str, Tensor]],
        image_shapes: list[tuple[int, int]],
        original_image_sizes: list[tuple[int, int]],
    ) -> list[dict[str, Tensor]]:
        if self.training:
            return result
        for pred, size, original in zip(result, image_shapes, original_image_sizes, strict=True):
            pred["boxes"] = resize_boxes(pred["boxes"], size, original)
            if "masks" in pred:
                masks = paste_masks(pred["masks"], pred["boxes"], original, self.mask_threshold)
                nonempty = masks.nonempty().to(pred["boxes"].device)
                if not bool(nonempty.all()):
                    masks = masks[nonempty]
                    for key in ("boxes", "labels", "scores"):
                        pred[key] = pred[key][nonempty]
                pred["masks"] = as_requested(masks)
        return result


class CountingSampler:
    """torchvision's positive/negative sampler, unchanged, noting how many anchors or RoIs it picked
    (``picked``), how many of them are positive (``positive``) and their labels in the order the
    heads see them (``picked_labels``) in the last batch."""

    def __init__(self, sampler: BalancedPositiveNegativeSampler) -> None:
        self.sampler = sampler
        self.picked, self.positive = 0, 0
        self.picked_labels: list[Tensor] = []

    def __call__(self, labels: list[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
        pos, neg = self.sampler(labels)
        self.positive = sum(int(p.sum()) for p in pos)
        self.picked = self.positive + sum(int(n.sum()) for n in neg)
        # torchvision keeps each image's picked indexes in ascending order, as a mask selects them
        self.picked_labels = [lab[(p | n).bool()] for lab, p, n in zip(labels, pos, neg, strict=True)]
        return pos, neg


class SeesawBoxPredictor(nn.Module):
    """Box classes and deltas for Seesaw training: ``NormedLinear`` logits over "background",
    "object" and the ``K`` classes (the layout of the reference), returned to torchvision as the
    log-probabilities ``[log P(bg), log P(obj) + log P(k | obj)]``, so that its softmax in
    postprocessing gives each class's score ``P(obj) * P(k | obj)``. The raw logits of the last call
    are kept for the loss (``InstanceMaskRCNN.forward``)."""

    def __init__(self, in_channels: int, num_classes: int) -> None:
        super().__init__()
        self.cls_score = NormedLinear(in_channels, num_classes + 2)
        self.bbox_pred = nn.Linear(in_channels, (num_classes + 1) * 4)
        self.class_loss = SeesawLoss(num_classes)
        self.raw_logits: Tensor | None = None

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        x = x.flatten(1)
        raw = self.cls_score(x)
        self.raw_logits = raw if self.training else None
        objectness = F.log_softmax(raw[:, :2], dim=1)
        classes = F.log_softmax(raw[:, 2:], dim=1)
        return torch.cat([objectness[:, :1], objectness[:, 1:] + classes], dim=1), self.bbox_pred(x)

    def loss(self, labels: Tensor) -> Tensor:
        """The mean over the picked RoIs of object-vs-background cross-entropy, plus Seesaw over the
        classes of the positive ones (labels ``1..K``; 0 is background)."""
        assert self.raw_logits is not None, "loss() follows a training forward"
        raw, labels = self.raw_logits, labels.long().to(self.raw_logits.device)
        positive = labels > 0
        objectness = F.cross_entropy(raw[:, :2].float(), positive.long(), reduction="sum")
        self.class_loss.count(labels[positive] - 1)
        classes = self.class_loss(raw[positive, 2:], labels[positive] - 1).sum()
        self.raw_logits = None
        return (objectness + classes) / max(len(labels), 1)


class RecordingPooler(nn.Module):
    """A RoI pooler that keeps the boxes of its last call: in training, the positive RoIs of
    torchvision's mask branch, whose coarse masks the point head learns to refine."""

    def __init__(self, pooler: nn.Module) -> None:
        super().__init__()
        self.pooler = pooler
        self.boxes: list[Tensor] = []

    def forward(
        self, x: dict[str, Tensor], boxes: list[Tensor], image_shapes: list[tuple[int, int]]
    ) -> Tensor:
        self.boxes = boxes
        return self.pooler(x, boxes, image_shapes)


class RecordingMaskPredictor(MaskRCNNPredictor):
    """torchvision's mask predictor, keeping its last training logits ``[R, K + 1, M, M]``."""

    def __init__(self, in_channels: int, dim_reduced: int, num_classes: int) -> None:
        super().__init__(in_channels, dim_reduced, num_classes)
        self.logits: Tensor | None = None

    def forward(self, x: Tensor) -> Tensor:
        out = super().forward(x)
        self.logits = out if self.training else None
        return out


def _rank_share(count: int) -> Tensor:
    """This rank's count over the mean count of the ranks (1 in one process): a loss that is a mean over
    this rank's samples, times this, is their sum over the mean count, and DistributedDataParallel's
    gradient average then makes it the mean over every rank's samples, as one process would take it."""
    return torch.as_tensor(float(count)) / mean_over_ranks(count, least=1e-6)


class InstanceMaskRCNN(MaskRCNN):
    """torchvision's ``MaskRCNN`` with the project's loss names; the module tree and weights are its own.

    Its losses are means over the anchors and RoIs sampled in the batch; on
    several ranks each is rescaled by ``_rank_share`` so that the ranks
    together train as one process on the whole batch (the samplers count).
    """

    # what ``train_only: classifier`` trains: the box head's class layer, as in decoupled re-training
    classifier_prefixes = ("roi_heads.box_predictor.cls_score.",)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.point_head: PointHead | None = None  # set by build_mask_rcnn when cfg.point_refine
        self.cfg = MaskRCNNConfig()

    def forward(
        self, images: list[Tensor], targets: list[dict[str, Tensor]] | None = None
    ) -> dict[str, Tensor] | list[dict[str, Tensor]]:
        out = super().forward(images, targets) if self.point_head is None else self._refined(images, targets)
        if not isinstance(out, dict):
            return out
        rpn, roi = self.rpn.fg_bg_sampler, self.roi_heads.fg_bg_sampler
        predictor = self.roi_heads.box_predictor
        if isinstance(predictor, SeesawBoxPredictor) and isinstance(roi, CountingSampler):
            # torchvision's RoIHeads computes its own cross-entropy inside forward; the classifier's
            # loss is recomputed here from the same logits and the RoIs it picked
            out["loss_classifier"] = predictor.loss(torch.cat(roi.picked_labels))
        if isinstance(rpn, CountingSampler) and isinstance(roi, CountingSampler):
            shares = {
                "loss_objectness": _rank_share(rpn.picked),
                "loss_rpn_box_reg": _rank_share(rpn.picked),
                "loss_classifier": _rank_share(roi.picked),
                "loss_box_reg": _rank_share(roi.picked),
                "loss_mask": _rank_share(roi.positive),
                "loss_point": _rank_share(roi.positive),
            }
            out = {k: v * shares[k].to(v) if k in shares else v for k, v in out.items()}
        return {LOSS_NAMES.get(k, k): v for k, v in out.items()}

    def _refined(
        self, images: list[Tensor], targets: list[dict[str, Tensor]] | None
    ) -> dict[str, Tensor] | list[dict[str, Tensor]]:
        """``GeneralizedRCNN.forward``'s steps, with the point head between the RoI heads and pasting
        (the pyramid and the batch are needed there, and torchvision keeps them to itself)."""
        if self.training and targets is None:
            raise ValueError("targets are required in training mode")
        original = [(int(im.shape[-2]), int(im.shape[-1])) for im in images]
        batch, targets = self.transform(images, targets)
        features = self.backbone(batch.tensors)
        proposals, proposal_losses = self.rpn(batch, features, targets)
        detections, detector_losses = self.roi_heads(features, proposals, batch.image_sizes, targets)
        assert self.point_head is not None
        padded = (int(batch.tensors.shape[-2]), int(batch.tensors.shape[-1]))
        points = PointFeatures(self.point_head, [features["0"], batch.tensors], padded)
        if self.training:
            assert targets is not None
            return {**proposal_losses, **detector_losses, "loss_point": self._point_loss(points, targets)}
        for b, det in enumerate(detections):
            det["masks"] = self._refine(det["masks"], det["boxes"], points.image(b))
        return self.transform.postprocess(detections, batch.image_sizes, original)

    def _point_loss(self, points: PointFeatures, targets: list[dict[str, Tensor]]) -> Tensor:
        """The point head's loss on the positive RoIs of torchvision's mask branch, each matched to its
        ground truth as torchvision matches it (highest box IoU)."""
        pool, predictor = self.roi_heads.mask_roi_pool, self.roi_heads.mask_predictor
        sampler = self.roi_heads.fg_bg_sampler
        assert isinstance(pool, RecordingPooler) and isinstance(predictor, RecordingMaskPredictor)
        assert isinstance(sampler, CountingSampler) and predictor.logits is not None
        labels = torch.cat([lab[lab > 0] for lab in sampler.picked_labels]).long()
        coarse = predictor.logits[torch.arange(len(labels), device=labels.device), labels]
        height, width = points.padded
        gt_masks, index = [], []
        for b, (boxes, t) in enumerate(zip(pool.boxes, targets, strict=True)):
            matched = box_iou(boxes, t["boxes"]).argmax(1) if len(t["boxes"]) else boxes.new_zeros(0).long()
            masks = t["masks"][matched].to(coarse.dtype)
            gt_masks.append(F.pad(masks, (0, width - masks.shape[-1], 0, height - masks.shape[-2])))
            index.append(torch.full((len(boxes),), b, dtype=torch.int64, device=coarse.device))
        regions, index = torch.cat(pool.boxes), torch.cat(index)
        pool.boxes, predictor.logits = [], None  # the graph is not kept on the modules (nor deep-copied)
        return point_loss(points, coarse, regions, index, torch.cat(gt_masks), self.cfg.point_train_points)

    def _refine(self, probs: Tensor, boxes: Tensor, points: PointFeatures) -> Tensor:
        """One image's RoI mask probabilities ``[N, 1, M, M]`` -> refined ``[N, 1, M', M']``, subdivided
        until a cell is at most a pixel of the largest box (at most ``point_steps`` times)."""
        if len(boxes) == 0:
            return probs
        m = probs.shape[-1]
        side = float((boxes[:, 2:] - boxes[:, :2]).max())
        steps = min(max(math.ceil(math.log2(max(side, 1.0) / m)), 0), self.cfg.point_steps)
        coarse = torch.logit(probs[:, 0].clamp(1e-6, 1 - 1e-6))
        index = torch.zeros(len(boxes), dtype=torch.int64, device=boxes.device)
        refined = subdivide(points, coarse, boxes, index, steps, self.cfg.point_inference_points)
        return refined.sigmoid()[:, None]


def build_mask_rcnn(cfg: MaskRCNNConfig, num_classes: int) -> InstanceMaskRCNN:
    """A torchvision ``MaskRCNN`` for ``num_classes`` foreground classes (labels 1..K)."""
    levels = len(cfg.returned_layers) + 1
    if len(cfg.anchor_sizes) != levels:
        raise ValueError(f"anchor_sizes needs one size per pyramid level ({levels}), got {cfg.anchor_sizes}")
    backbone = build_fpn_backbone(
        cfg.backbone,
        cfg.norm,
        cfg.fpn_channels,
        cfg.returned_layers,
        cfg.backbone_weights,
        fpn_norm="bn" if cfg.heads == "v2" else None,
    )
    channels = cfg.fpn_channels
    anchors = AnchorGenerator(tuple((s,) for s in cfg.anchor_sizes), (tuple(cfg.aspect_ratios),) * levels)
    featmaps = [str(i) for i in range(len(cfg.returned_layers))]
    pooler = MultiScaleRoIAlign if cfg.roi_pooler == "align" else MultiScaleRoIPool
    v2 = cfg.heads == "v2"
    head_norm = norm_layer("bn") if v2 else norm_layer(cfg.norm) if cfg.norm == "gn" else None
    box_head = (
        FastRCNNConvFCHead((channels, 7, 7), [channels] * 4, [cfg.box_head_dim], norm_layer=norm_layer("bn"))
        if v2
        else TwoMLPHead(channels * 7 * 7, cfg.box_head_dim)
    )
    model = InstanceMaskRCNN(
        backbone,
        num_classes=None,
        rpn_anchor_generator=anchors,
        rpn_head=RPNHead(channels, anchors.num_anchors_per_location()[0], conv_depth=2 if v2 else 1),
        rpn_pre_nms_top_n_train=cfg.rpn_pre_nms_train,
        rpn_post_nms_top_n_train=cfg.rpn_post_nms_train,
        rpn_pre_nms_top_n_test=cfg.rpn_pre_nms_test,
        rpn_post_nms_top_n_test=cfg.rpn_post_nms_test,
        rpn_batch_size_per_image=cfg.rpn_batch_per_image,
        box_roi_pool=pooler(featmaps, output_size=7, sampling_ratio=2),
        box_head=box_head,
        box_predictor=(
            SeesawBoxPredictor(cfg.box_head_dim, num_classes)
            if cfg.class_loss == "seesaw"
            else FastRCNNPredictor(cfg.box_head_dim, num_classes + 1)
        ),
        box_score_thresh=cfg.score_threshold,
        box_nms_thresh=cfg.nms_threshold,
        box_detections_per_img=cfg.detections_per_image,
        box_batch_size_per_image=cfg.box_batch_per_image,
        mask_roi_pool=pooler(featmaps, output_size=cfg.mask_resolution // 2, sampling_ratio=2),
        mask_head=MaskRCNNHeads(
            channels, [cfg.mask_head_channels] * cfg.mask_head_convs, 1, norm_layer=head_norm
        ),
        mask_predictor=MaskRCNNPredictor(cfg.mask_head_channels, cfg.mask_head_channels, num_classes + 1),
    )
    model.cfg = cfg
    if cfg.point_refine:
        model.roi_heads.mask_roi_pool = RecordingPooler(model.roi_heads.mask_roi_pool)
        predictor = RecordingMaskPredictor(cfg.mask_head_channels, cfg.mask_head_channels, num_classes + 1)
        predictor.load_state_dict(model.roi_heads.mask_predictor.state_dict())
        model.roi_heads.mask_predictor = predictor
        model.point_head = PointHead(channels + 3, cfg.point_head_channels)
    model.transform = RoIMaskTransform(cfg)
    model.rpn.fg_bg_sampler = CountingSampler(model.rpn.fg_bg_sampler)
    model.roi_heads.fg_bg_sampler = CountingSampler(model.roi_heads.fg_bg_sampler)
    return model
