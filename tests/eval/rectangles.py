"""Hand-made COCO ground truth and detections of axis-aligned rectangles, whose APs can be worked out."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pycocotools.mask as mask_utils

CORE_FIELDS = ("box", "image_id", "category_id", "area", "iscrowd")


def rle(box: tuple[int, int, int, int], size: int) -> dict:
    """The rectangle ``box`` (x0, y0, x1, y1) as a COCO RLE on a ``size`` x ``size`` image."""
    x0, y0, x1, y1 = box
    m = np.zeros((size, size), dtype=np.uint8, order="F")
    m[y0:y1, x0:x1] = 1
    encoded = mask_utils.encode(m)
    return {"size": [size, size], "counts": encoded["counts"].decode()}


def rectangles(
    objects: list[dict],
    size: int,
    images: Sequence[int] = (1,),
    names: dict[int, str] | None = None,
) -> dict:
    """A COCO dataset; each object: ``box``, optional ``image_id``, ``category_id`` (1), ``area`` (the
    box's), ``iscrowd`` (0), and any other field (``ignore``, ``occluded_fraction``) copied as it is.
    ``names``: category id -> name (default: 1 and 2, named c1 and c2)."""
    anns = []
    for i, o in enumerate(objects, 1):
        x0, y0, x1, y1 = o["box"]
        anns.append(
            {
                "id": i,
                "image_id": o.get("image_id", 1),
                "category_id": o.get("category_id", 1),
                "segmentation": rle(o["box"], size),
                "bbox": [x0, y0, x1 - x0, y1 - y0],
                "area": o.get("area", (x1 - x0) * (y1 - y0)),
                "iscrowd": o.get("iscrowd", 0),
                **{k: v for k, v in o.items() if k not in CORE_FIELDS},
            }
        )
    names = names or {1: "c1", 2: "c2"}
    return {
        "images": [{"id": i, "width": size, "height": size, "file_name": f"{i}.png"} for i in images],
        "annotations": anns,
        "categories": [{"id": c, "name": n} for c, n in names.items()],
    }


def detection(box, score: float, size: int, image_id: int = 1, category_id: int = 1, bbox=None) -> dict:
    """A result of the rectangle ``box``; ``bbox`` (xywh) defaults to the rectangle's own."""
    x0, y0, x1, y1 = box
    return {
        "image_id": image_id,
        "category_id": category_id,
        "score": score,
        "segmentation": rle(box, size),
        "bbox": bbox if bbox is not None else [x0, y0, x1 - x0, y1 - y0],
    }
