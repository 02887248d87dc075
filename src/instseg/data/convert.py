"""Converters between COCO instances JSON and the formats users arrive with.

- YOLO-seg text labels (one polygon per line, normalised), both ways;
- per-image instance label maps (PNG/TIFF, one integer per instance, 0 = background) -> COCO, and back;
- folders of per-instance binary mask PNGs (DSB2018's ``<id>/images``, ``<id>/masks``) -> COCO;
- Cityscapes ``gtFine`` ``*_instanceIds.png`` -> COCO (thing classes; ``id // 1000`` is the class);
- LVIS JSON -> COCO, keeping its federated fields.

Masks from pixels go out as compressed RLE (exact). Polygons traced from masks
follow pixel edges, not pixel centres (contours of the 2x-upsampled mask, halved),
so that rasterising them gives the mask back; the parts and holes of one
instance are joined into one polygon by zero-width bridges, since a YOLO-seg
line holds one polygon.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pycocotools.mask as mask_utils
import yaml
from PIL import Image

from instseg.data.coco import CocoIndex, CocoSource, load_json, resolve_source, write_json
from instseg.data.images import IMAGE_SUFFIXES
from instseg.errors import DataError

log = logging.getLogger(__name__)

LABEL_MAP_SUFFIXES = (".png", ".tif", ".tiff")
# Cityscapes label ids of the instance classes; the benchmark evaluates all but caravan and trailer.
CITYSCAPES_THINGS = {
    24: "person",
    25: "rider",
    26: "car",
    27: "truck",
    28: "bus",
    29: "caravan",
    30: "trailer",
    31: "train",
    32: "motorcycle",
    33: "bicycle",
}


# --- masks <-> COCO records ------------------------------------------------------------------------


def annotation(mask: np.ndarray, ann_id: int, image_id: int, category_id: int, iscrowd: int = 0) -> dict:
    """A COCO annotation with a compressed-RLE (str counts) segmentation of a bool mask."""
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {
        "id": ann_id,
        "image_id": image_id,
        "category_id": category_id,
        "segmentation": {"size": [int(mask.shape[0]), int(mask.shape[1])], "counts": rle["counts"].decode()},
        "area": int(mask_utils.area(rle)),
        "bbox": [float(v) for v in mask_utils.toBbox(rle)],
        "iscrowd": iscrowd,
    }


def mask_to_polygon(mask: np.ndarray) -> np.ndarray:
    """One closed polygon ``[N, 2]`` (x, y in pixels) that rasterises back to ``mask``.

    Contours of the 2x nearest-upsampled mask, halved, run along pixel edges;
    every part and hole is bridged into the first contour at its nearest point.
    """
    up = cv2.resize(mask.astype(np.uint8), None, fx=2, fy=2, interpolation=cv2.INTER_NEAREST)
    contours, _ = cv2.findContours(up, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE)
    parts = sorted((c[:, 0, :] / 2.0 for c in contours if len(c) >= 3), key=len, reverse=True)
    if not parts:
        return np.zeros((0, 2))
    out = parts[0]
    for part in parts[1:]:
        d = ((out[:, None, :] - part[None, :, :]) ** 2).sum(-1)
        i, j = np.unravel_index(int(d.argmin()), d.shape)
        out = np.concatenate([out[: i + 1], np.roll(part, -j, axis=0), part[j : j + 1], out[i:]])
    return out


def _image_size(path: Path) -> tuple[int, int]:
    try:
        with Image.open(path) as im:
            return im.height, im.width
    except OSError as exc:
        raise DataError(f"{path}: cannot read image ({exc})") from None


def _read_label_map(path: Path) -> np.ndarray:
    m = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if m is None:
        raise DataError(f"{path}: cannot read label map")
    if m.ndim == 3:
        raise DataError(f"{path}: a label map must have one channel of instance ids, found {m.shape[2]}")
    return m


# --- label maps ------------------------------------------------------------------------------------


def label_map_instances(label_map: np.ndarray) -> Iterable[tuple[int, np.ndarray]]:
    """``(instance id, bool mask)`` for every non-zero id, in id order."""
    ids = np.unique(label_map)
    for value in ids[ids != 0]:
        yield int(value), label_map == value


def label_maps_to_coco(
    labels: str | Path,
    out: str | Path,
    images: str | Path | None = None,
    category: str = "object",
) -> Path:
    """A folder of instance label maps (+ the images they label, matched by file stem) -> COCO JSON."""
    labels = Path(labels)
    files = sorted(p for p in labels.iterdir() if p.suffix.lower() in LABEL_MAP_SUFFIXES)
    if not files:
        raise DataError(f"{labels}: no label maps ({', '.join(LABEL_MAP_SUFFIXES)})")
    by_stem = _images_by_stem(Path(images)) if images else {}
    doc: dict[str, Any] = {"images": [], "annotations": [], "categories": [{"id": 1, "name": category}]}
    for image_id, path in enumerate(files, 1):
        m = _read_label_map(path)
        image_file = by_stem.get(path.stem) or by_stem.get(path.stem.removesuffix("_masks"))
        if by_stem and image_file is None:
            raise DataError(f"{path}: no image with the same name in {images}")
        if image_file is not None and _image_size(image_file) != m.shape:
            raise DataError(
                f"{path}: size {m.shape} differs from its image {image_file} {_image_size(image_file)}"
            )
        name = str(image_file.relative_to(images)) if image_file is not None else path.name
        doc["images"].append({"id": image_id, "file_name": name, "height": m.shape[0], "width": m.shape[1]})
        for _, mask in label_map_instances(m):
            doc["annotations"].append(annotation(mask, len(doc["annotations"]) + 1, image_id, 1))
    return write_json(doc, Path(out))


def coco_to_label_maps(data: str | Path, out: str | Path, split: str = "train") -> list[Path]:
    """One uint16 PNG per image: instance ``k`` of the image has value ``k`` (in annotation order).

    Overlapping instances cannot both be kept: later annotations win where they overlap.
    """
    index = CocoIndex(CocoSource(resolve_source(data, split).annotations, Path(".")))
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for im in index.images:
        objects = index.objects.get(im["id"], [])
        if len(objects) > 65535:
            raise DataError(f"image {im['id']}: more than 65535 instances do not fit a uint16 label map")
        m = np.zeros((im["height"], im["width"]), dtype=np.uint16)
        for k, obj in enumerate(objects, 1):
            m[mask_utils.decode(obj["rle"]).astype(bool)] = k
        path = out / (Path(im["file_name"]).stem + ".png")
        cv2.imwrite(str(path), m)
        written.append(path)
    return written


def _images_by_stem(folder: Path) -> dict[str, Path]:
    if not folder.is_dir():
        raise DataError(f"{folder}: image folder not found")
    return {p.stem: p for p in sorted(folder.rglob("*")) if p.suffix.lower() in IMAGE_SUFFIXES}


# --- per-instance binary masks (DSB2018 layout) ----------------------------------------------------


def instance_masks_to_coco(root: str | Path, out: str | Path, category: str = "nucleus") -> Path:
    """``root/<id>/images/<id>.png`` + ``root/<id>/masks/*.png`` (one binary PNG per instance) -> COCO."""
    root = Path(root)
    samples = sorted(p for p in root.iterdir() if (p / "images").is_dir())
    if not samples:
        raise DataError(f"{root}: no <id>/images folders (expected the DSB2018 layout)")
    doc: dict[str, Any] = {"images": [], "annotations": [], "categories": [{"id": 1, "name": category}]}
    for image_id, sample in enumerate(samples, 1):
        image_files = sorted(p for p in (sample / "images").iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not image_files:
            raise DataError(f"{sample / 'images'}: no image")
        h, w = _image_size(image_files[0])
        doc["images"].append(
            {"id": image_id, "file_name": str(image_files[0].relative_to(root)), "height": h, "width": w}
        )
        for mask_file in sorted((sample / "masks").glob("*.png")):
            m = cv2.imread(str(mask_file), cv2.IMREAD_GRAYSCALE)
            if m is None:
                raise DataError(f"{mask_file}: cannot read mask")
            if m.shape != (h, w):
                raise DataError(f"{mask_file}: size {m.shape} differs from its image ({h}, {w})")
            if not m.any():
                log.warning("%s: empty mask skipped", mask_file)
                continue
            doc["annotations"].append(annotation(m > 0, len(doc["annotations"]) + 1, image_id, 1))
    return write_json(doc, Path(out))


# --- Cityscapes ------------------------------------------------------------------------------------


def cityscapes_to_coco(
    root: str | Path, split: str, out: str | Path, things: dict[int, str] | None = None
) -> Path:
    """``gtFine/<split>/<city>/*_instanceIds.png`` -> COCO, with images from ``leftImg8bit``.

    Pixel values >= 1000 are instances of class ``value // 1000``; a thing
    class's value below 1000 marks a group the annotators did not split, which
    becomes a crowd region of that class.
    """
    root = Path(root)
    things = things or CITYSCAPES_THINGS
    files = sorted((root / "gtFine" / split).glob("*/*_gtFine_instanceIds.png"))
    if not files:
        raise DataError(f"{root / 'gtFine' / split}: no */*_gtFine_instanceIds.png files")
    cat_ids = {label: k for k, label in enumerate(sorted(things), 1)}
    doc: dict[str, Any] = {
        "images": [],
        "annotations": [],
        "categories": [{"id": cat_ids[label], "name": things[label]} for label in sorted(things)],
    }
    for image_id, path in enumerate(files, 1):
        m = _read_label_map(path).astype(np.int64)
        stem = path.name.removesuffix("_gtFine_instanceIds.png")
        image_file = root / "leftImg8bit" / split / path.parent.name / f"{stem}_leftImg8bit.png"
        doc["images"].append(
            {
                "id": image_id,
                "file_name": str(image_file.relative_to(root / "leftImg8bit" / split)),
                "height": m.shape[0],
                "width": m.shape[1],
            }
        )
        for value, mask in label_map_instances(m):
            label = value // 1000 if value >= 1000 else value
            if label not in cat_ids:
                continue
            crowd = int(value < 1000)
            doc["annotations"].append(
                annotation(mask, len(doc["annotations"]) + 1, image_id, cat_ids[label], crowd)
            )
    return write_json(doc, Path(out))


