"""SAM's mask decoder: output tokens read masks and their predicted IoU from the two-way transformer.

Four mask tokens (one for unambiguous prompts, three for the whole / part /
sub-part readings of an ambiguous click) and one IoU token join the prompt
tokens. After the transformer the image embedding is upsampled 4x by two
transposed convolutions, and each mask token's MLP (a hypernetwork) gives the
weights of a 1x1 convolution over it: the mask logits at 1/4 of the input.

With ``dynamic_layers`` (not in the official models) each hypernetwork gives
instead the weights of CondInst's small dynamic head (``dynamic_mask_head.py``),
whose input is the upscaled embedding plus every pixel's offset from the
prompt's anchor (its box's centre, else its first point). A linear read-out of
the embedding cannot say "near the click"; the decoder must first write the
click's position into the image tokens, which a model trained from scratch on
a CPU budget does not learn (BENCHMARKS.md). The offsets give the head that
position directly, the way CondInst's instances get theirs. Each hypernetwork
starts from a head that answers a diamond around the anchor (``blob_parameters``;
the multimask outputs half, once and twice as wide as the single one), so an
untrained decoder already outputs masks where it was prompted.

With ``iou_from_masks`` (not in the official models) the predicted IoU of each
output is read, as Mask Scoring R-CNN's is, from that mask as well as from the
tokens: the mean embedding inside and outside it, its area and its stability.
The IoU token alone has to guess the quality of a mask it has not seen, which
a model trained on a CPU budget ranks little better than chance
(BENCHMARKS.md), while the automatic masks and the first click's choice among
the readings rest on that ranking.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from instseg.models.dynamic_mask_head import blob_parameters, dynamic_mask_logits, num_parameters
from instseg.models.mlp import MLP
from instseg.models.sam.image_encoder import ChannelLayerNorm
from instseg.models.sam.two_way_transformer import TwoWayTransformer


class MaskDecoder(nn.Module):
    def __init__(
        self,
        dim: int,
        transformer: TwoWayTransformer,
        multimask: int = 3,
        iou_depth: int = 3,
        iou_hidden: int = 256,
        dynamic_layers: int = 0,
        dynamic_width: int = 8,
        dynamic_soi: float = 64.0,
        dynamic_prior: float = 16.0,
        iou_from_masks: bool = False,
    ) -> None:
        super().__init__()
        self.dynamic_layers, self.dynamic_width, self.dynamic_soi = dynamic_layers, dynamic_width, dynamic_soi
        self.transformer = transformer
        self.num_masks = multimask + 1
        self.iou_token = nn.Embedding(1, dim)
        self.mask_tokens = nn.Embedding(self.num_masks, dim)
        self.upscale = nn.Sequential(
            nn.ConvTranspose2d(dim, dim // 4, 2, stride=2),
            ChannelLayerNorm(dim // 4, eps=1e-6),
            nn.GELU(),
            nn.ConvTranspose2d(dim // 4, dim // 8, 2, stride=2),
            nn.GELU(),
        )
        head = num_parameters(dim // 8, dynamic_width, dynamic_layers) if dynamic_layers else dim // 8
        self.hypernetworks = nn.ModuleList(MLP(dim, dim, head, 3) for _ in range(self.num_masks))
        self.iou_from_masks = iou_from_masks
        if iou_from_masks:  # one output at a time: [IoU token; its mask token; mask_reads]
            self.iou_head = MLP(2 * dim + 2 * (dim // 8) + MASK_STATISTICS, iou_hidden, 1, iou_depth)
        else:
            self.iou_head = MLP(dim, iou_hidden, self.num_masks, iou_depth)
        if dynamic_layers >= 2 and dynamic_width >= 4:
            self.start_from_blobs(dim // 8, dynamic_prior / dynamic_soi)

    @torch.no_grad()
    def start_from_blobs(self, channels: int, radius: float) -> None:
        """The hypernetworks' last layers: a tenth of their random weights plus a blob as the bias; the
        IoU head starts at one half, so that an untrained model's masks pass a zero IoU threshold."""
        nn.init.constant_(self.iou_head.layers[-1].bias, 0.5)
        widths = [1.0] + [2.0 ** (i - (self.num_masks - 2) / 2) for i in range(self.num_masks - 1)]
        for mlp, width in zip(self.hypernetworks, widths, strict=True):
            last = mlp.layers[-1]
            last.weight.mul_(0.1)
            last.bias.copy_(
                blob_parameters(channels, self.dynamic_width, self.dynamic_layers, radius * width)
            )

    def forward(
        self,
        embedding: Tensor,
        positions: Tensor,
        sparse: Tensor,
        dense: Tensor,
        multimask: bool,
        offsets: tuple[Tensor, Tensor] | None = None,
    ) -> tuple[Tensor, Tensor]:
        """One image's ``embedding`` ``[1, C, h, w]`` and B prompts -> (mask logits ``[B, M, 4h, 4w]``,
        predicted IoU ``[B, M]``), M = 3 with ``multimask``, else the single-mask output alone.
        ``offsets``, which the dynamic head needs: (the input-pixel centres of the logit cells
        ``[1 or B, 2, 16hw]``, each prompt's anchor ``[B, 2]``)."""
        masks, iou = self.predict_all(embedding, positions, sparse, dense, offsets)
        keep = slice(1, None) if multimask else slice(0, 1)
        return masks[:, keep], iou[:, keep]

    def predict_all(
        self,
        embedding: Tensor,
        positions: Tensor,
        sparse: Tensor,
        dense: Tensor,
        offsets: tuple[Tensor, Tensor] | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Every output: the single mask first, then the multimask ones (training supervises all)."""
        batch = sparse.shape[0]
        outputs = torch.cat([self.iou_token.weight, self.mask_tokens.weight])[None].expand(batch, -1, -1)
        tokens = torch.cat([outputs, sparse], dim=1)
        image = embedding.expand(batch, -1, -1, -1) + dense
        b, c, h, w = image.shape
        tokens, image = self.transformer(image, positions.expand(batch, -1, -1, -1), tokens)
        upscaled = self.upscale(image.transpose(1, 2).reshape(b, c, h, w))
        params = [mlp(tokens[:, 1 + i]) for i, mlp in enumerate(self.hypernetworks)]
        if self.dynamic_layers:
            assert offsets is not None, "the dynamic mask head reads each pixel's offset from the prompt"
            pixels, anchors = offsets
            soi = anchors.new_full((b,), self.dynamic_soi)
            features = upscaled.flatten(2)
            logits = [
                dynamic_mask_logits(
                    p, features, pixels, anchors, soi, self.dynamic_width, self.dynamic_layers
                )
                for p in params
            ]
            masks = torch.stack(logits, dim=1).reshape(b, self.num_masks, *upscaled.shape[-2:])
        else:
            weights = torch.stack(params, dim=1)
            masks = (weights @ upscaled.flatten(2)).reshape(b, self.num_masks, *upscaled.shape[-2:])
        if not self.iou_from_masks:
            return masks, self.iou_head(tokens[:, 0])
        reads = mask_reads(masks.detach().flatten(2), upscaled.detach().flatten(2))
        outputs = tokens[:, : self.num_masks + 1]
        together = torch.cat([outputs[:, :1].expand(-1, self.num_masks, -1), outputs[:, 1:], reads], dim=-1)
        return masks, self.iou_head(together)[..., 0]


MASK_STATISTICS = 3


def mask_reads(logits: Tensor, features: Tensor) -> Tensor:
    """What a mask-aware IoU head reads of each of M masks, ``logits`` ``[B, M, P]`` over the P pixels
    of ``features`` ``[B, C, P]``: the mean feature inside and outside the soft mask, its soft area
    (a fraction of the P), its ``stability`` (as automatic masks filter by) and its mean uncertainty
    ``4 p (1 - p)`` -> ``[B, M, 2C + 3]``."""
    prob = logits.sigmoid()
    area = prob.sum(-1, keepdim=True)
    rest = prob.shape[-1] - area
    inside = (prob @ features.transpose(1, 2)) / area.clamp(min=1e-3)
    outside = ((1 - prob) @ features.transpose(1, 2)) / rest.clamp(min=1e-3)
    stable = stability(logits.flatten(0, 1), 1.0).view(*logits.shape[:2], 1)
    uncertain = (4 * prob * (1 - prob)).mean(-1, keepdim=True)
    return torch.cat([inside, outside, area / prob.shape[-1], stable, uncertain], dim=-1)


def stability(logits: Tensor, offset: float) -> Tensor:
    """IoU of each mask thresholded at ``+offset`` with itself at ``-offset`` (the first is inside the
    second, so it is a ratio of areas); ``[N, ...]`` -> ``[N]``."""
    inner = (logits > offset).flatten(1).sum(1).float()
    outer = (logits > -offset).flatten(1).sum(1).float()
    return inner / outer.clamp(min=1)


def upsample_logits(
    logits: Tensor, stride: int, resized: tuple[int, int], original: tuple[int, int]
) -> Tensor:
    """Logits ``[B, M, 4h, 4w]`` over the network input -> logits at the original image's size."""
    logits = F.interpolate(logits, scale_factor=stride / 4, mode="bilinear", align_corners=False)
    logits = logits[..., : resized[0], : resized[1]]
    return F.interpolate(logits, original, mode="bilinear", align_corners=False)


def logit_threshold(probability: float) -> float:
    """The mask threshold, a probability, as the logit that SAM's outputs are compared with."""
    return math.log(probability / (1 - probability))
