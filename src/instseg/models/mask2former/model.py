"""Mask2Former (Cheng et al., CVPR 2022): a set of queries, each a class (or "no object") and a mask.

Backbone -> pixel decoder (per-pixel embeddings at 1/4 + three coarser maps)
-> masked-attention transformer decoder -> one (class, mask) pair per query.
Training pairs each ground truth with one query (``models.matcher.HungarianMatcher``)
in ``SetCriterion``; inference reads the pairs as instances, a semantic map or
a panoptic map (``postprocess.py``), with no NMS.

Crowded images: a query-based model finds at most ``num_queries`` objects, so
the nuclei preset has 400 (DSB2018 has up to ~375 nuclei per image), and
selects 1000 at prediction (``prediction_queries``): a whole image holds
several times the objects of a training crop.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import Tensor, nn
from torchvision.models._utils import IntermediateLayerGetter

from instseg.config import ModelConfig
from instseg.models.backbones import build_trunk
from instseg.models.mask2former.criterion import SetCriterion
from instseg.models.mask2former.decoder import MaskedAttentionDecoder, QueryPredictions
from instseg.models.mask2former.denoising import DenoisingQueries, denoising_queries
from instseg.models.mask2former.pixel_decoder import DeformablePixelDecoder, FPNPixelDecoder
from instseg.models.mask2former.postprocess import (
    Mask2FormerPostprocessor,
    panoptic_inference,
    semantic_inference,
)
from instseg.models.matcher import HungarianMatcher
from instseg.models.seesaw import SeesawLoss
from instseg.models.segmentation_model import SegmentationModel
from instseg.models.transform import ResizeNormalize


@dataclass
class Mask2FormerConfig(ModelConfig):
    pixel_decoder: Literal["deformable", "fpn"] = "deformable"
    # the pixel decoder's norm: GroupNorm (the paper's), whose statistics are the whole image's, so a
    # region's features change with what surrounds it; or BatchNorm, fixed at inference
    pixel_decoder_norm: Literal["gn", "bn"] = "gn"
    hidden_dim: int = 256  # width of the pixel decoder, the queries and the mask embeddings
    heads: int = 8
    encoder_layers: int = 6  # deformable layers of the pixel decoder
    encoder_ffn: int = 1024
    decoder_layers: int = 9  # masked-attention layers (the paper's "10" counts the prediction before them)
    decoder_ffn: int = 2048
    num_queries: int = 100
    # "learned": query embeddings learned once for all images (the paper); "selected": the pixel
    # decoder's top-scoring tokens, at their positions (Mask DINO's query selection)
    query_init: Literal["learned", "selected"] = "learned"
    # with "selected": the tokens selected in eval mode (0: num_queries). Selection has no weights per
    # query, so a whole image, which holds many times a training crop's objects, may take more
    prediction_queries: int = 0
    # groups of learned queries in training, each matched one-to-one on its own (Group DETR); more
    # supervision per object per step; prediction uses the first group, so the output is unchanged
    query_groups: int = 1
    # denoising queries in training (DN-DETR, Mask DINO; denoising.py): every object, its box moved and its
    # label flipped at random, also enters as a query supervised with that object, no matching involved;
    # at most this many per image (0: none). Prediction has none, so the output is unchanged
    denoising_queries: int = 0
    denoising_box_noise: float = 0.4  # each box corner moves by up to this x half the box's side
    denoising_label_noise: float = 0.2  # the chance that a denoising query's label is another class
    # "normalized": sine encodings spanning each map (the paper); "pixels": in input pixels, the same for
    # a pixel (and a box query's box) whatever the image's size (training on crops, predicting whole images)
    position_encoding: Literal["normalized", "pixels"] = "normalized"
    class_weight: float = 2.0
    mask_weight: float = 5.0
    dice_weight: float = 5.0
    no_object_weight: float = 0.1
    # the query classifier's loss: cross-entropy, or for long-tailed data Seesaw (models/seesaw.py) on
    # a normalised linear classifier, weighing the K classes against each other, not "no object"
    class_loss: Literal["cross_entropy", "seesaw"] = "cross_entropy"
    num_points: int = 12544  # sampled points per mask, in matching and in the loss
    # at least this many points per pixel of the 1/4 mask features (0: num_points on any image); small
    # objects on large images need the density (models/point_sampling.point_count)
    points_per_pixel: float = 0.0
    # extra points per mask in the loss, as a share of its count, drawn around its object (its box widened
    # to twice the side; point_sampling.box_points): small objects on large maps get a loss that is not
    # almost all background (0: none, the paper)
    box_points: float = 0.0
    # each query also predicts a box, and its mask logit loses this x ((x - cx)^2 / w^2 + (y - cy)^2 / h^2):
    # masks that stay near their own object where objects look alike (box_prior.py; 0: none, the paper)
    box_prior: float = 0.0
    # with box_prior, each query's box is also its position, refined layer by layer (DAB-DETR, DINO;
    # decoder.py): learned queries start from learned boxes, selected ones from their token's cell
    box_queries: bool = False
    box_weight: float = 5.0  # L1 on the predicted boxes, in the loss and the matching cost (Mask DINO's)
    giou_weight: float = 2.0  # GIoU on the predicted boxes, in the loss and the matching cost
    oversample_ratio: float = 3.0
    importance_ratio: float = 0.75


def nuclei_paper_preset() -> Mask2FormerConfig:
    """Small dense objects on a CPU budget: 1.5x input, a narrower and shallower transformer, 400 queries;
    the paper's losses and matching."""
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


