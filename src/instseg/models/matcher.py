"""Set prediction's matcher (DETR, Mask2Former): each ground truth paired with exactly one query.

The pairing of least total cost is found by the Hungarian algorithm (scipy's
``linear_sum_assignment``); every other query learns "no object", which is why
such models need no NMS.
"""

from __future__ import annotations

import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor, nn
from torchvision.ops import box_convert, generalized_box_iou

from instseg.models.losses import pairwise_dice_loss, pairwise_sigmoid_bce
from instseg.models.point_sampling import point_count, point_sample


def hungarian_match(cost: Tensor) -> tuple[Tensor, Tensor]:
    """The one-to-one pairing of rows and columns of least total ``cost`` (``[Q, G]``), sorted by row.

    Non-finite costs (a NaN from a diverging model) are made the worst choice
    instead of failing inside scipy.
    """
    cost = torch.nan_to_num(cost.detach().float().cpu(), nan=1e8, posinf=1e8, neginf=-1e8)
    rows, cols = linear_sum_assignment(cost.numpy())
    return torch.as_tensor(rows, dtype=torch.int64), torch.as_tensor(cols, dtype=torch.int64)


class HungarianMatcher(nn.Module):
    """Mask2Former's matcher: cost = class + mask BCE + mask Dice, the masks compared on K random points.

    ``class_logits [B, Q, K+1]`` (last: no object); a query's mask is its
    ``mask_embed [B, Q, C]`` dotted with ``mask_features [B, C, h, w]``, so only
    the K sampled points of the features are read, never a full mask. Each
    target has ``labels [G]`` (0-based) and float ``masks [G, H, W]`` covering the
    same extent as the features. Returns one ``(query indices, target
    indices)`` pair per image.

    With ``boxes [B, Q, 4]`` (cx, cy, w, h) and targets' ``boxes [G, 4]`` (xyxy, the same units), the
    cost also has L1 and GIoU terms (Mask DINO's): points spread over a large map give a small object
    too few of them to tell one query's mask from another's, and its box does.

    ``group_size``: the queries form consecutive groups of this many, each matched one-to-one with
    the targets on its own (Group DETR's one-to-many assignment: every object gets one query per
    group); ``None``: all queries are one group.
    """

    def __init__(
        self,
        class_cost: float = 2.0,
        mask_cost: float = 5.0,
        dice_cost: float = 5.0,
        num_points: int = 12544,
        points_per_pixel: float = 0.0,
        group_size: int | None = None,
        box_cost: float = 5.0,
        giou_cost: float = 2.0,
    ) -> None:
        super().__init__()
        self.class_cost, self.mask_cost, self.dice_cost = class_cost, mask_cost, dice_cost
        self.box_cost, self.giou_cost = box_cost, giou_cost
        self.num_points, self.points_per_pixel = num_points, points_per_pixel
        self.group_size = group_size

    @torch.no_grad()
    def forward(
        self,
        class_logits: Tensor,
        mask_embed: Tensor,
        mask_features: Tensor,
        targets: list[dict[str, Tensor]],
        generators: list[torch.Generator | None] | None = None,
        boxes: Tensor | None = None,
    ) -> list[tuple[Tensor, Tensor]]:
        """``generators``: one per image for its random points (``point_sampling.draw_generator``)."""
        indices = []
        for b, target in enumerate(targets):
            labels, gt = target["labels"], target["masks"]
            if len(labels) == 0:
                empty = torch.zeros(0, dtype=torch.int64)
                indices.append((empty, empty))
                continue
            generator = generators[b] if generators is not None else None
            count = point_count(self.num_points, self.points_per_pixel, mask_features.shape[-2:])
            points = torch.rand((1, count, 2), device=gt.device, generator=generator)
            pred = mask_embed[b] @ point_sample(mask_features[b : b + 1], points)[0]
            true = point_sample(gt[:, None], points.expand(len(gt), -1, -1))[:, 0]
            cost = (
                -self.class_cost * class_logits[b].float().softmax(-1)[:, labels]
                + self.mask_cost * pairwise_sigmoid_bce(pred.float(), true)
                + self.dice_cost * pairwise_dice_loss(pred.float(), true)
            )
            if boxes is not None:
                cost = cost + self.box_costs(boxes[b].float(), target["boxes"].to(cost))
            indices.append(self.match_groups(cost))
        return indices

    def box_costs(self, boxes: Tensor, true: Tensor) -> Tensor:
        """``[Q, G]`` L1 (on cx, cy, w, h) and GIoU costs between ``boxes [Q, 4]`` (cx, cy, w, h) and
        ``true [G, 4]`` (xyxy)."""
        l1 = torch.cdist(boxes, box_convert(true, "xyxy", "cxcywh"), p=1)
        giou = generalized_box_iou(box_convert(boxes, "cxcywh", "xyxy"), true)
        return self.box_cost * l1 - self.giou_cost * giou

    def match_groups(self, cost: Tensor) -> tuple[Tensor, Tensor]:
        """``hungarian_match`` within each group of ``group_size`` consecutive queries; sorted by query."""
        size = self.group_size or cost.shape[0]
        starts = range(0, cost.shape[0], size)
        pairs = [hungarian_match(cost[start : start + size]) for start in starts]
        rows = torch.cat([r + start for (r, _), start in zip(pairs, starts, strict=True)])
        return rows, torch.cat([c for _, c in pairs])
