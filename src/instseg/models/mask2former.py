"""Mask2Former (Cheng et al., CVPR 2022): a set of queries, each a class (or "no object") and a mask.

Backbone -> pixel decoder (per-pixel embeddings at 1/4 + three coarser maps)
-> masked-attention transformer decoder -> one (class, mask) pair per query.
Training pairs each ground truth with one query (``matching.HungarianMatcher``)
in ``SetCriterion``; inference reads the pairs as instances, a semantic map or
a panoptic map (``mask2former_postprocess``), with no NMS.

Crowded images: a query-based model finds at most ``num_queries`` objects, so
the nuclei preset has 400 (DSB2018 has up to ~375 nuclei per image).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models._utils import IntermediateLayerGetter

from instseg.matching import HungarianMatcher
from instseg.models.backbones import BackboneName, build_trunk
from instseg.models.mask2former_criterion import SetCriterion
from instseg.models.mask2former_decoder import MaskedAttentionDecoder
from instseg.models.mask2former_postprocess import instance_inference, panoptic_inference, semantic_inference
from instseg.models.pixel_decoder import DeformablePixelDecoder, FPNPixelDecoder
from instseg.models.transform import ResizeNormalize


@dataclass
class Mask2FormerConfig:
    backbone: BackboneName = "resnet18"
    norm: Literal["gn", "bn", "frozen_bn"] = "gn"
    backbone_weights: str | None = None  # local torchvision state dict of the trunk
    scale: float | None = None  # fixed resize factor; None: shorter side to min_size
    min_size: int = 800
    max_size: int = 1333
    pixel_decoder: Literal["deformable", "fpn"] = "deformable"
    hidden_dim: int = 256  # width of the pixel decoder, the queries and the mask embeddings
    heads: int = 8
    encoder_layers: int = 6  # deformable layers of the pixel decoder
    encoder_ffn: int = 1024
    decoder_layers: int = 9  # masked-attention layers (the paper's "10" counts the prediction before them)
    decoder_ffn: int = 2048
    num_queries: int = 100
    class_weight: float = 2.0
    mask_weight: float = 5.0
    dice_weight: float = 5.0
    no_object_weight: float = 0.1
    num_points: int = 12544  # sampled points per mask, in matching and in the loss
    oversample_ratio: float = 3.0
    importance_ratio: float = 0.75
    detections_per_image: int = 100
    mask_threshold: float = 0.5


def nuclei_preset() -> Mask2FormerConfig:
    """Small dense objects on a CPU budget: 1.5x input, a narrower and shallower transformer, 400 queries."""
    return Mask2FormerConfig(
        scale=1.5,
        max_size=2048,
        hidden_dim=128,
        encoder_layers=3,
        encoder_ffn=512,
        decoder_layers=6,
        decoder_ffn=512,
        num_queries=400,
        num_points=2048,
        detections_per_image=400,
    )


def light_preset() -> Mask2FormerConfig:
    """The FPN pixel decoder and a 6-layer, 128-wide transformer: about a third of the default's cost."""
    return Mask2FormerConfig(
        pixel_decoder="fpn", hidden_dim=128, decoder_layers=6, decoder_ffn=1024, num_points=4096
    )


