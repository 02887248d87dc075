"""Mask R-CNN as one graph: torchvision's inference steps written again on symbolic shapes.

torchvision's ``GeneralizedRCNN`` reads sizes back into Python where a graph
cannot: anchor strides and per-level top-k from feature map sizes, a batched
NMS that branches on the number of boxes, box decoding that branches on their
count, and pasting one mask at a time. This module runs the model's own trained
parts (backbone, RPN head, RoI poolers, box and mask heads) through the same
arithmetic with those steps written on tensors: anchors from the feature maps'
symbolic shapes, top-k bounded by ``sym_min``, NMS by the coordinate trick
(``class_wise_nms``) and every mask pasted at once, on windows (``windowed_paste_masks``).
The export's check and the parity tests hold it to the eager model.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torchvision.models.detection.rpn import concat_box_prediction_layers
from torchvision.ops import MultiScaleRoIAlign, clip_boxes_to_image, remove_small_boxes, roi_align, roi_pool

from instseg.export.graph import NetworkInput
from instseg.models.mask_rcnn import InstanceMaskRCNN, MultiScaleRoIPool
from instseg.models.nms import class_wise_nms
from instseg.models.postprocess import boxes_at_input, windowed_paste_masks


class MaskRCNNGraph(nn.Module):
    """``image`` uint8 ``[H, W, 3]`` RGB -> ``boxes``, ``labels``, ``scores``, ``masks``, ``mask_origins``, as
    ``ImageGraph`` returns them."""

    def __init__(self, model: InstanceMaskRCNN) -> None:
        super().__init__()
        if model.point_head is not None:
            raise NotImplementedError("point refinement is not exported; export with --coarse")
        self.model = model.eval()
        self.input = NetworkInput(model.transform)
        with torch.no_grad():  # torchvision's RoI poolers take their scales from the first image they see
            model([torch.zeros(3, 64, 64)])

    def forward(self, image: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        pixels, size = self.input(image)
        features = self.model.backbone(pixels)
        proposals = self.proposals(pixels, list(features.values()), size)
        boxes, scores, labels = self.detections(features, proposals, size)
        heads = self.model.roi_heads
        logits = heads.mask_predictor(heads.mask_head(pool_rois(heads.mask_roi_pool, features, boxes)))
        probs = logits[torch.arange(labels.shape[0], device=labels.device), labels].sigmoid()
        original = (image.shape[0], image.shape[1])
        boxes = boxes_at_input(boxes, size, original)
        values, origins = windowed_paste_masks(probs, boxes, original)
        threshold = self.model.transform.mask_threshold
        keep = torch.nonzero(values.flatten(1).amax(1) > threshold).flatten()  # empty masks dropped
        masks = (values > threshold).index_select(0, keep)
        return boxes[keep], labels[keep], scores[keep], masks, origins.index_select(0, keep)

    def proposals(self, pixels: Tensor, features: list[Tensor], size: tuple[int, int]) -> Tensor:
        """The RPN's proposals ``[P, 4]`` on the resized image: each level's best ``pre_nms_top_n``
        anchors, decoded, clipped, NMS per level, the best ``post_nms_top_n`` kept."""
        rpn = self.model.rpn
        objectness, deltas = rpn.head(features)
        candidates, scores, levels = [], [], []
        cell_anchors = rpn.anchor_generator.cell_anchors
        for level, (feature, cells) in enumerate(zip(features, cell_anchors, strict=True)):
            level_scores, level_deltas = concat_box_prediction_layers([objectness[level]], [deltas[level]])
            level_scores = level_scores.flatten()
            k = torch.sym_min(rpn.pre_nms_top_n(), level_scores.shape[0])
            top = level_scores.topk(k).indices
            anchors = grid_anchors(pixels, feature, cells.to(pixels))
            candidates.append(rpn.box_coder.decode_single(level_deltas[top], anchors[top]))
            scores.append(level_scores[top])
            levels.append(torch.full_like(top, level))
        boxes, probs = clip_boxes_to_image(torch.cat(candidates), size), torch.cat(scores).sigmoid()
        level_of = torch.cat(levels)
        keep = remove_small_boxes(boxes, rpn.min_size)
        boxes, probs, level_of = boxes[keep], probs[keep], level_of[keep]
        keep = torch.nonzero(probs >= rpn.score_thresh).flatten()
        boxes, probs, level_of = boxes[keep], probs[keep], level_of[keep]
        keep = class_wise_nms(boxes, probs, level_of, rpn.nms_thresh)[: rpn.post_nms_top_n()]
        return boxes[keep]

    def detections(
        self, features: dict[str, Tensor], proposals: Tensor, size: tuple[int, int]
    ) -> tuple[Tensor, Tensor, Tensor]:
        """The box head's detections on the resized image: boxes ``[N, 4]``, scores ``[N]`` (descending),
        labels ``[N]`` (1..K), as ``RoIHeads.postprocess_detections`` makes them."""
        heads = self.model.roi_heads
        class_logits, box_deltas = heads.box_predictor(
            heads.box_head(pool_rois(heads.box_roi_pool, features, proposals))
        )
        boxes = clip_boxes_to_image(heads.box_coder.decode_single(box_deltas, proposals).reshape(-1, 4), size)
        probs = class_logits.softmax(-1)
        classes = probs.shape[-1]
        labels = torch.arange(classes, device=probs.device).view(1, -1).expand_as(probs)
        boxes = boxes.reshape(probs.shape[0], classes, 4)[:, 1:].reshape(-1, 4)  # background dropped
        probs, labels = probs[:, 1:].reshape(-1), labels[:, 1:].reshape(-1)
        keep = torch.nonzero(probs > heads.score_thresh).flatten()
        boxes, probs, labels = boxes[keep], probs[keep], labels[keep]
        keep = remove_small_boxes(boxes, min_size=1e-2)
        boxes, probs, labels = boxes[keep], probs[keep], labels[keep]
        keep = class_wise_nms(boxes, probs, labels, heads.nms_thresh)[: heads.detections_per_img]
        return boxes[keep], probs[keep], labels[keep]


def pool_rois(pooler: MultiScaleRoIAlign, features: dict[str, Tensor], boxes: Tensor) -> Tensor:
    """``pooler``'s features of one image's boxes ``[R, C, S, S]``: each box pooled from its FPN level (its
    ``map_levels``, scales and sizes), with the number of boxes kept symbolic (torchvision's loop reads it
    with ``len``)."""
    assert pooler.scales is not None and pooler.map_levels is not None, "the pooler has seen an image"
    rois = torch.cat([torch.zeros_like(boxes[:, :1]), boxes], dim=1)
    levels = pooler.map_levels([boxes])
    maps = [features[name] for name in pooler.featmap_names]
    out = maps[0].new_zeros((boxes.shape[0], maps[0].shape[1], *pooler.output_size))
    for level, (feature, scale) in enumerate(zip(maps, pooler.scales, strict=True)):
        idx = torch.nonzero(levels == level).flatten()
        if isinstance(pooler, MultiScaleRoIPool):
            pooled = roi_pool(feature, rois[idx], pooler.output_size, scale)
        else:
            pooled = roi_align(feature, rois[idx], pooler.output_size, scale, pooler.sampling_ratio)
        out = out.index_put((idx,), pooled.to(out.dtype))
    return out


def grid_anchors(pixels: Tensor, feature: Tensor, cells: Tensor) -> Tensor:
    """One level's anchors ``[h * w * A, 4]`` in ``AnchorGenerator``'s order (row, column, cell anchor),
    with its stride: the padded input's size floor-divided by the feature map's."""
    height, width = feature.shape[-2:]
    stride_y, stride_x = pixels.shape[-2] // height, pixels.shape[-1] // width
    ys = torch.arange(height, device=pixels.device) * stride_y
    xs = torch.arange(width, device=pixels.device) * stride_x
    shift_y, shift_x = torch.meshgrid(ys, xs, indexing="ij")
    shift_x, shift_y = shift_x.reshape(-1), shift_y.reshape(-1)
    shifts = torch.stack((shift_x, shift_y, shift_x, shift_y), dim=1)
    return (shifts.view(-1, 1, 4) + cells.view(1, -1, 4)).reshape(-1, 4)