# --- LVIS ------------------------------------------------------------------------------------------


def lvis_to_coco(lvis_json: str | Path, out: str | Path) -> Path:
    """LVIS annotations as a COCO file instseg reads directly.

    Adds what COCO readers expect (``iscrowd``, image ``file_name`` from
    ``coco_url``) and keeps the federated fields (``neg_category_ids``,
    ``not_exhaustive_category_ids``, category ``frequency``), so evaluation
    switches to LVIS rules by itself.
    """
    data = load_json(Path(lvis_json))
    for im in data.get("images", []):
        if "file_name" not in im:
            url = im.get("coco_url") or im.get("flickr_url")
            if not url:
                raise DataError(f"{lvis_json}: image {im.get('id')} has neither file_name nor coco_url")
            im["file_name"] = url.rsplit("/", 1)[-1]
        im.setdefault("neg_category_ids", [])
        im.setdefault("not_exhaustive_category_ids", [])
    for ann in data.get("annotations", []):
        ann.setdefault("iscrowd", 0)
    return write_json(data, Path(out))


# --- YOLO-seg --------------------------------------------------------------------------------------


def coco_to_yolo(
    data: str | Path, out: str | Path, splits: Iterable[str] = ("train", "val"), copy_images: bool = True
) -> Path:
    """A COCO dataset folder -> ``out/images/<split>``, ``out/labels/<split>/*.txt`` and ``out/data.yaml``.

    Class indices are 0..K-1 in category id order. Crowd regions are left out
    (YOLO-seg has no ignore regions). Images are copied, or hard-linked when
    ``copy_images`` is false and the file system allows it.
    """
    out = Path(out)
    names: list[str] | None = None
    written_splits = {}
    for split in splits:
        try:
            source = resolve_source(data, split)
        except DataError:
            if split == "train":
                raise
            continue
        index = CocoIndex(source)
        names = [c.name for c in index.categories]
        (out / "images" / split).mkdir(parents=True, exist_ok=True)
        (out / "labels" / split).mkdir(parents=True, exist_ok=True)
        for im in index.images:
            src = index.image_path(im)
            dst = out / "images" / split / Path(im["file_name"]).name
            if not src.is_file():
                raise DataError(f"{src}: image listed in {source.annotations} not found")
            _place_image(src, dst, copy_images)
            lines = []
            for obj in index.objects.get(im["id"], []):
                poly = mask_to_polygon(mask_utils.decode(obj["rle"]))
                if len(poly) < 3:
                    continue
                xy = (poly / np.array([im["width"], im["height"]])).reshape(-1)
                lines.append(f"{obj['label'] - 1} " + " ".join(f"{v:.6f}" for v in xy))
            (out / "labels" / split / (dst.stem + ".txt")).write_text(
                "\n".join(lines) + ("\n" if lines else "")
            )
        written_splits[split] = f"images/{split}"
    spec = {"path": str(out.resolve()), **written_splits, "names": dict(enumerate(names or []))}
    path = out / "data.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def _place_image(src: Path, dst: Path, copy_images: bool) -> None:
    if dst.exists():
        dst.unlink()
    if not copy_images:
        try:
            dst.hardlink_to(src)
            return
        except OSError:
            pass
    shutil.copy2(src, dst)


