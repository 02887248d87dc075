"""SOLOv2's postprocessor: grid peaks, masks for the candidates only, Matrix NMS, then mask assembly.

Detections are masks here: boxes are the masks' tight boxes.
"""

from __future__ import annotations

from functools import partial
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from instseg.models.nms import matrix_nms
from instseg.models.point_head import PointFeatures, refine_image_masks
from instseg.models.postprocess import MASK_STRIDE, detections_from_masks, maskness
from instseg.models.solov2.cells import KernelMasks

if TYPE_CHECKING:
    from instseg.models.solov2.model import SOLOv2Config, SOLOv2Outputs


class SOLOv2Postprocessor(nn.Module):
    def __init__(self, cfg: SOLOv2Config, masks: KernelMasks) -> None:
        super().__init__()
        self.cfg = cfg
        self.masks = masks

    @torch.no_grad()
    def forward(
        self, outputs: SOLOv2Outputs, resized: list[tuple[int, int]], original: list[tuple[int, int]]
    ) -> list[dict[str, Tensor]]:
        return [
            self.image(
                [c[b] for c in outputs.class_logits],
                [k[b] for k in outputs.kernels],
                outputs.mask_features[b],
                resized[b],
                original[b],
                None if outputs.points is None else outputs.points.image(b),
            )
            for b in range(len(original))
        ]

    def image(
        self,
        cate: list[Tensor],
        kernels: list[Tensor],
        mask_feats: Tensor,
        resized: tuple[int, int],
        original: tuple[int, int],
        points: PointFeatures | None = None,
    ) -> dict[str, Tensor]:
        """Point NMS on the grids, score threshold, masks for the candidates only, Matrix NMS, top-k;
        with ``points``, the kept masks are refined to the input's resolution."""
        cfg = self.cfg
        scores, kerns, min_area = [], [], []
        for level, (c, k) in enumerate(zip(cate, kernels, strict=True)):
            heat = c.sigmoid()
            peak = F.max_pool2d(heat[None], 2, stride=1, padding=1)[0, :, : heat.shape[1], : heat.shape[2]]
            scores.append((heat * (peak == heat)).flatten(1).T)  # [cells, K]
            kerns.append(k.flatten(1).T)
            cells_px = cfg.grid_cells[level] / MASK_STRIDE  # a cell's side on the mask map
            min_area.append(torch.full((heat.shape[1] * heat.shape[2],), cells_px))
        scores, kerns, min_area = (
            torch.cat(scores),
            torch.cat(kerns),
            torch.cat(min_area).to(mask_feats.device),
        )
        grids = [(c.shape[-2], c.shape[-1]) for c in cate]
        cells, labels = torch.nonzero(scores > cfg.score_threshold, as_tuple=True)
        cand = scores[cells, labels]
        top = torch.topk(cand, torch.sym_min(cfg.pre_nms_top, cand.shape[0])).indices
        cells, labels, cand = cells[top], labels[top], cand[top]
        soft = self.masks.logits(kerns[cells], cells, grids, mask_feats).sigmoid()
        hard = soft > cfg.mask_threshold
        keep = hard.flatten(1).sum(1).float() > min_area[cells]
        soft, hard, labels, cand = soft[keep], hard[keep], labels[keep], cand[keep]
        rescored = cand * maskness(soft, cfg.mask_threshold, hard)
        order = torch.argsort(rescored, descending=True)
        soft, hard, labels = soft[order], hard[order], labels[order]
        decayed = matrix_nms(hard, labels, rescored[order], cfg.nms_kernel, cfg.nms_sigma)
        keep = torch.nonzero(decayed >= cfg.update_threshold).flatten()
        keep = keep[torch.argsort(decayed[keep], descending=True)][: cfg.detections_per_image]
        refine = (
            None
            if points is None
            else partial(refine_image_masks, points, cfg.point_inference_points, MASK_STRIDE)
        )
        return detections_from_masks(
            soft[keep], labels[keep], decayed[keep], resized, original, cfg.mask_threshold, refine
        )
