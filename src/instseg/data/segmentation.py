"""Checking COCO segmentations before pycocotools sees them.

pycocotools trusts its input: a compressed RLE string that ends mid-number
makes its decoder (and faster-coco-eval's) read past the end or loop forever,
counts that do not add up to the image decode to stripes, and a polygon
coordinate of 1e30 makes ``frPyObjects`` allocate in proportion to it. Every
reader of annotations and results calls these checks first, so bad records
fail with one line naming the problem instead.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

# a polygon point may lie this many image sizes outside the image (annotation tools overshoot a little)
POLYGON_MARGIN = 1.0
_MAX_DIGITS = 7  # 5 bits each: 35 bits, far beyond any count of a 2^31-pixel image


def compressed_counts(counts: bytes) -> np.ndarray:
    """The run lengths of a compressed COCO RLE string (the LEB128-like code of pycocotools'
    ``rleFrString``), read with numpy so that long result files stay fast; ValueError when malformed."""
    code = np.frombuffer(counts, dtype=np.uint8).astype(np.int64) - 48
    if code.size == 0:
        return np.zeros(0, dtype=np.int64)
    if code.min() < 0 or code.max() > 63:
        raise ValueError("RLE counts string has characters outside the COCO code")
    more = (code & 0x20) > 0
    if more[-1]:
        raise ValueError("RLE counts string is truncated (ends inside a number)")
    ends = np.flatnonzero(~more)
    starts = np.concatenate([[0], ends[:-1] + 1])
    lengths = ends - starts + 1
    if lengths.max() > _MAX_DIGITS:
        raise ValueError("RLE counts string has a number too long to be a run length")
    digit = np.arange(code.size) - np.repeat(starts, lengths)
    values = np.add.reduceat((code & 0x1F) << (5 * digit), starts)
    negative = (code[ends] & 0x10) > 0
    values = np.where(negative, values - (np.int64(1) << (5 * lengths)), values)
    # from the fourth on, each count is stored as its difference to the one two before
    runs = values.copy()
    runs[1::2] = np.cumsum(values[1::2])
    runs[2::2] = np.cumsum(values[2::2])
    return runs


def check_rle(rle: Any, height: int, width: int) -> None:
    """ValueError unless ``rle`` is a COCO RLE (compressed or not) whose runs tile exactly an image of
    ``height`` x ``width``."""
    if not isinstance(rle, dict) or "size" not in rle or "counts" not in rle:
        raise ValueError("RLE must be an object with 'size' and 'counts'")
    size = rle["size"]
    if not (isinstance(size, list | tuple) and len(size) == 2 and all(_is_int(v) for v in size)):
        raise ValueError(f"RLE size {size!r} is not [height, width]")
    if [int(size[0]), int(size[1])] != [height, width]:
        raise ValueError(f"RLE size {list(size)} differs from image size {[height, width]}")
    counts = rle["counts"]
    if isinstance(counts, list):
        if not all(_is_int(v) for v in counts):
            raise ValueError("uncompressed RLE counts must be integers")
        runs = np.asarray(counts, dtype=np.int64) if counts else np.zeros(0, dtype=np.int64)
    elif isinstance(counts, str | bytes):
        try:
            raw = counts.encode("ascii") if isinstance(counts, str) else counts
        except UnicodeEncodeError:
            raise ValueError("RLE counts string is not ASCII") from None
        runs = compressed_counts(raw)
    else:
        raise ValueError(f"RLE counts must be a list or a string, got {type(counts).__name__}")
    if len(runs) and runs.min() < 0:
        raise ValueError("RLE has a negative run length")
    total = int(runs.sum())
    if total != height * width:
        raise ValueError(f"RLE runs cover {total} pixels, not the {height}x{width} image's {height * width}")


def check_polygons(polygons: list[list[Any]], height: int, width: int) -> None:
    """ValueError unless every coordinate is a finite number near the image: a point far outside it
    is a broken record, and would cost pycocotools memory in proportion to its distance."""
    x_limits = (-POLYGON_MARGIN * width, (1 + POLYGON_MARGIN) * width)
    y_limits = (-POLYGON_MARGIN * height, (1 + POLYGON_MARGIN) * height)
    for p in polygons:
        if not all(isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) for v in p):
            raise ValueError("polygon coordinates must be finite numbers")
        xs, ys = p[0::2], p[1::2]
        for (lo, hi), values, axis in ((x_limits, xs, "x"), (y_limits, ys, "y")):
            if min(values) < lo or max(values) > hi:
                bad = min(values) if min(values) < lo else max(values)
                raise ValueError(
                    f"polygon {axis} coordinate {bad:g} lies far outside the {width}x{height} image"
                )


def _is_int(v: Any) -> bool:
    return isinstance(v, int | np.integer) and not isinstance(v, bool)
