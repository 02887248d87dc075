"""Prompting SAM on one image: embed it once with ``set_image``, then ``predict`` per prompt.

The image encoder is the expensive part (a ViT over a 1024-px square); each
prompt afterwards runs only the prompt encoder and the mask decoder on the
cached embedding. Prompts are in the original image's pixels (x, y); results
are :class:`Instances` with the label ``object`` and the predicted IoU as the
score, the masks of one prompt in descending order of it. ``logits`` keeps the
last call's low-resolution logits ``[B, M, 4h, 4w]`` in that same order; one
of them (``logits[0][:1]``, the best) goes back in as ``mask_input`` for the
next correction of the same object.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from instseg.engine import checkpoint as ckpt
from instseg.engine.device import resolve_device
from instseg.errors import CheckpointError, PromptError
from instseg.masks import masks_to_boxes
from instseg.models.sam.mask_decoder import logit_threshold
from instseg.models.sam.model import OBJECT, SAM
from instseg.predictor import ImageLike, model_from_checkpoint, to_image_tensor
from instseg.structures import Instances


def _tensor(values: object, name: str, shape: str) -> Tensor:
    try:
        return torch.as_tensor(values, dtype=torch.float32)
    except (TypeError, ValueError) as exc:
        raise PromptError(f"{name}: expected numbers of shape {shape} ({exc})") from None


def _box_rows(box: object) -> Tensor:
    """Boxes as ``[B, 4]``; a count of numbers that is not a multiple of 4 is a ``PromptError``."""
    boxes = _tensor(box, "box", "[4] or [B, 4]")
    if boxes.numel() % 4 or boxes.shape[-1:] != (4,):
        raise PromptError(f"box: expected x0, y0, x1, y1 (shape [4] or [B, 4]), got {boxes.tolist()}")
    return boxes.reshape(-1, 4)


class PromptPredictor:
    def __init__(self, model: SAM, device: torch.device | str = "cpu") -> None:
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.forget_image()

    def forget_image(self) -> None:
        """No image set: ``predict`` asks for ``set_image`` first."""
        self.embedding: Tensor | None = None
        self.original: tuple[int, int] = (0, 0)
        self.resized: tuple[int, int] = (0, 0)
        self.logits: Tensor | None = None

    @classmethod
    def from_checkpoint(cls, path: str | Path, device: str = "auto") -> PromptPredictor:
        """A SAM checkpoint (``instseg import sam``, or trained here) ready for prompts."""
        if (family := ckpt.load_meta(path)["family"]) != "sam":
            raise CheckpointError(f"{path}: a {family} checkpoint; prompts need a sam checkpoint")
        model = model_from_checkpoint(path)[0]
        return cls(model, resolve_device(device))

    @torch.no_grad()
    def set_image(self, image: ImageLike) -> None:
        """Embed ``image`` (a path, HxWx3 array, PIL image or [3, H, W] tensor) for the prompts to come."""
        try:
            pixels = to_image_tensor(image)
        except (ValueError, TypeError) as exc:
            raise PromptError(f"set_image: {exc}") from None
        if min(pixels.shape[-2:]) < 1:
            raise PromptError(f"set_image: the image is empty ({tuple(pixels.shape)})")
        self.embedding, self.resized = self.embed(pixels)
        self.original = (int(pixels.shape[-2]), int(pixels.shape[-1]))
        self.logits = None

    def embed(self, pixels: Tensor) -> tuple[Tensor, tuple[int, int]]:
        """An image ``[3, H, W]`` in [0, 1] -> (its embedding ``[1, C, h, w]``, its resized size)."""
        batch, _ = self.model.transform([pixels.to(self.device)])
        return self.model.network(batch.tensors), (int(batch.image_sizes[0][0]), int(batch.image_sizes[0][1]))

    def _scale(self) -> Tensor:
        """Original pixels -> resized pixels, per (x, y)."""
        (h, w), (rh, rw) = self.original, self.resized
        return torch.tensor([rw / w, rh / h], device=self.device)

    def _points(self, points: object, labels: object) -> tuple[Tensor, Tensor]:
        xy = _tensor(points, "points", "[N, 2] or [B, N, 2]")
        if xy.ndim == 2:
            xy = xy[None]
        if xy.ndim != 3 or xy.shape[-1] != 2 or xy.shape[1] == 0:
            raise PromptError(
                f"points: expected shape [N, 2] or [B, N, 2] with N >= 1, got {tuple(xy.shape)}"
            )
        lab = torch.ones(xy.shape[:2]) if labels is None else _tensor(labels, "labels", "[N] or [B, N]")
        lab = lab.reshape(xy.shape[:2]) if lab.numel() == xy.shape[0] * xy.shape[1] else lab
        if lab.shape != xy.shape[:2] or not bool(((lab == 0) | (lab == 1)).all()):
            raise PromptError(
                f"labels: expected one 1 (positive) or 0 (negative) per point, got {lab.tolist()}"
            )
        self._inside(xy, "points")
        return xy.to(self.device), lab.to(self.device)

    def _boxes(self, box: object) -> Tensor:
        boxes = _box_rows(box) if box is not None else None
        if boxes is None or boxes.shape[0] == 0:
            raise PromptError("box: expected x0, y0, x1, y1")
        if not bool((boxes[:, 2:] > boxes[:, :2]).all()):
            raise PromptError(f"box: x1 > x0 and y1 > y0 expected, got {boxes.tolist()}")
        self._inside(boxes.reshape(-1, 2, 2), "box")
        return boxes.to(self.device)

    def _inside(self, xy: Tensor, name: str) -> None:
        h, w = self.original
        if not bool(torch.isfinite(xy).all()) or bool(
            (xy < 0).any() | (xy[..., 0] > w).any() | (xy[..., 1] > h).any()
        ):
            raise PromptError(f"{name}: outside the {w}x{h} image: {xy.reshape(-1, 2).tolist()[:4]}")

    def _mask_input(self, mask_input: object, batch: int) -> Tensor:
        size = (4 * self.embedding.shape[-2], 4 * self.embedding.shape[-1])
        mask = _tensor(mask_input, "mask_input", f"[1, {size[0]}, {size[1]}]")
        if tuple(mask.shape[-2:]) != size or mask.numel() not in (
            size[0] * size[1],
            batch * size[0] * size[1],
        ):
            raise PromptError(
                f"mask_input: expected low-resolution logits of shape [1, {size[0]}, {size[1]}] "
                f"(a previous call's .logits), got {tuple(mask.shape)}"
            )
        return mask.reshape(-1, 1, *size).expand(batch, -1, -1, -1).to(self.device)

    @torch.no_grad()
    def predict_batch(
        self,
        points: object = None,
        labels: object = None,
        box: object = None,
        mask_input: object = None,
        multimask: bool = False,
    ) -> list[Instances]:
        """B prompts at once (points ``[B, N, 2]`` with labels ``[B, N]``, and/or boxes ``[B, 4]``):
        one :class:`Instances` per prompt, in the prompts' order."""
        if self.embedding is None:
            raise PromptError("no image: call set_image(image) before predict")
        if points is None and box is None and mask_input is None:
            raise PromptError("empty prompt: give points, a box or a mask_input")
        pts = self._points(points, labels) if points is not None else None
        boxes = self._boxes(box) if box is not None else None
        batch = pts[0].shape[0] if pts is not None else boxes.shape[0] if boxes is not None else 1
        if pts is not None and boxes is not None and boxes.shape[0] != batch:
            raise PromptError(f"points and box: {batch} point prompts but {boxes.shape[0]} boxes")
        mask = self._mask_input(mask_input, batch) if mask_input is not None else None
        logits, iou, masks = self.decode(pts, boxes, mask, multimask)
        order = iou.argsort(dim=1, descending=True)  # each prompt's readings, best predicted IoU first
        rows = torch.arange(len(order))[:, None]
        iou, logits, masks = iou.gather(1, order), logits[rows, order], masks[rows, order]
        self.logits = logits
        return [self._instances(masks[b], iou[b]) for b in range(masks.shape[0])]

    def decode(
        self,
        points: tuple[Tensor, Tensor] | None,
        boxes: Tensor | None,
        mask_input: Tensor | None,
        multimask: bool,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Prompts in the original image's pixels -> (low-resolution logits ``[B, M, 4h, 4w]``,
        predicted IoU ``[B, M]``, masks ``[B, M, H, W]`` at the original size)."""
        scale = self._scale()
        if points is not None:
            points = (points[0] * scale, points[1])
        if boxes is not None:
            boxes = (boxes.reshape(-1, 2, 2) * scale).reshape(-1, 4)
        logits, iou = self.model.decode(self.embedding, points, boxes, mask_input, multimask)
        full = self.model.upsample(logits, self.resized, self.original)
        return logits, iou, full > logit_threshold(self.model.cfg.mask_threshold)

    def predict(
        self,
        points: object = None,
        labels: object = None,
        box: object = None,
        mask_input: object = None,
        multimask: bool = True,
    ) -> Instances:
        """One prompt: points ``[N, 2]`` (x, y) with labels ``[N]`` (1 positive, 0 negative; all
        positive when omitted), a box ``[4]`` (x0, y0, x1, y1), a previous ``logits`` as
        ``mask_input``, in any combination. ``multimask``: three readings of an ambiguous prompt."""
        several = points is not None and _tensor(points, "points", "[N, 2]").ndim == 3 and len(points) > 1
        if several or (box is not None and _box_rows(box).shape[0] > 1):
            raise PromptError("predict takes one prompt; use predict_batch for several")
        return self.predict_batch(points, labels, box, mask_input, multimask)[0]

    def _instances(self, masks: Tensor, iou: Tensor) -> Instances:
        masks, iou = masks.cpu(), iou.float().cpu()
        return Instances(
            boxes=masks_to_boxes(masks),
            labels=torch.ones(len(iou), dtype=torch.int64),
            scores=iou,
            masks=masks,
            image_size=self.original,
            categories=OBJECT,
        )
