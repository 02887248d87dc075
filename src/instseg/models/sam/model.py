"""SAM (Kirillov et al., ICCV 2023): class-agnostic masks for a prompt (points, a box, a coarse mask).

The image encoder runs once per image; the prompt encoder and the light mask
decoder run per prompt on the cached embedding (``prompt_predictor.py``),
which is what makes interaction cheap. On the family seam: the network is the
image encoder; in training the criterion prompts the decoder with points,
boxes and corrective clicks sampled from the targets (``criterion.py``); in
evaluation the postprocessor prompts it with a grid of points and keeps the
confident, stable, distinct masks (``automatic.py``). Both run the decoder
through one :class:`PromptDecoder`.

Presets ``vit_b``, ``vit_l`` and ``vit_h`` have the official shapes (the
longer side resized to 1024, padded to a square), so that segment-anything's
checkpoints import tensor for tensor (``importers/sam.py``). ``nuclei`` is a
convolutional encoder at the input's own scale that trains on a CPU.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from instseg.config import ModelConfig
from instseg.models.sam import fpn_encoder
from instseg.models.sam.automatic import AutomaticMasks
from instseg.models.sam.criterion import PromptCriterion
from instseg.models.sam.crops import crop_layers, merge_crops
from instseg.models.sam.image_encoder import ViTImageEncoder
from instseg.models.sam.mask_decoder import MaskDecoder, upsample_logits
from instseg.models.sam.object_maps import ObjectMapHead
from instseg.models.sam.prompt_encoder import PromptEncoder
from instseg.models.sam.two_way_transformer import TwoWayTransformer
from instseg.models.segmentation_model import SegmentationModel
from instseg.models.transform import ResizeNormalize
from instseg.structures import Category

OBJECT = (Category(1, "object"),)  # what a class-agnostic mask is labelled
OUTSIDE = -20.0  # the logit of pixels outside a prompt's decoding window


@dataclass
class SAMConfig(ModelConfig):
    encoder: Literal["vit", "fpn"] = "vit"  # fpn: ``backbone`` + FPN at stride 8 (``fpn_encoder.py``)
    image_size: int = 1024  # vit: the longer side after resizing, padded to a square; both: position unit
    patch: int = 16
    vit_dim: int = 768
    vit_depth: int = 12
    vit_heads: int = 12
    global_blocks: tuple[int, ...] = (2, 5, 8, 11)  # blocks that attend over the whole grid
    window: int = 14  # the other blocks attend within window x window tokens
    fpn_channels: int = 128
    prompt_dim: int = 256  # width of the embedding, the prompt tokens and the decoder
    mask_channels: int = 16  # hidden channels of the mask prompt's downsampling
    click_radius: float = 0.0  # px: clicks and box also drawn as maps into the dense prompt; 0: as SAM
    click_radius_jitter: float = 0.0  # training: each prompt's radius x U[1 - j, 1 + j] (prompt_encoder.py)
    box_map: bool = False  # the box drawn into the dense prompt even with click_radius 0 (no click disks)
    point_features: bool = False  # each click's token also carries the image embedding under it
    decoder_depth: int = 2
    decoder_heads: int = 8
    decoder_mlp: int = 2048
    multimask: int = 3  # masks for an ambiguous prompt, besides the single-mask output
    iou_head_depth: int = 3
    iou_head_hidden: int = 256
    iou_from_masks: bool = False  # the IoU head also reads each output's mask (mask_decoder.py)
    dynamic_layers: int = 0  # > 0: CondInst's dynamic head on offsets from the prompt (mask_decoder.py)
    dynamic_width: int = 8
    dynamic_soi: float = 64.0  # px: the offsets' unit
    dynamic_prior: float = 16.0  # px: an untrained head answers a diamond this wide around the prompt
    decode_window: int = 0  # decode each prompt on this many embedding cells around it; 0: the whole image
    mask_threshold: float = 0.5  # probability; 0 in logits, as SAM
    # training: prompts sampled from the targets (criterion.py)
    prompts_per_image: int = 16
    click_rounds: int = 3  # corrective clicks after the first prompt, each from the last error
    box_prompt_ratio: float = 0.5  # first prompts that are a (jittered) box rather than a point
    box_jitter: float = 0.1  # box corners moved by up to this fraction of the side
    click_sampling: Literal["uniform", "interior"] = "uniform"  # interior: by distance^2 from the edge
    focal_weight: float = 20.0
    dice_weight: float = 1.0
    iou_weight: float = 1.0
    object_map_weight: float = 0.0  # > 0: an object and edge map read off the embedding in training
    # automatic mask generation (automatic.py)
    points_per_side: int = 32
    points_batch: int = 64
    iou_threshold: float = 0.88  # predicted IoU a mask needs
    stability_threshold: float = 0.95  # IoU of the mask thresholded at logit +offset and -offset
    stability_offset: float = 1.0
    nms_threshold: float = 0.7
    grid_window: int = 0  # decode each grid point on this many embedding cells around it; 0: decode_window
    min_region_area: int = 0  # px: islands and holes smaller than this are removed from each mask
    crop_layers: int = 0  # the image again as 2^i x 2^i overlapping crops for i = 1..crop_layers (crops.py)
    crop_overlap: float = 512 / 1500  # of the shorter side, between neighbouring crops of layer 1
    crop_points_downscale: int = 1  # layer i's grid has points_per_side / this^i points per side


def vit_b_preset() -> SAMConfig:
    return SAMConfig()


def vit_l_preset() -> SAMConfig:
    return SAMConfig(vit_dim=1024, vit_depth=24, vit_heads=16, global_blocks=(5, 11, 17, 23))


def vit_h_preset() -> SAMConfig:
    return SAMConfig(vit_dim=1280, vit_depth=32, vit_heads=16, global_blocks=(7, 15, 23, 31))


def nuclei_preset() -> SAMConfig:
    """A CPU-trainable SAM: half-width ResNet-18 + FPN at stride 8, a 128-wide decoder, the input at its
    own scale, clicks also drawn as maps (``prompt_encoder.py``), masks read by CondInst's dynamic head
    on offsets from the prompt and scored by an IoU head that reads them too (``mask_decoder.py``),
    training clicks deep inside objects and errors, where the evaluation clicks (``criterion.py``); a
    denser point grid and up to 500 masks for crowded images."""
    return SAMConfig(
        encoder="fpn",
        backbone="resnet18_half",
        scale=1.0,
        image_size=256,
        fpn_channels=96,
        prompt_dim=128,
        decoder_heads=4,
        decoder_mlp=512,
        iou_head_hidden=128,
        points_per_side=48,
        decode_window=32,  # 256 px: the training crops' size
        click_radius=5.0,
        dynamic_layers=3,
        iou_from_masks=True,
        click_sampling="interior",
        detections_per_image=500,
    )


def logit_pixels(
    size: tuple[int, int], cell: float, corners: Tensor | None = None, device: torch.device | None = None
) -> Tensor:
    """The (x, y) input-pixel centres of a ``size`` grid of logit cells ``cell`` pixels wide ->
    ``[1, 2, P]``, or ``[B, 2, P]`` for B windows whose top-left cells are ``corners`` ``[B, 2]``
    (rows, columns)."""
    ys = torch.arange(size[0], device=device, dtype=torch.float32)
    xs = torch.arange(size[1], device=device, dtype=torch.float32)
    ys, xs = ys[None, :, None].expand(1, -1, size[1]), xs[None, None, :].expand(1, size[0], -1)
    if corners is not None:
        ys = ys + corners[:, :1, None].float()
        xs = xs + corners[:, 1:, None].float()
    return (torch.stack([xs, ys], dim=1).flatten(2) + 0.5) * cell


def resized_shape(h: int, w: int, longest: int) -> tuple[int, int]:
    """The size of an ``h x w`` image whose longer side is brought to ``longest``, rounded half up;
    written with ``torch.sym_max`` so that an exported graph computes it from symbolic sizes."""
    scale = longest / torch.sym_max(h, w)
    return math.floor(h * scale + 0.5), math.floor(w * scale + 0.5)


class PromptTransform(ResizeNormalize):
    """Without a fixed ``scale``, SAM's resize: the longer side to ``image_size``, antialiased."""

    def resize(
        self, image: Tensor, target: dict[str, Tensor] | None = None
    ) -> tuple[Tensor, dict[str, Tensor] | None]:
        if self.scale is not None:
            return super().resize(image, target)
        return self.resize_to(image, target, self.output_size(*image.shape[-2:]), antialias=True)

    def output_size(self, height: int, width: int) -> tuple[int, int]:
        if self.scale is not None:
            return super().output_size(height, width)
        return resized_shape(height, width, self.max_size)