class Mask2Former(nn.Module):
    """The detection contract: ``model(images, targets)`` -> losses; ``model(images)`` -> results."""

    def __init__(self, cfg: Mask2FormerConfig, num_classes: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.num_classes = num_classes
        self.transform = ResizeNormalize(cfg.min_size, cfg.max_size, cfg.scale)
        trunk, return_layers, channels = build_trunk(
            cfg.backbone, cfg.norm, (1, 2, 3, 4), cfg.backbone_weights
        )
        self.backbone = IntermediateLayerGetter(trunk, return_layers)
        if cfg.pixel_decoder == "deformable":
            self.pixel_decoder: nn.Module = DeformablePixelDecoder(
                channels, cfg.hidden_dim, cfg.encoder_layers, cfg.heads, cfg.encoder_ffn
            )
        else:
            self.pixel_decoder = FPNPixelDecoder(channels, cfg.hidden_dim)
        self.decoder = MaskedAttentionDecoder(
            cfg.hidden_dim, num_classes, cfg.num_queries, cfg.decoder_layers, cfg.heads, cfg.decoder_ffn
        )
        matcher = HungarianMatcher(cfg.class_weight, cfg.mask_weight, cfg.dice_weight, cfg.num_points)
        self.criterion = SetCriterion(
            num_classes,
            matcher,
            cfg.class_weight,
            cfg.mask_weight,
            cfg.dice_weight,
            cfg.no_object_weight,
            cfg.num_points,
            cfg.oversample_ratio,
            cfg.importance_ratio,
        )

    def network(self, pixels: Tensor) -> list[dict[str, Tensor]]:
        """Normalised, padded ``[B, 3, H, W]`` -> per decoder layer ``class_logits``, ``mask_embed`` and
        ``mask_features`` (``mask2former_decoder.mask_logits`` turns the last two into masks)."""
        features = list(self.backbone(pixels).values())
        mask_features, maps = self.pixel_decoder(features)
        return self.decoder(maps, mask_features)

    def forward(
        self, images: list[Tensor], targets: list[dict[str, Tensor]] | None = None
    ) -> dict[str, Tensor] | list[dict[str, Tensor]]:
        if self.training and targets is None:
            raise ValueError("targets are required in training mode")
        if not self.training:
            cfg = self.cfg
            return [
                instance_inference(*readout, cfg.detections_per_image, cfg.mask_threshold)
                for readout in self.readouts(images)
            ]
        batch, targets = self.transform(images, targets)
        outputs = self.network(batch.tensors)
        return self.criterion(outputs, self.set_targets(targets, batch.tensors.shape[-2:]))

    def readouts(self, images: list[Tensor]) -> list[tuple]:
        """Per image, what the postprocessors read: the final layer's ``class_logits``, ``mask_embed``,
        ``mask_features``, and the resized and original image sizes."""
        batch, _ = self.transform(images, None)
        final = self.network(batch.tensors)[-1]
        return [
            (
                final["class_logits"][b],
                final["mask_embed"][b],
                final["mask_features"][b],
                batch.image_sizes[b],
                (im.shape[-2], im.shape[-1]),
            )
            for b, im in enumerate(images)
        ]

    @staticmethod
    def set_targets(targets: list[dict[str, Tensor]], padded: tuple[int, int]) -> list[dict[str, Tensor]]:
        """0-based labels and float masks padded to the batch, so they span what the predictions span
        (converted once here, not in every decoder layer's matching and loss)."""
        out = []
        for t in targets:
            masks = t["masks"]
            pad = (0, padded[1] - masks.shape[-1], 0, padded[0] - masks.shape[-2])
            out.append({"labels": t["labels"] - 1, "masks": F.pad(masks.float(), pad)})
        return out

    @torch.no_grad()
    def semantic(self, images: list[Tensor]) -> list[Tensor]:
        """Per image, ``[K, H, W]`` class scores; ``argmax(0) + 1`` is the label map."""
        return [semantic_inference(*readout) for readout in self.readouts(images)]

    @torch.no_grad()
    def panoptic(
        self,
        images: list[Tensor],
        is_thing: Tensor,
        object_threshold: float = 0.8,
        overlap_threshold: float = 0.8,
    ) -> list[tuple[Tensor, list[dict]]]:
        """Per image, a segment-id map and its segments; ``is_thing [K]`` says which classes are things."""
        return [
            panoptic_inference(*readout, is_thing, object_threshold, overlap_threshold)
            for readout in self.readouts(images)
        ]


def build_mask2former(cfg: Mask2FormerConfig, num_classes: int) -> Mask2Former:
    return Mask2Former(cfg, num_classes)
