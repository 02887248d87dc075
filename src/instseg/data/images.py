"""Reading images the way users' files actually come: EXIF-rotated, grey, RGBA, 16-bit."""

from __future__ import annotations

import glob
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from instseg.errors import DataError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
DEFAULT_MAX_PIXELS = 2**27  # 134 Mpx, 11585 px square: 1.6 GB as a float tensor
PIXEL_LIMIT_HINT = "raise it with the environment variable INSTSEG_MAX_PIXELS, or tile the image"


def max_pixels() -> int:
    """The largest image, in pixels, that is decoded (a decompression bomb is refused before it is);
    ``INSTSEG_MAX_PIXELS`` changes it. PIL's own limit (``Image.MAX_IMAGE_PIXELS``) applies too."""
    value = os.environ.get("INSTSEG_MAX_PIXELS", "")
    try:
        return int(value) if value else DEFAULT_MAX_PIXELS
    except ValueError:
        raise DataError(f"INSTSEG_MAX_PIXELS={value!r}: not an integer") from None


class ImageTooLarge(DataError):
    """An image over the pixel limit (or PIL's decompression-bomb limit), refused before decoding."""


def read_image(path: str | Path, expected_size: tuple[int, int] | None = None) -> torch.Tensor:
    """Load an image as uint8 ``[3, H, W]`` RGB, upright per its EXIF orientation.

    With ``expected_size`` (H, W) from an annotation file: annotations made on the
    stored pixels of an EXIF-rotated photo are honoured by skipping the rotation,
    and any other size disagreement is an error rather than misplaced masks.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: image file not found")
    return decode_image(path, str(path), expected_size)


def decode_image(
    source: Path | BinaryIO, name: str, expected_size: tuple[int, int] | None = None
) -> torch.Tensor:
    """``read_image`` of a path or an open binary file (an upload); ``name`` is what errors call it."""
    try:
        with Image.open(source) as raw:
            if raw.width * raw.height > max_pixels():
                raise ImageTooLarge(
                    f"{name}: image is {raw.width}x{raw.height}, more than the limit of {max_pixels()} "
                    f"pixels ({PIXEL_LIMIT_HINT})"
                )
            im = ImageOps.exif_transpose(raw)
            if expected_size is not None and (im.height, im.width) != tuple(expected_size):
                if (raw.height, raw.width) != tuple(expected_size):
                    raise DataError(
                        f"{name}: image is {im.width}x{im.height} but the annotations say "
                        f"{expected_size[1]}x{expected_size[0]}"
                    )
                im = raw
            array = _to_rgb_array(im)
    except Image.DecompressionBombError as exc:  # PIL's own limit, checked when the file is opened
        raise ImageTooLarge(f"{name}: refused: {exc}") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError) as exc:
        raise DataError(f"{name}: cannot read image ({exc})") from None
    return torch.from_numpy(np.array(array, dtype=np.uint8, copy=True)).permute(2, 0, 1)


def _to_rgb_array(im: Image.Image) -> np.ndarray:
    if im.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        # Microscopy often ships 16-bit grey: stretch to 8 bits rather than clip.
        a = np.asarray(im, dtype=np.float32)
        lo, hi = float(a.min()), float(a.max())
        a = (a - lo) / (hi - lo) * 255.0 if hi > lo else np.zeros_like(a)
        return np.repeat(a.astype(np.uint8)[..., None], 3, axis=2)
    if im.mode in ("RGBA", "LA", "P", "PA"):
        im = im.convert("RGBA")
        background = Image.new("RGBA", im.size, (0, 0, 0, 255))
        im = Image.alpha_composite(background, im)
    return np.asarray(im.convert("RGB"))


def list_images(inputs: Iterable[str | Path]) -> list[Path]:
    """Expand files, folders (non-recursive) and glob patterns into a sorted, de-duplicated list."""
    found: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            found += sorted(f for f in p.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
        elif p.is_file():
            found.append(p)
        else:
            matches = sorted(Path(m) for m in glob.glob(str(item), recursive=True))
            images = [m for m in matches if m.is_file() and m.suffix.lower() in IMAGE_SUFFIXES]
            if not images:
                raise DataError(f"{item}: no such file, folder or matching images")
            found += images
    seen: set[Path] = set()
    unique = []
    for f in found:
        key = f.resolve()
        if key not in seen:
            seen.add(key)
            unique.append(f)
    return unique


def output_stems(paths: Sequence[Path]) -> list[str]:
    """A file-name stem per input for its outputs, unique even when inputs in different folders share
    one (``a/img.png``, ``b/img.png`` -> ``img``, ``img_2``)."""
    used: set[str] = set()
    stems = []
    for p in paths:
        stem, n = p.stem, 1
        while stem in used:
            n += 1
            stem = f"{p.stem}_{n}"
        used.add(stem)
        stems.append(stem)
    return stems
