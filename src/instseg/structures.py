"""The records results travel in: categories and the per-image ``Instances``, with their conversions.

Records only: the mask arithmetic lives in ``masks.py`` and the models' mask
assembly in ``models/postprocess.py``. Masks leave a model as bool
``[N, H, W]``, or as box crops (``CroppedMasks``) inside ``cropped_masks()``,
as prediction and evaluation ask for them; anything that keeps or ships them
(results files, evaluation) turns them into RLE right away, so a folder of
large images never holds a stack of full-resolution masks.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from instseg.cropped_masks import CroppedMasks
from instseg.masks import encode_masks


@dataclass(frozen=True)
class Category:
    """A dataset category: ``id`` is the dataset's own id, labels are 1..K in list order."""

    id: int
    name: str
    supercategory: str = ""


@dataclass
class Instances:
    """Objects found in one image, in that image's pixel coordinates."""

    boxes: Tensor  # float [N, 4] xyxy
    labels: Tensor  # int64 [N], 1..K
    scores: Tensor  # float [N]
    masks: Tensor | CroppedMasks  # bool [N, H, W], or each the crop of its box
    image_size: tuple[int, int]  # (H, W)
    categories: Sequence[Category] = field(default_factory=tuple)

    def __len__(self) -> int:
        return int(self.labels.numel())

    def __getitem__(self, index: Tensor | slice | int) -> Instances:
        """The instances a bool mask, an index tensor, a slice or an int selects, as a new record."""
        if isinstance(index, int):
            index = slice(index, index + 1 if index != -1 else None)
        return Instances(
            self.boxes[index],
            self.labels[index],
            self.scores[index],
            self.masks[index],
            self.image_size,
            self.categories,
        )

    @classmethod
    def from_output(
        cls, output: dict[str, Tensor], image_size: tuple[int, int], categories: Sequence[Category] = ()
    ) -> Instances:
        masks = output.get("masks")
        if masks is None:
            masks = torch.zeros((len(output["labels"]), *image_size), dtype=torch.bool)
        return cls(
            boxes=output["boxes"].detach().float().cpu(),
            labels=output["labels"].detach().long().cpu(),
            scores=output["scores"].detach().float().cpu(),
            masks=masks.cpu() if isinstance(masks, CroppedMasks) else masks.detach().bool().cpu(),
            image_size=image_size,
            categories=tuple(categories),
        )

    @property
    def category_ids(self) -> list[int]:
        """The dataset's category id of each instance (its label when there are no categories)."""
        return [
            self.categories[i - 1].id if 0 < i <= len(self.categories) else i for i in self.labels.tolist()
        ]

    @property
    def category_names(self) -> list[str]:
        return [
            self.categories[i - 1].name if 0 < i <= len(self.categories) else str(i)
            for i in self.labels.tolist()
        ]

    def dense_masks(self) -> Tensor:
        """Bool ``[N, H, W]``, made from the crops when the masks are kept cropped."""
        return self.masks.dense() if isinstance(self.masks, CroppedMasks) else self.masks

    def to_numpy(self) -> dict[str, np.ndarray]:
        return {
            "boxes": self.boxes.numpy(),
            "labels": self.labels.numpy(),
            "scores": self.scores.numpy(),
            "masks": self.dense_masks().numpy(),
        }

    def to_coco(self, image_id: int) -> list[dict[str, Any]]:
        """COCO results entries (RLE masks, xywh boxes, dataset category ids)."""
        return results_to_coco(
            image_id, self.boxes, self.labels, self.scores, encode_masks(self.masks), self.categories
        )


def results_to_coco(
    image_id: int,
    boxes: Tensor,
    labels: Tensor,
    scores: Tensor,
    rles: Sequence[dict[str, Any]],
    categories: Sequence[Category],
) -> list[dict[str, Any]]:
    """One COCO result per detection; labels map back to the dataset's category ids."""
    xywh = boxes.clone()
    xywh[:, 2:] -= xywh[:, :2]
    out = []
    for box, label, score, rle in zip(xywh.tolist(), labels.tolist(), scores.tolist(), rles, strict=True):
        category_id = categories[label - 1].id if categories else int(label)
        out.append(
            {
                "image_id": int(image_id),
                "category_id": int(category_id),
                "bbox": [round(v, 2) for v in box],
                "score": round(float(score), 5),
                "segmentation": rle,
            }
        )
    return out
