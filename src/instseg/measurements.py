"""What cell biologists take from a segmentation: a label image and a table of per-object measurements.

A label image gives every pixel the id of the object it shows (0: background),
the form Cellpose, StarDist and CellProfiler exchange. Where predicted masks
overlap, the higher-scored object keeps the pixel; ids run 1..M over the
objects that keep any pixel, in descending score order. The measurements are
taken on the label image, so the table and the image describe the same
objects (the COCO results keep every mask whole).
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from instseg.cropped_masks import to_cropped
from instseg.errors import DataError
from instseg.structures import Instances

COLUMNS = (
    "image",
    "id",
    "class",
    "score",
    "area",
    "centroid_x",
    "centroid_y",
    "bbox_x0",
    "bbox_y0",
    "bbox_x1",
    "bbox_y1",
    "mean_intensity",
)


def label_image(instances: Instances) -> tuple[torch.Tensor, torch.Tensor]:
    """``(labels [H, W] int64, kept [M])``: the id of each pixel's best-scored object, 0 where none, and
    the indices into ``instances`` of the objects ids 1..M stand for.

    Painted crop by crop, worst score first, so no full-size mask per object is needed."""
    labels = torch.zeros(instances.image_size, dtype=torch.int64)
    n = len(instances)
    if n == 0:
        return labels, torch.zeros(0, dtype=torch.int64)
    order = torch.argsort(instances.scores, descending=True, stable=True)
    masks = to_cropped(instances.masks)
    origins = masks.origins.tolist()
    for rank in range(n - 1, -1, -1):  # the better-scored object is painted later, on top
        i = int(order[rank])
        crop, (x0, y0) = masks.crops[i], origins[i]
        labels[y0 : y0 + crop.shape[0], x0 : x0 + crop.shape[1]][crop.cpu()] = rank + 1
    visible = torch.bincount(labels.flatten(), minlength=n + 1) > 0
    visible[0] = False
    new_id = torch.cumsum(visible, 0) * visible  # consecutive ids over the objects that keep pixels
    return new_id[labels], order[visible[1:]]


def measure(
    labels: torch.Tensor, kept: torch.Tensor, instances: Instances, image: torch.Tensor, name: str
) -> list[dict[str, Any]]:
    """One row per id of ``labels``: class, score, area (px), centroid and tight box (pixel indices, box
    edges exclusive) and mean intensity (mean of the channels, 0-255) of its pixels."""
    m = len(kept)
    if m == 0:
        return []
    flat = labels.flatten()
    h, w = labels.shape
    ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    gray = image.float().mean(0).flatten() * (255.0 if image.is_floating_point() else 1.0)
    area = torch.bincount(flat, minlength=m + 1)[1:].double()
    xs, ys = xs.flatten(), ys.flatten()
    sums = [torch.bincount(flat, weights=v.double(), minlength=m + 1)[1:] for v in (xs, ys, gray)]
    lo = torch.full((m + 1,), max(h, w), dtype=torch.int64)
    hi = torch.full((m + 1,), -1, dtype=torch.int64)
    x0, y0 = (lo.scatter_reduce(0, flat, v, "amin")[1:] for v in (xs, ys))
    x1, y1 = (hi.scatter_reduce(0, flat, v, "amax")[1:] + 1 for v in (xs, ys))
    names = instances.category_names
    rows = []
    for i, k in enumerate(kept.tolist()):
        a = float(area[i])
        rows.append(
            {
                "image": name,
                "id": i + 1,
                "class": names[k],
                "score": round(float(instances.scores[k]), 5),
                "area": int(a),
                "centroid_x": round(float(sums[0][i]) / a, 2),
                "centroid_y": round(float(sums[1][i]) / a, 2),
                "bbox_x0": int(x0[i]),
                "bbox_y0": int(y0[i]),
                "bbox_x1": int(x1[i]),
                "bbox_y1": int(y1[i]),
                "mean_intensity": round(float(sums[2][i]) / a, 2),
            }
        )
    return rows


def write_label_png(path: str | Path, labels: torch.Tensor) -> Path:
    """A 16-bit PNG of ``labels`` (up to 65535 objects)."""
    path = Path(path)
    if labels.numel() and int(labels.max()) > np.iinfo(np.uint16).max:
        raise DataError(f"{path}: more than 65535 objects do not fit a 16-bit label image")
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), labels.numpy().astype(np.uint16)):
        raise DataError(f"{path}: cannot write the label image")
    return path


def write_table(path: str | Path, rows: Sequence[dict[str, Any]]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    return path
