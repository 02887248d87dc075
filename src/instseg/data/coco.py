"""COCO instances files: finding them, checking them, and turning records into training targets.

Every record is checked once when the file is read, so a bad annotation fails
with the file and the annotation id instead of a shape error deep in a model.
Masks are kept as compressed RLE until a sample is drawn, and then decoded only
for the objects inside the sampled window.
"""

from __future__ import annotations

import json
import logging
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pycocotools.mask as mask_utils

from instseg.data.images import PIXEL_LIMIT_HINT, max_pixels
from instseg.data.segmentation import check_polygons, check_rle
from instseg.errors import DataError
from instseg.structures import Category

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CocoSource:
    """An instances JSON and the folder its ``file_name`` entries are relative to."""

    annotations: Path
    images: Path


def find_annotations(data: str | Path, split: str = "train") -> Path:
    """The annotations JSON itself, or ``annotations/instances_<split>*.json`` in a dataset folder."""
    data = Path(data)
    if data.is_dir():
        candidates = sorted((data / "annotations").glob(f"instances_{split}*.json")) or sorted(
            data.glob(f"instances_{split}*.json")
        )
        if not candidates:
            raise DataError(f"{data}: no annotations/instances_{split}*.json in this folder")
        return candidates[0]
    if data.is_file():
        return data
    raise DataError(f"{data}: no such annotations file or dataset folder")


def resolve_source(data: str | Path, split: str = "train", images: str | Path | None = None) -> CocoSource:
    """Find the annotations file and image folder from a JSON path or a dataset folder.

    A folder is searched for ``annotations/instances_<split>*.json`` (COCO and
    DSB2018 layouts). Without ``images`` the image folder is guessed from the
    usual layouts: ``<root>/<split>``, ``<root>/<json stem minus 'instances_'>``,
    or the JSON's own folder.
    """
    ann = find_annotations(data, split)
    if images is not None:
        if not Path(images).is_dir():
            raise DataError(f"{images}: image folder not found")
        return CocoSource(ann, Path(images))
    stem = ann.stem.removeprefix("instances_")
    root = ann.parent.parent if ann.parent.name == "annotations" else ann.parent
    for folder in (root / stem, root / split, root / "images" / stem, root / "images", ann.parent):
        if folder.is_dir() and any(folder.iterdir()):
            return CocoSource(ann, folder)
    raise DataError(f"{ann}: cannot find its image folder; pass it explicitly (--images)")


def read_json(path: Path) -> Any:
    """Parsed JSON, or a one-line error naming the file and where it is malformed."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror})") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataError(
            f"{path}: malformed JSON at line {exc.lineno} column {exc.colno}: {exc.msg}"
        ) from None


def load_json(path: Path) -> dict[str, Any]:
    data = read_json(path)
    if not isinstance(data, dict):
        raise DataError(f"{path}: expected a COCO object with 'images', 'annotations', 'categories'")
    return data


def write_json(data: Any, path: Path) -> Path:
    """Compact JSON written to a temporary name and renamed, so a crash never leaves half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, separators=(",", ":"), sort_keys=True))
    tmp.replace(path)
    return path