class PromptDecoder:
    """The prompt encoder and mask decoder as one call, shared by the criterion, the postprocessor and
    the predictor (a plain object holding the model's modules, so their weights are the model's).

    With a ``window`` (in embedding cells), each prompt is decoded on the window of the embedding
    centred on its box or, without one, its first point, not the whole image: the cost per prompt
    stops growing with the image, and a model trained on crops of that size sees the context it
    learnt on.
    Positions are absolute, so nothing but the extent changes; logits outside the window are
    ``OUTSIDE``.
    """

    def __init__(self, prompt_encoder: PromptEncoder, mask_decoder: MaskDecoder, window: int = 0) -> None:
        self.prompt_encoder, self.mask_decoder, self.window = prompt_encoder, mask_decoder, window

    def __call__(
        self,
        embedding: Tensor,
        points: tuple[Tensor, Tensor] | None = None,
        boxes: Tensor | None = None,
        mask_input: Tensor | None = None,
        multimask: bool | None = True,
    ) -> tuple[Tensor, Tensor]:
        """B prompts on one image's ``embedding`` ``[1, C, h, w]``, in the network input's pixels ->
        (mask logits ``[B, M, 4h, 4w]``, predicted IoU ``[B, M]``). ``multimask=None``: every output,
        the single-mask one first (training supervises all)."""
        logits, iou, corners = self.decode_windows(embedding, points, boxes, mask_input, multimask)
        return self.paste(logits, corners, embedding.shape[-2:]), iou

    def decode_windows(
        self,
        embedding: Tensor,
        points: tuple[Tensor, Tensor] | None = None,
        boxes: Tensor | None = None,
        mask_input: Tensor | None = None,
        multimask: bool | None = True,
    ) -> tuple[Tensor, Tensor, Tensor | None]:
        """As ``__call__``, but each prompt's logits only over its window, with the window's top-left
        corner ``[B, 2]`` (rows, columns of the logit grid); corners None when the whole image was
        decoded. Automatic mask generation filters on these before pasting the few it keeps."""
        grid = (int(embedding.shape[-2]), int(embedding.shape[-1]))
        positions = self.prompt_encoder.dense_positions(grid)
        centres = self.centres(points, boxes)
        if self.window and centres is not None and max(grid) > self.window:
            return self.windowed(embedding, positions, centres, points, boxes, mask_input, multimask)
        sparse, dense = self.prompt_encoder(points, boxes, mask_input, grid, embedding=embedding)
        offsets = self.offsets(points, boxes, sparse.shape[0], (4 * grid[0], 4 * grid[1]))
        if multimask is None:
            return (*self.mask_decoder.predict_all(embedding, positions, sparse, dense, offsets), None)
        return (*self.mask_decoder(embedding, positions, sparse, dense, multimask, offsets), None)

    @staticmethod
    def paste(logits: Tensor, corners: Tensor | None, grid: tuple[int, int]) -> Tensor:
        """Window logits back at their places in the whole image's logit grid, OUTSIDE elsewhere."""
        if corners is None:
            return logits
        n, _, h, w = logits.shape
        full = logits.new_full((*logits.shape[:2], 4 * grid[0], 4 * grid[1]), OUTSIDE)
        rows = torch.arange(n, device=logits.device)[:, None, None]
        ys = (corners[:, :1] + torch.arange(h, device=logits.device))[:, :, None]  # [n, h, 1]
        xs = (corners[:, 1:] + torch.arange(w, device=logits.device))[:, None, :]  # [n, 1, w]
        full[rows, :, ys, xs] = logits.permute(0, 2, 3, 1)  # indexed as [n, h, w, M]
        return full

    def offsets(
        self,
        points: tuple[Tensor, Tensor] | None,
        boxes: Tensor | None,
        batch: int,
        size: tuple[int, int],
        corners: Tensor | None = None,
    ) -> tuple[Tensor, Tensor] | None:
        """What the dynamic mask head reads (``mask_decoder.py``): the input-pixel centres of the
        ``size`` logit cells (from each prompt's window ``corners``, if any) and each prompt's anchor:
        its box's centre, else its first point, else (a mask prompt alone) the origin."""
        if not self.mask_decoder.dynamic_layers:
            return None
        device = self.mask_decoder.iou_token.weight.device
        anchors = self.centres(points, boxes)
        anchors = torch.zeros(batch, 2, device=device) if anchors is None else anchors.float()
        return logit_pixels(size, self.stride / 4, corners, device), anchors + 0.5

    def centres(self, points: tuple[Tensor, Tensor] | None, boxes: Tensor | None) -> Tensor | None:
        """Each prompt's centre (x, y) in input pixels, where its window and its dynamic head's offsets
        start: its box's centre, else its first point (a corrective click after a box may lie outside
        the object)."""
        if boxes is not None:
            return (boxes[:, :2] + boxes[:, 2:]) / 2
        if points is not None and points[0].shape[1]:
            return points[0][:, 0]
        return None

    def windowed(
        self,
        embedding: Tensor,
        positions: Tensor,
        centres: Tensor,
        points: tuple[Tensor, Tensor] | None,
        boxes: Tensor | None,
        mask_input: Tensor | None,
        multimask: bool | None,
    ) -> tuple[Tensor, Tensor, Tensor]:
        crop, crop_positions, mask_input, corners = self.window_crops(
            embedding, positions, centres, mask_input
        )
        sparse, dense = self.prompt_encoder(
            points, boxes, mask_input, tuple(crop.shape[-2:]), corners, embedding
        )
        size = (4 * int(crop.shape[-2]), 4 * int(crop.shape[-1]))
        offsets = self.offsets(points, boxes, sparse.shape[0], size, corners)
        if multimask is None:
            logits, iou = self.mask_decoder.predict_all(crop, crop_positions, sparse, dense, offsets)
        else:
            logits, iou = self.mask_decoder(crop, crop_positions, sparse, dense, multimask, offsets)
        return logits, iou, corners

    def window_crops(
        self, embedding: Tensor, positions: Tensor, centres: Tensor, mask_input: Tensor | None
    ) -> tuple[Tensor, Tensor, Tensor | None, Tensor]:
        """Each prompt's window around its centre: the embedding and its positions ``[B, C, wh, ww]``,
        the mask prompt's ``[B, 1, 4 wh, 4 ww]``, and the window's top-left corner ``[B, 2]`` in logit
        cells. Gathered by index tensors, so that an exported graph takes the same path."""
        (h, w), n = embedding.shape[-2:], centres.shape[0]
        wh, ww = torch.sym_min(self.window, h), torch.sym_min(self.window, w)
        cells = (centres / self.stride).floor().long()
        y0 = (cells[:, 1] - wh // 2).clamp(0, h - wh)
        x0 = (cells[:, 0] - ww // 2).clamp(0, w - ww)
        ys = (y0[:, None] + torch.arange(wh, device=y0.device))[:, :, None].expand(n, wh, ww)
        xs = (x0[:, None] + torch.arange(ww, device=x0.device))[:, None, :].expand(n, wh, ww)
        crop = embedding[0][:, ys, xs].transpose(0, 1)  # [n, C, wh, ww]
        crop_positions = positions[0][:, ys, xs].transpose(0, 1)
        if mask_input is not None:
            fine_y = (4 * ys[:, :, :1] + torch.arange(4, device=ys.device)).flatten(1)  # [n, 4 wh]
            fine_x = (
                (4 * xs[:, :1, :] + torch.arange(4, device=xs.device)[:, None]).transpose(1, 2).flatten(1)
            )
            rows = torch.arange(n, device=ys.device)[:, None, None]
            mask_input = mask_input[:, 0][rows, fine_y[:, :, None], fine_x[:, None, :]][:, None]
        return crop, crop_positions, mask_input, 4 * torch.stack([y0, x0], dim=1)

    @property
    def stride(self) -> int:
        """Input pixels per embedding cell; the logits are 4x finer."""
        return self.prompt_encoder.stride


class SAM(SegmentationModel):
    backbone_prefix = "image_encoder."  # what ``backbone_lr`` scales or, at 0, freezes

    def __init__(self, cfg: SAMConfig) -> None:
        if cfg.encoder == "vit":
            image_encoder: nn.Module = ViTImageEncoder(
                cfg.image_size,
                cfg.patch,
                cfg.vit_dim,
                cfg.vit_depth,
                cfg.vit_heads,
                cfg.global_blocks,
                cfg.window,
                cfg.prompt_dim,
            )
            stride = cfg.patch
            transform = PromptTransform(cfg.image_size, cfg.image_size, None)
        else:
            image_encoder = fpn_encoder.FPNImageEncoder(
                cfg.backbone, cfg.norm, cfg.fpn_channels, cfg.prompt_dim
            )
            stride = fpn_encoder.STRIDE
            transform = PromptTransform(cfg.min_size, cfg.max_size, cfg.scale)
        prompt_encoder = PromptEncoder(
            cfg.prompt_dim,
            stride,
            cfg.image_size,
            cfg.mask_channels,
            cfg.click_radius,
            cfg.click_radius_jitter,
            cfg.box_map,
            cfg.point_features,
        )
        transformer = TwoWayTransformer(cfg.prompt_dim, cfg.decoder_depth, cfg.decoder_heads, cfg.decoder_mlp)
        mask_decoder = MaskDecoder(
            cfg.prompt_dim,
            transformer,
            cfg.multimask,
            cfg.iou_head_depth,
            cfg.iou_head_hidden,
            cfg.dynamic_layers,
            cfg.dynamic_width,
            cfg.dynamic_soi,
            cfg.dynamic_prior,
            cfg.iou_from_masks,
        )
        decoder = PromptDecoder(prompt_encoder, mask_decoder, cfg.decode_window)
        grid_decoder = PromptDecoder(prompt_encoder, mask_decoder, cfg.grid_window or cfg.decode_window)
        maps = ObjectMapHead(cfg.prompt_dim, stride) if cfg.object_map_weight > 0 else None
        super().__init__(transform, PromptCriterion(cfg, decoder, maps), AutomaticMasks(cfg, grid_decoder))
        self.cfg = cfg
        self.object_map_head = maps  # training only (object_maps.py)
        self.image_encoder = image_encoder
        self.prompt_encoder = prompt_encoder
        self.mask_decoder = mask_decoder
        self.decode = decoder

    def network(self, pixels: Tensor) -> Tensor:
        """Normalised, padded ``[B, 3, H, W]`` -> the image embedding ``[B, C, H / stride, W / stride]``;
        the ViT sees the square it was trained on."""
        if self.cfg.encoder == "vit":
            s = self.cfg.image_size
            pixels = F.pad(pixels, (0, s - pixels.shape[-1], 0, s - pixels.shape[-2]))
        return self.image_encoder(pixels)

    def forward(
        self, images: list[Tensor], targets: list[dict[str, Tensor]] | None = None
    ) -> dict[str, Tensor] | list[dict[str, Tensor]]:
        if self.training or not self.cfg.crop_layers:
            return super().forward(images, targets)
        return [self.automatic_with_crops(image) for image in images]

    @torch.no_grad()
    def automatic_with_crops(self, image: Tensor) -> dict[str, Tensor]:
        """Automatic masks over the whole image and its crop layers, merged (``crops.py``)."""
        size = (int(image.shape[-2]), int(image.shape[-1]))
        results = []
        for crop in crop_layers(size, self.cfg.crop_layers, self.cfg.crop_overlap):
            pixels = image[:, crop.y0 : crop.y1, crop.x0 : crop.x1]
            batch, _ = self.transform([pixels])
            points = max(1, self.cfg.points_per_side // self.cfg.crop_points_downscale**crop.layer)
            result = self.postprocessor.image(
                self.network(batch.tensors), batch.image_sizes[0], tuple(pixels.shape[-2:]), points
            )
            results.append((crop, result))
        merged = merge_crops(results, size, self.cfg)
        return {k: v.to(image.device) for k, v in merged.items()}

    def upsample(self, logits: Tensor, resized: tuple[int, int], original: tuple[int, int]) -> Tensor:
        return upsample_logits(logits, self.decode.stride, resized, original)


def build_sam(cfg: SAMConfig, num_classes: int = 1) -> SAM:
    """SAM is class-agnostic: every mask is labelled 1, whatever ``num_classes`` the data has."""
    if not 0 <= cfg.crop_layers <= 4:  # layer i adds 4^i crops, each a full automatic-mask pass
        raise ValueError(f"crop_layers must be 0 to 4, not {cfg.crop_layers}")
    return SAM(cfg)
