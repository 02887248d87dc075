"""FCOS (Tian et al., ICCV 2019): an anchor-free dense detection head, shared by the families built on it.

Every location of every pyramid level predicts class scores, the distances to
the four sides of its object's box, and a centre-ness that down-weights
boxes predicted far from an object's centre. The families add per-location
mask parameters on the box tower (``extra_outputs``): CondInst's dynamic
filters, YOLACT's prototype coefficients.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from instseg.models.conv_tower import conv_tower
from instseg.models.fcos.targets import feature_locations


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
        self.merged_out: nn.Conv2d | None = None  # set by ``prepare_for_inference``
        self.merged_names: list[str] = []
        self.merged_sizes: list[int] = []

    def _tower_outputs(self) -> dict[str, nn.Conv2d]:
        """The output convolutions that read the box tower's features (with a shared tower: all)."""
        convs = {"ltrb": self.box_out, "ctr": self.ctr_out}
        if self.extra_out is not None:
            convs["extra"] = self.extra_out
        return convs if self.box_tower is not None else {"cls": self.cls_out, **convs}

    def prepare_for_inference(self) -> None:
        """One convolution, stacked from the outputs that read the same features (inference copies).

        A few wide convolutions beat many narrow ones on CPU, where a 1-channel
        3x3 output at P2 costs nearly what a 16-channel one does. Called by
        ``fusion.inference_model`` on every module that defines it.
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


def ltrb_to_boxes(locations: Tensor, ltrb: Tensor) -> Tensor:
    return torch.cat([locations - ltrb[..., :2], locations + ltrb[..., 2:]], -1)


def ltrb_iou(a: Tensor, b: Tensor) -> Tensor:
    """IoU of box pairs given as distances from one shared point to their sides, ``[N, 4]`` each."""
    lo = torch.minimum(a, b)
    inter = (lo[:, 0] + lo[:, 2]) * (lo[:, 1] + lo[:, 3])
    area_a = (a[:, 0] + a[:, 2]) * (a[:, 1] + a[:, 3])
    area_b = (b[:, 0] + b[:, 2]) * (b[:, 1] + b[:, 3])
    return inter / (area_a + area_b - inter).clamp(min=1e-6)