def nuclei_preset() -> Mask2FormerConfig:
    """``nuclei_paper`` with loss points around each object, a box prior on each query's mask, and
    queries selected from the image and placed by their boxes, which crowded look-alike objects need
    (BENCHMARKS.md, Mask2Former on crowded nuclei)."""
    cfg = nuclei_paper_preset()
    cfg.box_points, cfg.box_prior = 1.0, 4.0
    cfg.box_queries, cfg.query_init = True, "selected"
    cfg.prediction_queries = 1000  # whole images hold several times a training crop's nuclei
    return cfg


def light_preset() -> Mask2FormerConfig:
    """The FPN pixel decoder and a 6-layer, 128-wide transformer: about a third of the default's cost."""
    return Mask2FormerConfig(
        pixel_decoder="fpn", hidden_dim=128, decoder_layers=6, decoder_ffn=1024, num_points=4096
    )


@dataclass
class Mask2FormerOutputs:
    """The network's raw predictions for a batch: one ``QueryPredictions`` per decoder layer (the last
    is final; the earlier ones get auxiliary losses)."""

    layers: list[QueryPredictions]
    padded: tuple[int, int]  # the padded batch's (H, W)
    denoising_layers: list[QueryPredictions] = field(default_factory=list)  # training only, per layer
    denoising: DenoisingQueries | None = None  # what the denoising queries were built from

    @property
    def final(self) -> QueryPredictions:
        return self.layers[-1]