def yolo_to_coco(data_yaml: str | Path, split: str, out: str | Path) -> Path:
    """A YOLO-seg dataset (its ``data.yaml``) split -> COCO JSON with polygon segmentations."""
    data_yaml = Path(data_yaml)
    try:
        spec = yaml.safe_load(data_yaml.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise DataError(f"{data_yaml}: cannot read YOLO data file ({exc})") from None
    names = spec.get("names")
    if isinstance(names, list):
        names = dict(enumerate(names))
    if not isinstance(names, dict) or split not in spec:
        raise DataError(f"{data_yaml}: needs 'names' and a '{split}' entry")
    root = Path(spec.get("path") or data_yaml.parent)
    root = root if root.is_absolute() else data_yaml.parent / root
    image_dir = root / spec[split]
    if not image_dir.is_dir():
        raise DataError(f"{data_yaml}: image folder {image_dir} not found")
    label_dir = image_dir  # ultralytics' convention: the last "images" in the path becomes "labels"
    if "images" in image_dir.parts:
        parts = list(image_dir.parts)
        parts[len(parts) - 1 - parts[::-1].index("images")] = "labels"
        label_dir = Path(*parts)
    doc: dict[str, Any] = {
        "images": [],
        "annotations": [],
        "categories": [{"id": int(k) + 1, "name": str(v)} for k, v in sorted(names.items())],
    }
    for image_id, image_file in enumerate(
        sorted(p for p in image_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES), 1
    ):
        h, w = _image_size(image_file)
        doc["images"].append({"id": image_id, "file_name": image_file.name, "height": h, "width": w})
        label_file = label_dir / (image_file.stem + ".txt")
        if not label_file.is_file():
            continue  # an image without objects
        for line_no, line in enumerate(label_file.read_text().splitlines(), 1):
            if not line.strip():
                continue
            try:
                values = [float(v) for v in line.split()]
            except ValueError:
                raise DataError(f"{label_file}:{line_no}: not numbers") from None
            cls, xy = int(values[0]), np.asarray(values[1:])
            if cls not in names:
                raise DataError(f"{label_file}:{line_no}: class {cls} is not in {data_yaml} names")
            if len(xy) < 6 or len(xy) % 2:
                raise DataError(
                    f"{label_file}:{line_no}: a polygon needs >= 3 x,y pairs, got {len(xy)} numbers"
                )
            poly = (xy.reshape(-1, 2) * np.array([w, h])).reshape(-1)
            rle = mask_utils.merge(mask_utils.frPyObjects([poly.tolist()], h, w))
            area = float(mask_utils.area(rle))
            if area == 0:
                log.warning("%s:%d: polygon of zero area skipped", label_file, line_no)
                continue
            doc["annotations"].append(
                {
                    "id": len(doc["annotations"]) + 1,
                    "image_id": image_id,
                    "category_id": cls + 1,
                    "segmentation": [[round(float(v), 3) for v in poly]],
                    "area": area,
                    "bbox": [float(v) for v in mask_utils.toBbox(rle)],
                    "iscrowd": 0,
                }
            )
    return write_json(doc, Path(out))