class CocoIndex:
    """A checked COCO instances file: categories, images, and each image's objects as RLE."""

    def __init__(self, source: CocoSource, keep_crowd: bool = False) -> None:
        self.source = source
        path = source.annotations
        data = load_json(path)
        for key in ("images", "categories"):
            if not isinstance(data.get(key), list):
                raise DataError(f"{path}: missing or invalid '{key}' list")
        if not data["categories"]:
            raise DataError(f"{path}: 'categories' is empty")
        if not isinstance(data.get("annotations", []), list):
            raise DataError(f"{path}: 'annotations' is not a list")
        self.has_annotations = "annotations" in data
        self.dataset = data
        for c in data["categories"]:
            if (problem := category_problem(c)) is not None:
                raise DataError(f"{path}: category {_id_of(c)} {problem}")
        ids = [c["id"] for c in data["categories"]]
        if len(set(ids)) < len(ids):
            twice = sorted({i for i in ids if ids.count(i) > 1})
            raise DataError(f"{path}: category id {twice[0]} appears more than once")
        self.categories = [
            Category(int(c["id"]), str(c.get("name", c["id"])), str(c.get("supercategory", "")))
            for c in sorted(data["categories"], key=lambda c: c["id"])
        ]
        self.label_of = {c.id: i + 1 for i, c in enumerate(self.categories)}
        self.images: list[dict[str, Any]] = []
        by_id: dict[int, dict[str, Any]] = {}
        for im in data["images"]:
            if (problem := image_problem(im)) is not None:
                raise DataError(f"{path}: image {_id_of(im)} {problem}")
            if im["id"] in by_id:
                raise DataError(f"{path}: duplicate image id {im['id']}")
            by_id[im["id"]] = im
            self.images.append(im)
        self.objects: dict[int, list[dict[str, Any]]] = defaultdict(list)
        skipped: dict[str, list[Any]] = defaultdict(list)
        for ann in data.get("annotations", []):
            obj = self._check(ann, by_id, path, skipped)
            if obj is not None and (keep_crowd or not obj["iscrowd"]):
                self.objects[ann["image_id"]].append(obj)
        for reason, ids in skipped.items():
            log.warning(
                "%s: skipped %d annotations with %s (ids %s%s)",
                path,
                len(ids),
                reason,
                ids[:5],
                "..." if len(ids) > 5 else "",
            )
        self.skipped = {k: len(v) for k, v in skipped.items()}

    def _check(
        self,
        ann: dict[str, Any],
        images: dict[int, dict[str, Any]],
        path: Path,
        skipped: dict[str, list[Any]],
    ) -> dict[str, Any] | None:
        rle, problem = check_annotation(ann, images, self.label_of)
        if problem is not None:
            if problem.level == "error":
                raise DataError(f"{path}: {problem.where} {problem.message}")
            skipped[problem.kind].append(ann.get("id", "?"))
        if rle is None:
            return None
        x, y, bw, bh = mask_utils.toBbox(rle).tolist()
        return {
            "id": ann.get("id", "?"),
            "label": self.label_of[ann["category_id"]],
            "rle": rle,
            "bbox": (x, y, x + bw, y + bh),
            "iscrowd": bool(ann.get("iscrowd", 0)),
        }

    def image_path(self, image: dict[str, Any]) -> Path:
        return self.source.images / image["file_name"]  # image_problem refused names outside the folder

    def __len__(self) -> int:
        return len(self.images)


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a COCO file; ``error`` stops a loader, ``warning`` skips or only reports."""

    level: str  # "error" | "warning"
    kind: str  # short, groupable: "an empty mask", "unknown image id", ...
    where: str  # "annotation 12", "image 3 (a.png)", "category 5"
    message: str


def _id_of(record: Any) -> Any:
    return record.get("id", "?") if isinstance(record, dict) else "?"


def category_problem(category: Any) -> str | None:
    """What is wrong with a category record, or None."""
    if not isinstance(category, dict):
        return f"is a {type(category).__name__}, not an object"
    if not _is_int(category.get("id")):
        return f"has id {category.get('id')!r}, not an integer"
    return None


def image_problem(image: Any) -> str | None:
    """What is wrong with an image record, or None: fields missing or of the wrong kind, a size beyond
    the pixel limit (its masks would be decoded at that size), or a file name outside the image folder."""
    if not isinstance(image, dict):
        return f"is a {type(image).__name__}, not an object"
    missing = {"id", "file_name", "height", "width"} - image.keys()
    if missing:
        lvis = "coco_url" in image
        hint = " (LVIS? convert it first: instseg data convert lvis FILE --to coco)" if lvis else ""
        return f"lacks {'/'.join(sorted(missing))}{hint}"
    if not isinstance(image["id"], int | str) or isinstance(image["id"], bool):
        return f"has id {image['id']!r}, not an integer or string"
    height, width = image["height"], image["width"]
    if not (_is_int(height) and _is_int(width) and height > 0 and width > 0):
        return f"has size {width!r}x{height!r}, not positive integers"
    if height * width > max_pixels():
        return f"is {width}x{height}, more than the limit of {max_pixels()} pixels ({PIXEL_LIMIT_HINT})"
    name = image["file_name"]
    if not isinstance(name, str) or not name:
        return f"has file_name {name!r}, not a file name"
    if Path(name).is_absolute() or ".." in Path(name).parts:
        return f"has file_name {name!r}, which points outside the image folder"
    return None


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def check_annotation(
    ann: dict[str, Any], images: dict[int, dict[str, Any]], label_of: dict[int, int]
) -> tuple[dict[str, Any] | None, Problem | None]:
    """The checks every loader applies to one annotation: its RLE (None when unusable) and what is wrong.

    Errors: unknown image or category, malformed segmentation. Warnings (the
    object is skipped): no polygon with three points, an empty mask.
    """
    if not isinstance(ann, dict):
        return None, Problem("error", "malformed annotation", "annotation ?", f"is a {type(ann).__name__}")
    where = f"annotation {ann.get('id', '?')}"
    if "id" in ann and not _is_int(ann["id"]):
        return None, Problem("error", "malformed annotation id", where, "has an id that is not an integer")
    if not isinstance(ann.get("image_id"), int | str) or ann.get("image_id") not in images:
        return None, Problem(
            "error", "unknown image id", where, f"refers to unknown image id {ann.get('image_id')}"
        )
    if not _is_int(ann.get("category_id")) or ann.get("category_id") not in label_of:
        return None, Problem(
            "error",
            "unknown category id",
            where,
            f"has category id {ann.get('category_id')}, which is not in 'categories'",
        )
    if ann.get("iscrowd", 0) not in (0, 1):  # True and False compare equal to 1 and 0
        return None, Problem(
            "error", "malformed iscrowd", where, f"has iscrowd {ann['iscrowd']!r}, not 0 or 1"
        )
    im = images[ann["image_id"]]
    try:
        rle = to_rle(ann.get("segmentation"), int(im["height"]), int(im["width"]))
    except (ValueError, TypeError, KeyError) as exc:
        return None, Problem(
            "error", "malformed segmentation", where, f"has a malformed segmentation ({exc})"
        )
    if rle is None:
        return None, Problem("warning", "no usable polygon", where, "has no polygon of three or more points")
    if mask_utils.area(rle) <= 0:
        return None, Problem("warning", "an empty mask", where, "has an empty mask")
    return rle, None


def to_rle(segmentation: Any, height: int, width: int) -> dict[str, Any] | None:
    """Any COCO segmentation (polygons, uncompressed or compressed RLE) as one compressed RLE.

    Returns None for polygon lists with no polygon of at least three points.
    """
    if isinstance(segmentation, list):
        polygons = [p for p in segmentation if isinstance(p, list) and len(p) >= 6 and len(p) % 2 == 0]
        check_polygons(polygons, height, width)
        if not polygons:
            return None
        return mask_utils.merge(mask_utils.frPyObjects(polygons, height, width))
    if isinstance(segmentation, dict):
        check_rle(segmentation, height, width)
        counts = segmentation["counts"]
        if isinstance(counts, list):
            return mask_utils.frPyObjects({"size": [height, width], "counts": counts}, height, width)
        compressed = counts.encode("ascii") if isinstance(counts, str) else counts
        return {"size": [height, width], "counts": compressed}
    raise ValueError(f"segmentation must be polygons or RLE, got {type(segmentation).__name__}")


def decode_window(
    objects: list[dict[str, Any]], window: tuple[int, int, int, int], min_visible: float = 0.0
) -> tuple[np.ndarray, list[int]]:
    """Decode the objects that touch ``window`` (x0, y0, x1, y1), cropped to it: uint8 ``[N, h, w]``.
    ``min_visible``: an object with less than this fraction of its area inside the window is left out."""
    x0, y0, x1, y1 = window
    masks, labels = [], []
    for obj in objects:
        bx0, by0, bx1, by1 = obj["bbox"]
        if bx1 <= x0 or by1 <= y0 or bx0 >= x1 or by0 >= y1:
            continue
        m = mask_utils.decode(obj["rle"])[y0:y1, x0:x1]
        visible = int(m.sum())
        if visible and (min_visible <= 0 or visible >= min_visible * float(mask_utils.area(obj["rle"]))):
            masks.append(m)
            labels.append(obj["label"])
    if not masks:
        return np.zeros((0, y1 - y0, x1 - x0), dtype=np.uint8), []
    return np.ascontiguousarray(np.stack(masks)), labels
