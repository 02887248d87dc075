"""Prediction window by window: images larger than the windows a model was trained on, every family.

A model trained on crops sees objects at one scale and a few at a time;
a whole slide or a crowded 1000x1000 field is another input altogether
(and memory grows with it). ``TiledInference`` cuts each image into
overlapping ``tile`` x ``tile`` windows, runs the model on them, and keeps
from each window the detections whose box centre lies in its *core*: the
window with the overlaps it shares split at their midlines. The cores tile
the image without gaps or overlaps, so an object is reported once, by the
window that holds its centre, with no NMS across windows; an object cut by a
window's edge has its partial box centre in the outer half of the overlap,
outside that window's core, as long as the overlap is wider than the
objects. This is the rule of StarDist's and Cellpose's tiled prediction.

The wrapped module keeps the contract: a list of images in, one output per
image (boxes, labels, scores, masks in image coordinates, sorted by score)
out; outputs other than those four (a query model's semantic map) are not
carried across windows.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from instseg.cropped_masks import CroppedMasks, as_requested, cropped_masks, to_cropped


def window_starts(size: int, tile: int, overlap: int) -> list[int]:
    """Window origins along a side of ``size`` pixels: ``tile - overlap`` apart, the last flush with
    the far edge (so the last step may be shorter)."""
    if size <= tile:
        return [0]
    return sorted({*range(0, size - tile, tile - overlap), size - tile})


def window_cores(size: int, tile: int, starts: Sequence[int]) -> list[tuple[float, float]]:
    """Each window's core ``[lo, hi)`` along a side: the overlaps with its neighbours split at their
    midlines, the first and last reaching the image's edges."""
    cores = []
    for i, start in enumerate(starts):
        lo = 0.0 if i == 0 else (starts[i - 1] + tile + start) / 2
        hi = float(size) if i == len(starts) - 1 else (start + tile + starts[i + 1]) / 2
        cores.append((lo, hi))
    return cores


class TiledInference(nn.Module):
    """``model`` (an inference module of the contract) run on ``tile`` x ``tile`` windows overlapping
    by ``overlap`` pixels, ``batch_size`` windows at a time; images no larger than a window pass
    through whole."""

    def __init__(self, model: nn.Module, tile: int, overlap: int, batch_size: int = 4) -> None:
        super().__init__()
        if tile < 16:
            raise ValueError(f"tile must be at least 16 pixels, got {tile}")
        if not 0 <= overlap < tile:
            raise ValueError(f"overlap must be at least 0 and less than tile ({tile}), got {overlap}")
        self.model = model
        self.tile, self.overlap, self.batch_size = tile, overlap, max(1, batch_size)

    @torch.no_grad()
    def forward(self, images: list[Tensor]) -> list[dict[str, Tensor | CroppedMasks]]:
        return [self._one(image) for image in images]

    def _one(self, image: Tensor) -> dict[str, Tensor | CroppedMasks]:
        height, width = image.shape[-2:]
        if height <= self.tile and width <= self.tile:
            return self.model([image])[0]
        ys, xs = (window_starts(n, self.tile, self.overlap) for n in (height, width))
        y_cores, x_cores = window_cores(height, self.tile, ys), window_cores(width, self.tile, xs)
        windows = [
            (y, x, yc, xc)
            for y, yc in zip(ys, y_cores, strict=True)
            for x, xc in zip(xs, x_cores, strict=True)
        ]
        kept: list[dict[str, Tensor | CroppedMasks]] = []
        for first in range(0, len(windows), self.batch_size):
            chunk = windows[first : first + self.batch_size]
            crops = [image[:, y : y + self.tile, x : x + self.tile] for y, x, _, _ in chunk]
            with cropped_masks():
                outputs = self.model(crops)
            for (y, x, (y_lo, y_hi), (x_lo, x_hi)), out in zip(chunk, outputs, strict=True):
                kept.append(_in_core(out, x, y, (x_lo, y_lo, x_hi, y_hi), (height, width)))
        return _merged(kept, (height, width))


def _in_core(
    out: dict[str, Tensor | CroppedMasks],
    x0: int,
    y0: int,
    core: tuple[float, float, float, float],
    image_size: tuple[int, int],
) -> dict[str, Tensor | CroppedMasks]:
    """The window's detections whose box centre lies in ``core`` (image coordinates), moved from the
    window at ``(x0, y0)`` into the image."""
    boxes = out["boxes"].float() + torch.tensor(
        [x0, y0, x0, y0], dtype=torch.float32, device=out["boxes"].device
    )
    cx, cy = (boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2
    x_lo, y_lo, x_hi, y_hi = core
    keep = (cx >= x_lo) & (cx < x_hi) & (cy >= y_lo) & (cy < y_hi)
    masks = to_cropped(out["masks"])[keep.cpu()]
    origins = masks.origins + torch.tensor([x0, y0], dtype=torch.int64)
    return {
        "boxes": boxes[keep],
        "labels": out["labels"][keep],
        "scores": out["scores"][keep],
        "masks": CroppedMasks(masks.crops, origins, image_size),
    }


def _merged(
    parts: list[dict[str, Tensor | CroppedMasks]], image_size: tuple[int, int]
) -> dict[str, Tensor | CroppedMasks]:
    """The windows' kept detections as one output, sorted by score as the contract says; masks
    cropped or dense as the caller asked."""
    boxes = torch.cat([p["boxes"] for p in parts]).reshape(-1, 4)
    labels = torch.cat([p["labels"] for p in parts]).long()
    scores = torch.cat([p["scores"] for p in parts]).float()
    masks = CroppedMasks.cat([p["masks"] for p in parts], image_size)  # type: ignore[misc]
    order = torch.argsort(scores, descending=True, stable=True)
    masks = masks[order.cpu()]  # the crops stay on the device the model left them on
    return {
        "boxes": boxes[order],
        "labels": labels[order],
        "scores": scores[order],
        "masks": as_requested(masks),
    }
