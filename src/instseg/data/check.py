"""``instseg data check``: everything wrong with a COCO file and its images, counted, in one report.

Loaders stop at the first error; a user fixing a dataset wants the whole list.
The per-annotation rules are the loaders' own (:func:`check_annotation`), so
what this report calls an error is exactly what would stop training.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pycocotools.mask as mask_utils
from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from instseg.data.coco import (
    Problem,
    _id_of,
    category_problem,
    check_annotation,
    find_annotations,
    image_problem,
    load_json,
)
from instseg.data.images import read_image
from instseg.errors import DataError

# EXIF orientations that swap width and height when applied
_TRANSPOSING = {5, 6, 7, 8}


@dataclass
class CheckReport:
    annotations_file: Path
    images_dir: Path | None
    counts: dict[str, int] = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.level == "error"]

    @property
    def warnings(self) -> list[Problem]:
        return [p for p in self.problems if p.level == "warning"]

    @property
    def ok(self) -> bool:
        return not self.errors

    def format(self, examples: int = 3) -> str:
        lines = [f"{self.annotations_file}" + (f" (images in {self.images_dir})" if self.images_dir else "")]
        lines.append("  " + ", ".join(f"{v} {k}" for k, v in self.counts.items()))
        grouped: dict[tuple[str, str], list[Problem]] = defaultdict(list)
        for p in self.problems:
            grouped[p.level, p.kind].append(p)
        for (level, kind), items in sorted(grouped.items()):
            lines.append(f"  {level.upper():<7} {len(items):>6} x {kind}")
            for p in items[:examples]:
                lines.append(f"            {p.where} {p.message}")
            if len(items) > examples:
                lines.append(f"            ... and {len(items) - examples} more")
        verdict = "OK" if self.ok else "FAILED"
        lines.append(f"  {verdict}: {len(self.errors)} errors, {len(self.warnings)} warnings")
        return "\n".join(lines)


def _image_problems(im: dict[str, Any], root: Path) -> list[Problem]:
    """The image decoded exactly as training will read it, so a file that passes here cannot stop a run."""
    where = f"image {im['id']} ({im['file_name']})"
    path = root / im["file_name"]
    if not path.is_file():
        return [Problem("error", "missing image file", where, f"not found at {path}")]
    expected = (im["height"], im["width"])
    try:
        read_image(path, expected)  # accepts the stored or the upright size, as annotation tools differ
        with Image.open(path) as f:
            orientation = f.getexif().get(0x0112, 1)
    except DataError as exc:
        problem = str(exc).removeprefix(f"{path}: ")
        kind = "image size mismatch" if "annotations say" in problem else "unreadable image"
        return [Problem("error", kind, where, problem)]
    except (UnidentifiedImageError, OSError) as exc:  # read_image succeeded, so only the EXIF block is bad
        return [Problem("warning", "unreadable EXIF", where, f"has EXIF that cannot be read ({exc})")]
    if orientation in _TRANSPOSING and expected[0] == expected[1]:
        return [
            Problem(
                "warning",
                "square image with a rotating EXIF orientation",
                where,
                f"has EXIF orientation {orientation}: its annotations are taken to be on the upright "
                "(rotated) image, as most annotation tools draw them; look at `instseg data show`",
            )
        ]
    return []


def _polygon_problems(ann: dict[str, Any], where: str) -> list[Problem]:
    seg = ann.get("segmentation")
    if not isinstance(seg, list):
        return []
    bad = [
        p
        for p in seg
        if not isinstance(p, list)
        or len(p) < 6
        or len(p) % 2
        or not all(isinstance(v, int | float) and math.isfinite(v) for v in p)
    ]
    if bad and len(bad) < len(seg):
        return [Problem("warning", "invalid polygon part", where, f"has {len(bad)} unusable polygon part(s)")]
    return []


def _bbox_problem(ann: dict[str, Any], rle: dict[str, Any], where: str) -> Problem | None:
    box = ann.get("bbox")
    if box is None:
        return None
    if not (isinstance(box, list) and len(box) == 4 and all(isinstance(v, int | float) for v in box)):
        return Problem("warning", "malformed bbox", where, f"has bbox {box!r}")
    x, y, w, h = (float(v) for v in box)
    if w <= 0 or h <= 0:
        return Problem("warning", "degenerate bbox", where, f"has a bbox of size {w}x{h}")
    mx, my, mw, mh = mask_utils.toBbox(rle).tolist()
    ix = max(0.0, min(x + w, mx + mw) - max(x, mx))
    iy = max(0.0, min(y + h, my + mh) - max(y, my))
    inter = ix * iy
    iou = inter / (w * h + mw * mh - inter)
    if iou < 0.8:
        return Problem(
            "warning", "bbox disagrees with mask", where, f"has a bbox with IoU {iou:.2f} to its mask's box"
        )
    return None


def check_dataset(
    data: str | Path,
    split: str = "train",
    images: str | Path | None = None,
    check_images: bool = True,
    progress: bool = False,
) -> CheckReport:
    """Validate a COCO file (or dataset folder split) against its images; never raises for bad content."""
    ann_file = find_annotations(data, split)
    report = CheckReport(ann_file, Path(images) if images else None)
    try:
        doc = load_json(ann_file)
    except DataError as exc:
        report.problems.append(Problem("error", "unreadable JSON", "file", str(exc).split(": ", 1)[-1]))
        return report
    for key in ("images", "annotations", "categories"):
        if not isinstance(doc.get(key), list):
            report.problems.append(Problem("error", f"missing '{key}'", "file", f"has no '{key}' list"))
    if not report.ok:
        return report
    add = report.problems.append

    categories: dict[int, dict[str, Any]] = {}
    for c in doc["categories"]:
        if (problem := category_problem(c)) is not None:
            add(Problem("error", "malformed category", f"category {_id_of(c)}", problem))
            continue
        if c["id"] in categories:
            add(Problem("error", "duplicate category id", f"category id {c['id']}", "appears more than once"))
        categories[c["id"]] = c
    label_of = {cid: i + 1 for i, cid in enumerate(sorted(categories))}

    by_id: dict[int, dict[str, Any]] = {}
    for im in doc["images"]:
        if (problem := image_problem(im)) is not None:
            add(Problem("error", "malformed image record", f"image {_id_of(im)}", problem))
            continue
        if im["id"] in by_id:
            add(Problem("error", "duplicate image id", f"image {im['id']}", "appears twice"))
        by_id[im["id"]] = im
    if check_images:
        if report.images_dir is None:
            from instseg.data.coco import resolve_source

            try:
                report.images_dir = resolve_source(data, split).images
            except DataError as exc:
                add(Problem("error", "image folder not found", "file", str(exc)))
        if report.images_dir is not None:
            for im in tqdm(by_id.values(), desc="check images", unit="image", disable=not progress):
                report.problems += _image_problems(im, report.images_dir)

    seen: set[Any] = set()
    used: Counter[int] = Counter()
    per_image: Counter[int] = Counter()
    crowd = 0
    for ann in doc["annotations"]:
        if not isinstance(ann, dict):
            add(Problem("error", "malformed annotation", "annotation ?", f"is a {type(ann).__name__}"))
            continue
        where = f"annotation {ann.get('id', '?')}"
        if isinstance(ann.get("id"), int) and ann["id"] in seen:
            add(Problem("error", "duplicate annotation id", where, "appears twice"))
            continue
        seen.add(ann.get("id") if isinstance(ann.get("id"), int) else None)
        rle, problem = check_annotation(ann, by_id, label_of)
        if problem is not None:
            add(problem)
        report.problems += _polygon_problems(ann, where)
        if rle is None:
            continue
        used[ann["category_id"]] += 1
        per_image[ann["image_id"]] += 1
        crowd += int(bool(ann.get("iscrowd", 0)))
        if (p := _bbox_problem(ann, rle, where)) is not None:
            add(p)
    for cid, c in categories.items():
        if not used[cid]:
            add(
                Problem(
                    "warning",
                    "unused category",
                    f"category {cid} ({c.get('name', '?')})",
                    "has no annotations",
                )
            )
    report.counts = {
        "images": len(by_id),
        "images without objects": sum(1 for i in by_id if not per_image[i]),
        "annotations": len(doc["annotations"]),
        "crowd": crowd,
        "categories": len(categories),
    }
    return report
