"""One prediction as JSON: instances with their masks as COCO RLE, polygons, or one PNG label map."""

from __future__ import annotations

import base64
from typing import Any, Literal

import cv2
import numpy as np

from instseg.cropped_masks import to_cropped
from instseg.masks import encode_masks
from instseg.measurements import label_image
from instseg.structures import Instances

MaskFormat = Literal["rle", "polygons", "png"]


def polygons(mask: np.ndarray, origin: tuple[int, int] = (0, 0)) -> list[list[float]]:
    """Outer contours of a bool mask as COCO polygons ``[x0, y0, x1, y1, ...]`` (pixel corners, so a
    one-pixel mask is a unit square); parts of fewer than 3 points are left out. ``origin``: the image
    position (x, y) of the mask's top-left pixel, when ``mask`` is a crop."""
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    shift = np.asarray(origin, dtype=np.float64) + 0.5
    return [(c.reshape(-1, 2) + shift).flatten().tolist() for c in contours if len(c) >= 3]


def prediction_json(instances: Instances, masks: MaskFormat) -> dict[str, Any]:
    """``instances`` (already filtered by score) with ``masks`` in the asked form. ``png``: one uint16
    label map for the image, base64, where pixel value i + 1 is instance i (overlaps go to the higher
    score)."""
    height, width = instances.image_size
    items: list[dict[str, Any]] = [
        {"id": i, "label": name, "category_id": c, "score": round(s, 5), "box": [round(v, 2) for v in b]}
        for i, (name, c, s, b) in enumerate(
            zip(
                instances.category_names,
                instances.category_ids,
                instances.scores.tolist(),
                instances.boxes.tolist(),
                strict=True,
            )
        )
    ]
    out: dict[str, Any] = {"width": width, "height": height, "instances": items}
    if masks == "rle":
        for item, rle in zip(items, encode_masks(instances.masks), strict=True):
            item["mask"] = rle
    elif masks == "polygons":
        masks = to_cropped(instances.masks)
        for item, crop, origin in zip(items, masks.crops, masks.origins.tolist(), strict=True):
            item["polygons"] = polygons(crop.numpy(), origin)
    else:
        labels, kept = label_image(instances)
        remap = np.zeros(len(kept) + 1, dtype=np.uint16)
        remap[1:] = kept.numpy() + 1  # label_image's ids 1..M stand for instances kept[0..M-1]
        _, png = cv2.imencode(".png", remap[labels.numpy()])
        out["label_map_png"] = base64.b64encode(png.tobytes()).decode("ascii")
    return out
