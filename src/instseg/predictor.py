"""A loaded model with its categories and device: what ``instseg.load`` returns."""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

from instseg.cropped_masks import cropped_masks
from instseg.data.images import read_image
from instseg.engine import checkpoint as ckpt
from instseg.engine.device import resolve_device
from instseg.errors import CheckpointError
from instseg.models.build import build_model, checkpoint_config
from instseg.models.fusion import inference_model
from instseg.structures import Category, Instances

POINT_HEAD = "point_head."  # the weights of every family's PointHead (models/point_head.py)

ImageLike = str | Path | np.ndarray | Image.Image | torch.Tensor


def to_image_tensor(image: ImageLike) -> torch.Tensor:
    """Float ``[3, H, W]`` in [0, 1] from a path, HxWx3 array, PIL image or tensor."""
    if isinstance(image, str | Path):
        return read_image(image).float().div_(255.0)
    if isinstance(image, Image.Image):
        image = np.asarray(image.convert("RGB"))
    if isinstance(image, np.ndarray):
        if image.ndim == 2:
            image = np.repeat(image[..., None], 3, axis=2)
        if image.ndim != 3 or image.shape[2] not in (3, 4):
            raise ValueError(f"expected an HxWx3 image array, got shape {image.shape}")
        tensor = torch.from_numpy(np.array(image[..., :3], copy=True)).permute(2, 0, 1)
        return tensor.float().div_(255.0) if tensor.dtype == torch.uint8 else tensor.float()
    if isinstance(image, torch.Tensor):
        if image.ndim != 3 or image.shape[0] != 3:
            raise ValueError(f"expected a [3, H, W] tensor, got shape {tuple(image.shape)}")
        return image.float().div(255.0) if image.dtype == torch.uint8 else image.float()
    raise TypeError(f"cannot use {type(image).__name__} as an image")


def model_from_checkpoint(
    path: str | Path, overrides: dict[str, Any] | None = None
) -> tuple[nn.Module, dict[str, Any], Any, list[Category]]:
    """(model with the checkpoint's weights, its metadata, config, categories); ``overrides`` change
    config fields, and one that changes the architecture fails on the weights' shapes, except
    ``point_refine=False``, which leaves a refining model's point head out (faster, coarser masks)."""
    meta = ckpt.load_meta(path)
    try:
        config = checkpoint_config(meta, overrides)
        categories = [Category(**c) for c in meta["categories"]]
    except (KeyError, ValueError, TypeError) as exc:
        raise CheckpointError(f"{path}: incomplete checkpoint metadata ({exc})") from None
    model = build_model(meta["family"], config, len(categories), ckpt.weight_shapes(path))
    weights = ckpt.load_weights(path)
    if getattr(config, "point_refine", None) is False:  # a refining model predicting without its head
        weights = {k: v for k, v in weights.items() if not k.startswith(POINT_HEAD)}
    missing, unexpected = model.load_state_dict(weights, strict=False)
    if missing or unexpected:
        raise CheckpointError(
            f"{path}: weights do not fit a {meta['family']} model "
            f"(missing {missing[:3]}, unexpected {unexpected[:3]})"
        )
    return model, meta, config, categories


class Predictor:
    """``predict`` takes paths, arrays, PIL images or tensors and returns :class:`Instances`.

    ``model`` is the trained module as loaded; ``predict`` runs ``inference``, a copy made once
    with BatchNorms folded and, on CPU, channels-last memory (``models/fusion.py``), or the given
    ``inference`` module (an exported graph's runner).
    ``min_score``: only instances scoring at least this are returned.
    """

    def __init__(
        self,
        model: nn.Module,
        family_name: str,
        config: Any,
        categories: Sequence[Category],
        device: torch.device | str = "cpu",
        meta: dict[str, Any] | None = None,
        inference: nn.Module | None = None,
    ) -> None:
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.inference = inference if inference is not None else inference_model(self.model)
        self.family = family_name
        self.config = config
        self.categories = tuple(categories)
        self.meta = meta or {}

    @classmethod
    def from_checkpoint(
        cls,
        path: str | Path,
        device: str = "auto",
        overrides: dict[str, Any] | None = None,
        min_score: float | None = None,
    ) -> Predictor:
        """``overrides``: model config fields to change, e.g. inference thresholds; the model is rebuilt
        with them, so a field that changes the architecture fails on the weights rather than silently.
        ``min_score``: the least score the caller keeps; a family's candidate threshold is raised to it,
        so candidates that would be dropped anyway never get a full-size mask (scores only fall after
        that threshold: rescoring multiplies by a maskness <= 1)."""
        overrides = dict(overrides or {})
        if min_score is not None and "score_threshold" not in overrides:
            stored = ckpt.load_meta(path)["model_config"].get("score_threshold")
            if isinstance(stored, int | float) and stored < min_score:
                overrides["score_threshold"] = min_score
        model, meta, config, categories = model_from_checkpoint(path, overrides)
        return cls(model, meta["family"], config, categories, resolve_device(device), meta)

    def tiled(self, tile: int, overlap: int | None = None, batch_size: int = 4) -> Predictor:
        """This model predicting window by window (``TiledInference``): ``tile`` x ``tile`` windows
        overlapping by ``overlap`` pixels (default a quarter of ``tile``; make it wider than the largest
        object), ``batch_size`` windows at a time. For images far larger than the training crops."""
        from instseg.tiled_inference import TiledInference

        overlap = tile // 4 if overlap is None else overlap
        tiled = TiledInference(self.inference, tile, overlap, batch_size)
        return Predictor(self.model, self.family, self.config, self.categories, self.device, self.meta, tiled)

    @torch.no_grad()
    def predict(
        self,
        images: ImageLike | Sequence[ImageLike],
        batch_size: int = 1,
        min_score: float | None = None,
        cropped: bool = False,
    ) -> Instances | list[Instances]:
        """``cropped``: keep each mask as the crop of its box (``CroppedMasks``), not bool ``[N, H, W]``;
        what large images with many objects need (RLE, label images and overlays take either)."""
        single = not isinstance(images, list | tuple)
        items = [images] if single else list(images)
        out: list[Instances] = []
        for start in range(0, len(items), batch_size):
            batch = [to_image_tensor(im) for im in items[start : start + batch_size]]
            with cropped_masks() if cropped else nullcontext():
                outputs = self.inference([im.to(self.device) for im in batch])
            for image, o in zip(batch, outputs, strict=True):
                inst = Instances.from_output(o, tuple(image.shape[-2:]), self.categories)
                out.append(inst if min_score is None else inst[inst.scores >= min_score])
        return out[0] if single else out

    __call__ = predict
