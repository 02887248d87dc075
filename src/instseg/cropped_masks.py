"""One image's binary masks kept as the bool crop of each one's box, and the switch that asks models for them.

A stack of full-resolution masks grows with the image: 300 objects on a
4000x3000 image are 3.6 GB as bool ``[N, H, W]``, while their box crops take a
few MB. Models assemble masks crop by crop anyway; inside ``cropped_masks()``
they return them that way (``CroppedMasks``), and RLE, label images and
polygons are made from the crops without a full-size mask per object.
Outside it they return the contract's dense bool ``[N, H, W]``.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from pycocotools import mask as mask_utils
from torch import Tensor

_REQUESTED: ContextVar[bool] = ContextVar("cropped_masks", default=False)


@contextmanager
def cropped_masks() -> Iterator[None]:
    """Within it (in this thread or task), models return ``CroppedMasks`` rather than bool ``[N, H, W]``."""
    token = _REQUESTED.set(True)
    try:
        yield
    finally:
        _REQUESTED.reset(token)


def as_requested(masks: CroppedMasks) -> Tensor | CroppedMasks:
    """``masks`` as the caller asked: cropped inside ``cropped_masks()``, dense outside it."""
    return masks if _REQUESTED.get() else masks.dense()


@dataclass
class CroppedMasks:
    """``N`` binary masks of one ``image_size`` image: mask ``i`` is ``crops[i]`` (bool ``[h, w]``) placed
    with its top-left pixel at ``origins[i] = (x0, y0)`` and False elsewhere; crops lie inside the image."""

    crops: list[Tensor]
    origins: Tensor  # int64 [N, 2]
    image_size: tuple[int, int]  # (H, W)

    @classmethod
    def from_dense(cls, masks: Tensor) -> CroppedMasks:
        """Each mask of bool ``[N, H, W]`` cut to its tight box (an empty one to a 0x0 crop)."""
        rows, cols = masks.any(dim=2), masks.any(dim=1)
        crops, origins = [], []
        for mask, r, c in zip(masks, rows, cols, strict=True):
            ys, xs = torch.nonzero(r).flatten(), torch.nonzero(c).flatten()
            if len(ys) == 0:
                crops.append(mask[:0, :0])
                origins.append((0, 0))
                continue
            y0, y1, x0, x1 = int(ys[0]), int(ys[-1]) + 1, int(xs[0]), int(xs[-1]) + 1
            crops.append(mask[y0:y1, x0:x1].clone())
            origins.append((x0, y0))
        origin = torch.tensor(origins, dtype=torch.int64).reshape(-1, 2)
        return cls(crops, origin, (int(masks.shape[-2]), int(masks.shape[-1])))

    @classmethod
    def cat(cls, parts: Sequence[CroppedMasks], image_size: tuple[int, int]) -> CroppedMasks:
        crops = [c for p in parts for c in p.crops]
        origins = torch.cat([p.origins for p in parts]) if parts else torch.zeros((0, 2), dtype=torch.int64)
        return cls(crops, origins, image_size)

    def __len__(self) -> int:
        return len(self.crops)

    @property
    def shape(self) -> tuple[int, int, int]:
        """The shape of the dense masks: ``(N, H, W)``."""
        return (len(self), *self.image_size)

    def __getitem__(self, index: Tensor | slice | int | Sequence[int]) -> CroppedMasks:
        """The masks a bool mask, an index tensor or list, a slice or an int selects."""
        if isinstance(index, int):
            index = slice(index, index + 1 if index != -1 else None)
        if isinstance(index, slice):
            picked = list(range(len(self)))[index]
        elif isinstance(index, Tensor) and index.dtype == torch.bool:
            picked = torch.nonzero(index.cpu()).flatten().tolist()
        else:
            picked = torch.as_tensor(index).flatten().tolist()
        return CroppedMasks(
            [self.crops[i] for i in picked],
            self.origins[torch.tensor(picked, dtype=torch.int64)].reshape(-1, 2),
            self.image_size,
        )

    def cpu(self) -> CroppedMasks:
        return CroppedMasks([c.cpu() for c in self.crops], self.origins.cpu(), self.image_size)

    def dense(self) -> Tensor:
        """Bool ``[N, H, W]``."""
        device = self.crops[0].device if self.crops else torch.device("cpu")
        out = torch.zeros(self.shape, dtype=torch.bool, device=device)
        for i, (crop, (x0, y0)) in enumerate(zip(self.crops, self.origins.tolist(), strict=True)):
            out[i, y0 : y0 + crop.shape[0], x0 : x0 + crop.shape[1]] = crop
        return out

    def nonempty(self) -> Tensor:
        """Which masks have a pixel set, bool ``[N]``."""
        return torch.tensor([bool(c.any()) for c in self.crops], dtype=torch.bool)

    def tight_boxes(self) -> Tensor:
        """Tight xyxy boxes with the exclusive right/bottom edge COCO uses, float ``[N, 4]``; empty ->
        zeros (as ``masks.masks_to_boxes``)."""
        boxes = torch.zeros((len(self), 4), dtype=torch.float32)
        for i, (crop, (x0, y0)) in enumerate(zip(self.crops, self.origins.tolist(), strict=True)):
            ys, xs = torch.nonzero(crop.any(1)).flatten(), torch.nonzero(crop.any(0)).flatten()
            if len(ys):
                boxes[i] = torch.tensor([x0 + xs[0], y0 + ys[0], x0 + xs[-1] + 1, y0 + ys[-1] + 1])
        return boxes

    def to_rle(self) -> list[dict[str, Any]]:
        """COCO RLE of every mask, the same strings ``pycocotools.mask.encode`` gives for the dense
        masks: each crop's run lengths over its full-height column strip, the columns before and after
        it added to the first and last zero runs."""
        height, width = self.image_size
        rles = []
        for crop, (x0, y0) in zip(self.crops, self.origins.tolist(), strict=True):
            h, w = crop.shape
            strip = np.zeros((w, height), dtype=np.uint8)  # column-major: one row per image column
            strip[:, y0 : y0 + h] = crop.cpu().numpy().T
            flat = strip.ravel()
            starts = np.flatnonzero(flat[1:] != flat[:-1]) + 1
            runs = np.diff(np.concatenate([[0], starts, [flat.size]])) if flat.size else np.zeros(1, np.int64)
            if flat.size and flat[0]:
                runs = np.concatenate([[0], runs])  # counts start with a (here empty) run of zeros
            runs = runs.astype(np.int64)
            runs[0] += x0 * height
            after = (width - x0 - w) * height
            if len(runs) % 2:  # the last run is of zeros
                runs[-1] += after
            elif after:
                runs = np.append(runs, after)
            rle = mask_utils.frPyObjects({"counts": runs.tolist(), "size": [height, width]}, height, width)
            rle["counts"] = rle["counts"].decode("ascii")
            rles.append(rle)
        return rles


def to_cropped(masks: Tensor | CroppedMasks) -> CroppedMasks:
    """``masks`` as ``CroppedMasks``, cut to their tight boxes when they come dense."""
    return masks if isinstance(masks, CroppedMasks) else CroppedMasks.from_dense(masks)
