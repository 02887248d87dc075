"""Copy-paste augmentation (Ghiasi et al., CVPR 2021): objects cut from training images are pasted onto
the one being trained on, in front of what is there.

Each pasted object is drawn from all training objects with weight ``n(c) ** -balance``, ``n(c)`` the
number of training objects of its class: ``balance`` 0 draws objects as they come (frequent classes
most, the paper's choice), 1 gives every class the same chance. Balanced, it is a long-tail remedy
that adds rare-class positives without repeating whole images, so the frequent classes keep their
share of the steps (the price repeat-factor sampling pays). A pasted object keeps its size and lands
at a random place inside the training window; the objects under it lose those pixels, and one covered
whole leaves the target.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np
import torch
from torch import Tensor

from instseg.data.coco import CocoIndex, decode_window
from instseg.data.images import read_image
from instseg.errors import InstsegError


class CopyPaste:
    """``(image, masks, labels) -> (image, masks, labels)`` with up to ``max_objects`` objects pasted,
    with chance ``probability``; random draws come from torch's global generator (the dataset seeds it
    per draw)."""

    def __init__(
        self, index: CocoIndex, probability: float, max_objects: int = 3, balance: float = 0.0
    ) -> None:
        if not 0.0 <= probability <= 1.0:
            raise InstsegError(f"copy_paste must be a probability in [0, 1], got {probability}")
        if max_objects < 1:
            raise InstsegError(f"copy_paste_objects must be at least 1, got {max_objects}")
        if balance < 0:
            raise InstsegError(f"copy_paste_balance must be 0 or more, got {balance}")
        self.index = index
        self.probability = probability
        self.max_objects = max_objects
        self.pool = [
            (im, obj) for im in index.images for obj in index.objects.get(im["id"], []) if not obj["iscrowd"]
        ]
        per_class = Counter(obj["label"] for _, obj in self.pool)
        self.weights = torch.tensor(
            [per_class[obj["label"]] ** -balance for _, obj in self.pool], dtype=torch.float64
        )

    def cut(self, image: dict[str, Any], obj: dict[str, Any]) -> tuple[Tensor, np.ndarray]:
        """The object's box of pixels, uint8 ``[3, h, w]``, and its mask there, bool ``[h, w]``."""
        pixels = read_image(self.index.image_path(image), (int(image["height"]), int(image["width"])))
        x0, y0, x1, y1 = obj["bbox"]
        x0, y0 = int(np.floor(x0)), int(np.floor(y0))
        x1, y1 = int(np.ceil(x1)), int(np.ceil(y1))
        masks, _ = decode_window([obj], (x0, y0, x1, y1))  # none for an empty mask: nothing is pasted
        cut = masks[0].astype(bool) if len(masks) else np.zeros((y1 - y0, x1 - x0), dtype=bool)
        return pixels[:, y0:y1, x0:x1], cut

    def __call__(
        self, image: Tensor, masks: np.ndarray, labels: list[int]
    ) -> tuple[Tensor, np.ndarray, list[int]]:
        if not self.pool or float(torch.rand(())) >= self.probability:
            return image, masks, labels
        count = int(torch.randint(1, self.max_objects + 1, ()))
        picks = torch.multinomial(self.weights, count, replacement=True).tolist()
        image = image.clone()
        height, width = image.shape[-2:]
        objects = [np.array(masks, dtype=np.uint8)]  # a copy, cut into in place: no per-object mask copies
        labels = list(labels)
        for pick in picks:
            source, obj = self.pool[pick]
            patch, cut = self.cut(source, obj)
            # an object larger than the window gives a random part of itself
            ph, pw = min(cut.shape[0], height), min(cut.shape[1], width)
            sy = int(torch.randint(0, cut.shape[0] - ph + 1, ()))
            sx = int(torch.randint(0, cut.shape[1] - pw + 1, ()))
            patch, cut = patch[:, sy : sy + ph, sx : sx + pw], cut[sy : sy + ph, sx : sx + pw]
            if not cut.any():
                continue
            ty = int(torch.randint(0, height - ph + 1, ()))
            tx = int(torch.randint(0, width - pw + 1, ()))
            where = torch.from_numpy(cut)
            image[:, ty : ty + ph, tx : tx + pw][:, where] = patch[:, where]
            for earlier in objects:
                earlier[:, ty : ty + ph, tx : tx + pw][:, cut] = 0
            placed = np.zeros((1, height, width), dtype=np.uint8)
            placed[0, ty : ty + ph, tx : tx + pw] = cut
            objects.append(placed)
            labels.append(obj["label"])
        stacked = np.concatenate(objects)
        visible = stacked.reshape(len(stacked), -1).any(1)
        return (
            image,
            np.ascontiguousarray(stacked[visible]),
            [c for c, v in zip(labels, visible, strict=True) if v],
        )
