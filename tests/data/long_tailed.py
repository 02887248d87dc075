"""A tiny long-tailed LVIS-style dataset for the repeat-factor and copy-paste tests."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from instseg.data.coco import CocoIndex, resolve_source

GREY, RED, BLUE = (40, 40, 40), (200, 30, 30), (30, 30, 220)


def write_long_tailed(root: Path) -> Path:
    """10 grey 32x32 images: a red "common" 10x10 square in images 0-8, a blue "rare" one beside it in
    image 8, image 9 empty; every image but 8 says it has no "rare" object (LVIS ``neg_category_ids``).
    Returns the annotation file; the images are in ``root / "images"``."""
    (root / "images").mkdir(parents=True)
    images, annotations = [], []
    for i in range(10):
        pixels = np.full((32, 32, 3), GREY, dtype=np.uint8)
        classes = [1] if i < 8 else [1, 2] if i == 8 else []
        for c in classes:
            x = 2 if c == 1 else 16
            pixels[4:14, x : x + 10] = RED if c == 1 else BLUE
            annotations.append(
                {"id": len(annotations) + 1, "image_id": i, "category_id": c,
                 "segmentation": [[x, 4, x + 10, 4, x + 10, 14, x, 14]], "bbox": [x, 4, 10, 10],
                 "area": 100.0, "iscrowd": 0}
            )  # fmt: skip
        Image.fromarray(pixels).save(root / "images" / f"{i}.png")
        images.append(
            {"id": i, "file_name": f"{i}.png", "width": 32, "height": 32,
             "neg_category_ids": [] if i == 8 else [2], "not_exhaustive_category_ids": []}
        )  # fmt: skip
    categories = [{"id": 1, "name": "common"}, {"id": 2, "name": "rare"}]
    path = root / "train.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return path


def long_tailed_index(root: Path) -> CocoIndex:
    """The dataset of ``write_long_tailed``, written under ``root`` and indexed."""
    return CocoIndex(resolve_source(write_long_tailed(root), images=root / "images"))
