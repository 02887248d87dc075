"""Checking a COCO results list record by record before the evaluation engine reads it.

The engines trust their input: a string score sorts as text, a NaN score
ranks anywhere, truncated RLE counts hang pycocotools and faster-coco-eval,
a polygon result fails deep inside ``loadRes``, and a result whose category
is not in the ground truth is dropped without a word. Each of these is one
line here, naming the result's index; polygon results are turned into RLE,
as the ground truth's polygons are.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from faster_coco_eval import COCO

from instseg.data.coco import to_rle
from instseg.data.segmentation import check_rle
from instseg.errors import DataError


def _number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def checked_results(
    coco_gt: COCO, results: Sequence[Any], class_agnostic: bool = False, source: str = "results"
) -> list[dict[str, Any]]:
    """Copies of ``results`` that the engine can score; DataError naming ``source`` and the first bad
    result's index otherwise. With ``class_agnostic`` any category id is accepted."""
    images = {im["id"]: im for im in coco_gt.dataset.get("images", [])}
    categories = set(coco_gt.getCatIds())
    out = []
    for i, r in enumerate(results):
        where = f"{source}: result {i}"
        if not isinstance(r, dict):
            raise DataError(f"{where} is a {type(r).__name__}, not an object")
        image_id = r.get("image_id")
        if isinstance(image_id, list | dict) or image_id not in images:
            raise DataError(f"{where} has image id {image_id!r}, which is not in the ground truth")
        category_id = r.get("category_id")
        if not isinstance(category_id, int) or isinstance(category_id, bool):
            raise DataError(f"{where} has category id {category_id!r}, not an integer")
        if not class_agnostic and category_id not in categories:
            raise DataError(
                f"{where} has category id {category_id}, which is not in the ground truth's categories "
                "(use --class-agnostic to score a class-agnostic model)"
            )
        if not _number(r.get("score")):
            raise DataError(f"{where} has score {r.get('score')!r}, not a finite number")
        checked = dict(r)
        if "bbox" in r:
            box = r["bbox"]
            if not (isinstance(box, list) and len(box) == 4 and all(_number(v) for v in box)):
                raise DataError(f"{where} has bbox {box!r}, not [x, y, width, height]")
            if box[2] < 0 or box[3] < 0:
                raise DataError(f"{where} has a bbox of negative size {box[2]}x{box[3]}")
        if "segmentation" in r:
            height, width = int(images[image_id]["height"]), int(images[image_id]["width"])
            try:
                if isinstance(r["segmentation"], list):
                    rle = to_rle(r["segmentation"], height, width)
                    if rle is None:
                        raise ValueError("no polygon of three or more points")
                    rle["counts"] = rle["counts"].decode("ascii")
                    checked["segmentation"] = rle
                else:
                    check_rle(r["segmentation"], height, width)
            except (ValueError, TypeError, KeyError) as exc:
                raise DataError(f"{where} has a malformed segmentation ({exc})") from None
        if "bbox" not in r and "segmentation" not in r:
            raise DataError(f"{where} has neither a segmentation nor a bbox")
        out.append(checked)
    return out