class Mask2Former(SegmentationModel):
    """Backbone, pixel decoder, masked-attention decoder; boxes are the masks' tight boxes."""

    classifier_prefixes = ("decoder.class_head.",)  # what ``train_only: classifier`` trains

    def __init__(self, cfg: Mask2FormerConfig, num_classes: int) -> None:
        matcher = HungarianMatcher(
            cfg.class_weight,
            cfg.mask_weight,
            cfg.dice_weight,
            cfg.num_points,
            cfg.points_per_pixel,
            cfg.num_queries,
            cfg.box_weight,
            cfg.giou_weight,
        )
        criterion = SetCriterion(
            num_classes,
            matcher,
            cfg.class_weight,
            cfg.mask_weight,
            cfg.dice_weight,
            cfg.no_object_weight,
            cfg.num_points,
            cfg.oversample_ratio,
            cfg.importance_ratio,
            SeesawLoss(num_classes) if cfg.class_loss == "seesaw" else None,
            cfg.points_per_pixel,
            cfg.box_points,
            cfg.box_weight,
            cfg.giou_weight,
        )
        transform = ResizeNormalize(cfg.min_size, cfg.max_size, cfg.scale)
        postprocessor = Mask2FormerPostprocessor(cfg.detections_per_image, cfg.mask_threshold)
        super().__init__(transform, criterion, postprocessor)
        self.cfg = cfg
        self.num_classes = num_classes
        trunk, return_layers, channels = build_trunk(
            cfg.backbone, cfg.norm, (1, 2, 3, 4), cfg.backbone_weights
        )
        self.backbone = IntermediateLayerGetter(trunk, return_layers)
        if cfg.pixel_decoder == "deformable":
            self.pixel_decoder: nn.Module = DeformablePixelDecoder(
                channels,
                cfg.hidden_dim,
                cfg.encoder_layers,
                cfg.heads,
                cfg.encoder_ffn,
                cfg.position_encoding == "pixels",
                cfg.pixel_decoder_norm == "bn",
            )
        else:
            self.pixel_decoder = FPNPixelDecoder(channels, cfg.hidden_dim, cfg.pixel_decoder_norm == "bn")
        self.decoder = MaskedAttentionDecoder(
            cfg.hidden_dim,
            num_classes,
            cfg.num_queries,
            cfg.decoder_layers,
            cfg.heads,
            cfg.decoder_ffn,
            normed_classifier=cfg.class_loss == "seesaw",
            selected_queries=cfg.query_init == "selected",
            pixel_positions=cfg.position_encoding == "pixels",
            query_groups=cfg.query_groups,
            denoising=cfg.denoising_queries > 0,
            box_prior=cfg.box_prior,
            box_queries=cfg.box_queries,
            prediction_queries=cfg.prediction_queries,
        )

    def network(self, pixels: Tensor, denoising: DenoisingQueries | None = None) -> Mask2FormerOutputs:
        features = list(self.backbone(pixels).values())
        mask_features, maps = self.pixel_decoder(features)
        padded = (int(pixels.shape[-2]), int(pixels.shape[-1]))
        layers, denoising_layers = self.decoder(maps, mask_features, denoising)
        return Mask2FormerOutputs(layers, padded, denoising_layers, denoising)

    def training_network(self, pixels: Tensor, targets: list[dict[str, Tensor]]) -> Mask2FormerOutputs:
        """The network with the batch's denoising queries, when the config asks for them."""
        denoising = None
        if self.cfg.denoising_queries > 0:
            padded = (int(pixels.shape[-2]), int(pixels.shape[-1]))
            denoising = denoising_queries(
                targets,
                padded,
                self.cfg.denoising_queries,
                self.num_classes,
                self.cfg.denoising_box_noise,
                self.cfg.denoising_label_noise,
            )
        return self.network(pixels, denoising)

    def final_predictions(
        self, images: list[Tensor]
    ) -> tuple[QueryPredictions, list[tuple[int, int]], list[tuple[int, int]]]:
        """The final layer's predictions, the resized and the original image sizes."""
        batch, _ = self.transform(images, None)
        original = [(int(im.shape[-2]), int(im.shape[-1])) for im in images]
        return self.network(batch.tensors).final, batch.image_sizes, original

    @torch.no_grad()
    def semantic(self, images: list[Tensor]) -> list[Tensor]:
        """Per image, ``[K, H, W]`` class scores; ``argmax(0) + 1`` is the label map."""
        final, resized, original = self.final_predictions(images)
        return [semantic_inference(*final.image(b), resized[b], size) for b, size in enumerate(original)]

    @torch.no_grad()
    def panoptic(
        self,
        images: list[Tensor],
        is_thing: Tensor,
        object_threshold: float = 0.8,
        overlap_threshold: float = 0.8,
    ) -> list[tuple[Tensor, list[dict]]]:
        """Per image, a segment-id map and its segments; ``is_thing [K]`` says which classes are things."""
        final, resized, original = self.final_predictions(images)
        thresholds = (object_threshold, overlap_threshold)
        return [
            panoptic_inference(*final.image(b), resized[b], size, is_thing, *thresholds)
            for b, size in enumerate(original)
        ]


def build_mask2former(cfg: Mask2FormerConfig, num_classes: int) -> Mask2Former:
    return Mask2Former(cfg, num_classes)
