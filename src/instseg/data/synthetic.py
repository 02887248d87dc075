"""Synthetic scenes with exact ground truth for the cases the field finds hard.

Each knob of :class:`SynthConfig` matches one named failure mode: thin
structures (wires a few pixels wide), heavy occlusion (the visible part is the
mask), small dense touching objects, long-tailed class frequencies (with LVIS
``frequency`` tags), fine concave boundaries, and background clutter and
noise. A class is a shape kind plus a colour and a texture, so the task is
learnable and its difficulty comes only from the knobs.

Generation is deterministic: image ``i`` of a split draws from its own seeded
generator, and the files are written in a fixed order and format, so the same
seed gives the same bytes.
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pycocotools.mask as mask_utils

from instseg.data.coco import write_json

KINDS = ("blob", "polygon", "star", "ring", "wire")
# Fast lossless PNG: Huffman coding only (noisy synthetic pixels do not compress much anyway).
PNG_FLAGS = [cv2.IMWRITE_PNG_COMPRESSION, 1, cv2.IMWRITE_PNG_STRATEGY, cv2.IMWRITE_PNG_STRATEGY_HUFFMAN_ONLY]
SPLITS = ("train", "val")


@dataclass
class SynthConfig:
    """What the scenes look like; every field is an ``instseg data synth`` flag."""

    train_images: int = 200
    val_images: int = 50
    size: int = 256
    seed: int = 0
    classes: int = 3
    objects: tuple[int, int] = (3, 8)  # per image, inclusive
    radius: tuple[float, float] = (10.0, 36.0)  # object size in px
    thin: float = 0.0  # fraction of classes that are thin wires
    wire_width: tuple[int, int] = (1, 3)
    occlusion: float = 0.0  # chance an object is dropped onto an earlier one
    touching: float = 0.0  # chance an object is placed against an earlier one
    min_visible: float = 0.35  # objects more hidden than this are not drawn
    boundary_detail: float = 0.0  # amplitude of fine concave wiggles on outlines, as a radius fraction
    longtail: float = 0.0  # power-law exponent of class frequencies (0: uniform)
    clutter: int = 0  # unannotated distractor strokes per image
    noise: float = 4.0  # Gaussian pixel noise, in grey levels
    lvis_fields: bool = False  # write neg/not-exhaustive ids so evaluation is LVIS-federated
    every_class: bool = False  # image i < classes of each split holds an object of class i: none is missing
    # background classes ("stuff", COCO panoptic's isthing 0): the background is split into regions of
    # these many classes, each annotated per image as one segment, after the thing classes' ids
    stuff: int = 0


PRESETS: dict[str, SynthConfig] = {
    "tiny": SynthConfig(
        train_images=8, val_images=4, size=64, classes=2, objects=(2, 4), radius=(7.0, 14.0), noise=2.0
    ),
    "easy": SynthConfig(),
    "hard": SynthConfig(
        classes=8,
        objects=(12, 40),
        radius=(4.0, 28.0),
        thin=0.25,
        occlusion=0.4,
        touching=0.5,
        boundary_detail=0.12,
        clutter=12,
        noise=12.0,
    ),
    # 40 classes, exponent 1.8: a few frequent (> 100 training images), the rest common and rare
    # (1-10 images); every class in at least one image of each split. No wires: the shape kinds cycle
    # through the frequency ranks, so that a class's frequency says nothing of how hard it is, and
    # val is large enough to hold a few objects of each rare class
    "longtail": SynthConfig(
        train_images=600,
        val_images=400,
        classes=40,
        objects=(4, 12),
        radius=(8.0, 30.0),
        occlusion=0.15,
        touching=0.2,
        longtail=1.8,
        clutter=4,
        noise=6.0,
        lvis_fields=True,
        every_class=True,
    ),
    # things on a background of stuff regions, for panoptic and semantic evaluation
    "panoptic": SynthConfig(classes=3, stuff=3, objects=(4, 12), radius=(8.0, 24.0), touching=0.3, noise=6.0),
}

PRESET_NOTES = {
    "tiny": "64x64, 2 classes, 2-4 objects: for tests that must train in seconds",
    "easy": "3 well-separated classes, 3-8 mid-size objects, no occlusion: a sanity check",
    "hard": "8 classes, 12-40 objects of 4-28 px, wires, 40% occlusion, touching, rough edges, clutter",
    "longtail": "40 classes with power-law frequencies, rare ones in 1-10 training images (LVIS r/c/f "
    "tags and federated fields)",
    "panoptic": "3 thing classes on 3 stuff classes that split the background (isthing 0/1 per category)",
}


@dataclass
class ClassLook:
    kind: str
    color: np.ndarray  # float [3]
    texture: int  # 0 plain, 1 stripes, 2 dots, 3 checks
    period: float


@dataclass
class SceneObject:
    """An object's masks on its own box ``(y0, x0)``: everything it covers, and what stays visible."""

    label: int  # index into the classes
    y0: int
    x0: int
    shape: np.ndarray  # bool [h, w], before occlusion
    full_area: int = 0
    visible: np.ndarray | None = field(default=None, repr=False)

    def window(self) -> tuple[slice, slice]:
        h, w = self.shape.shape
        return slice(self.y0, self.y0 + h), slice(self.x0, self.x0 + w)

    def full_mask(self, size: int) -> np.ndarray:
        out = np.zeros((size, size), dtype=np.uint8, order="F")
        out[self.window()] = self.visible
        return out


def class_looks(cfg: SynthConfig) -> list[ClassLook]:
    """The fixed appearance of every class, from the seed alone."""
    rng = np.random.default_rng([cfg.seed, 7])
    n_thin = round(cfg.thin * cfg.classes)
    kinds = ["wire"] * n_thin + [KINDS[i % 4] for i in range(cfg.classes - n_thin)]
    hues = (np.arange(cfg.classes) * 0.618034 + rng.random()) % 1.0
    looks = []
    for k in range(cfg.classes):
        hsv = np.uint8([[[int(hues[k] * 180), 200, 230]]])
        color = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)[0, 0].astype(np.float32)
        looks.append(ClassLook(kinds[k], color, k % 4, float(rng.uniform(3.0, 7.0))))
    for k in range(cfg.stuff):  # muted, so that things stand out on them
        hsv = np.uint8([[[int((hues[0] + 0.5 + k / max(cfg.stuff, 1)) % 1.0 * 180), 90, 150]]])
        color = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)[0, 0].astype(np.float32)
        looks.append(ClassLook("stuff", color, (k + 1) % 4, float(rng.uniform(4.0, 9.0))))
    return looks


def class_weights(cfg: SynthConfig) -> np.ndarray:
    w = (np.arange(cfg.classes) + 1.0) ** -cfg.longtail
    return w / w.sum()


def _outline(rng: np.random.Generator, kind: str, r: float, detail: float) -> np.ndarray:
    """Points of a closed outline around the origin; ``detail`` adds fine concave wiggles."""
    n = 96
    theta = np.linspace(0, 2 * np.pi, n, endpoint=False)
    if kind == "polygon":
        corners = np.sort(rng.uniform(0, 2 * np.pi, int(rng.integers(3, 8))))
        pts = np.stack([np.cos(corners), np.sin(corners)], 1) * r * rng.uniform(0.7, 1.0, (len(corners), 1))
        return pts
    if kind == "star":
        spikes = int(rng.integers(4, 8))
        radius = r * (0.7 + 0.3 * np.cos(spikes * theta + rng.uniform(0, 2 * np.pi)))
    else:  # blob and ring: an ellipse
        a, b = r, r * rng.uniform(0.55, 1.0)
        phi = rng.uniform(0, np.pi)
        radius = a * b / np.sqrt((b * np.cos(theta - phi)) ** 2 + (a * np.sin(theta - phi)) ** 2)
    if detail > 0:
        radius = radius * (1 - detail * (0.5 + 0.5 * np.sin(int(rng.integers(9, 17)) * theta)))
    return np.stack([np.cos(theta) * radius, np.sin(theta) * radius], 1)


def _shape(
    rng: np.random.Generator, kind: str, center: np.ndarray, r: float, cfg: SynthConfig
) -> tuple[int, int, np.ndarray]:
    """The object's mask drawn on the box around it (clipped to the image): ``(y0, x0, mask)``."""
    if kind == "wire":  # a smooth random curve, three times longer than the object radius
        steps = 24
        angle = rng.uniform(0, 2 * np.pi) + np.cumsum(rng.normal(0, 0.25, steps))
        pts = center + np.cumsum(np.stack([np.cos(angle), np.sin(angle)], 1) * (3.0 * r / steps), axis=0)
        width = int(rng.integers(cfg.wire_width[0], cfg.wire_width[1] + 1))
    else:
        pts = center + _outline(rng, kind, r, cfg.boundary_detail)
        width = 1
    lo = np.clip(np.floor(pts.min(0)) - width - 1, 0, cfg.size).astype(int)
    hi = np.clip(np.ceil(pts.max(0)) + width + 2, 0, cfg.size).astype(int)
    canvas = np.zeros((hi[1] - lo[1], hi[0] - lo[0]), dtype=np.uint8)
    if canvas.size == 0:
        return 0, 0, canvas.astype(bool)
    local = np.round((pts - lo) * 16).astype(np.int32)
    if kind == "wire":
        cv2.polylines(canvas, [local], False, 1, width, cv2.LINE_8, 4)
    else:
        cv2.fillPoly(canvas, [local], 1, cv2.LINE_8, 4)
    if kind == "ring":
        c = tuple(int(v) for v in np.round(center - lo))
        cv2.ellipse(canvas, c, (max(1, int(r * 0.4)),) * 2, 0, 0, 360, 0, -1)
    return int(lo[1]), int(lo[0]), canvas.astype(bool)


def _place(rng: np.random.Generator, placed: list[tuple[np.ndarray, float]], r: float, cfg: SynthConfig):
    size = cfg.size
    if placed and rng.random() < cfg.occlusion:
        c, r0 = placed[int(rng.integers(len(placed)))]
        return c + rng.uniform(-0.8, 0.8, 2) * r0
    if placed and rng.random() < cfg.touching:
        c, r0 = placed[int(rng.integers(len(placed)))]
        a = rng.uniform(0, 2 * np.pi)
        return c + np.array([np.cos(a), np.sin(a)]) * (r0 + r) * 0.92
    for _ in range(20):  # free placement: try to avoid overlap
        c = rng.uniform(r * 0.5, size - r * 0.5, 2)
        if all(np.hypot(*(c - p)) > (r + rp) for p, rp in placed):
            return c
    return c


def _texture(look: ClassLook, ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
    if look.texture == 1:
        return 0.8 + 0.2 * np.sin((xs + ys) / look.period)
    if look.texture == 2:
        return 0.8 + 0.2 * (np.sin(xs / look.period) * np.sin(ys / look.period) > 0.3)
    if look.texture == 3:
        return 0.8 + 0.2 * (((xs // look.period) + (ys // look.period)) % 2)
    return np.ones_like(xs, dtype=np.float32)


def render_scene(
    cfg: SynthConfig, looks: list[ClassLook], rng: np.random.Generator, last_label: int | None = None
) -> tuple[np.ndarray, list[SceneObject]]:
    """One image (uint8 RGB) and its visible objects, nearest object last. ``last_label``: the class of
    the last (nearest, so never hidden) object, instead of a draw."""
    size = cfg.size
    weights = class_weights(cfg)
    n = int(rng.integers(cfg.objects[0], cfg.objects[1] + 1))
    objects: list[SceneObject] = []
    placed: list[tuple[np.ndarray, float]] = []
    for k in range(n):
        forced = last_label is not None and k == n - 1
        label = last_label if forced else int(rng.choice(cfg.classes, p=weights))
        r = float(rng.uniform(*cfg.radius))
        center = _place(rng, placed, r, cfg)
        y0, x0, shape = _shape(rng, looks[label].kind, center, r, cfg)
        area = int(shape.sum())
        if area < 4:
            continue
        placed.append((center, r))
        objects.append(SceneObject(label, y0, x0, shape, area))
    # Occlusion: later objects cover earlier ones; too-hidden objects are removed, then visibility redone.
    for _ in range(2):
        owner = np.full((size, size), -1, dtype=np.int32)
        for i, o in enumerate(objects):
            owner[o.window()][o.shape] = i
        for i, o in enumerate(objects):
            o.visible = owner[o.window()] == i
        objects = [o for o in objects if o.visible.sum() >= max(4, cfg.min_visible * o.full_area)]
    # Background: smooth low-frequency shading plus clutter strokes in object-like colours.
    low = rng.uniform(40, 110, (4, 4, 3)).astype(np.float32)
    image = cv2.resize(low, (size, size), interpolation=cv2.INTER_CUBIC)
    if cfg.stuff:
        objects = _stuff_segments(cfg, looks, rng, objects, image)
    for _ in range(cfg.clutter):
        pts = rng.uniform(0, size, (int(rng.integers(2, 5)), 2))
        color = tuple(float(v) for v in rng.uniform(40, 200, 3))
        cv2.polylines(image, [np.round(pts).astype(np.int32)], False, color, int(rng.integers(1, 4)))
    for o in objects:
        if o.label >= cfg.classes:  # stuff, painted with the background
            continue
        look = looks[o.label]
        ys, xs = np.nonzero(o.visible)
        shade = _texture(look, (ys + o.y0).astype(np.float32), (xs + o.x0).astype(np.float32))
        image[o.window()][o.visible] = look.color[None, :] * shade[:, None]
    if cfg.noise > 0:
        image += rng.standard_normal(image.shape, dtype=np.float32) * np.float32(cfg.noise)
    return np.clip(image, 0, 255).astype(np.uint8), objects


def _stuff_segments(
    cfg: SynthConfig,
    looks: list[ClassLook],
    rng: np.random.Generator,
    things: list[SceneObject],
    image: np.ndarray,
) -> list[SceneObject]:
    """Paint the background as regions of the stuff classes (the argmax of smooth random fields) and
    return them, farthest first, before the things; each covers what no thing hides."""
    size = cfg.size
    fields = [cv2.resize(rng.random((3, 3), dtype=np.float32), (size, size)) for _ in range(cfg.stuff)]
    region = np.argmax(np.stack(fields), 0)
    covered = np.zeros((size, size), dtype=bool)
    for o in things:
        covered[o.window()] |= o.visible
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float32)
    shading = image.mean(-1, keepdims=True) / 75.0  # the smooth shading, about 1
    stuff = []
    for k in range(cfg.stuff):
        look = looks[cfg.classes + k]
        inside = region == k
        image[inside] = (look.color[None, :] * _texture(look, ys[inside], xs[inside])[:, None]) * shading[
            inside
        ]
        visible = inside & ~covered
        if visible.sum() >= 4:
            segment = SceneObject(cfg.classes + k, 0, 0, inside, int(inside.sum()))
            segment.visible = visible
            stuff.append(segment)
    return stuff + things


def _frequency(images_with_class: int) -> str:
    """LVIS's tags: rare in 1-10 training images, common in 11-100, frequent beyond."""
    return "r" if images_with_class <= 10 else "c" if images_with_class <= 100 else "f"


def _write_image(job: tuple[SynthConfig, list[ClassLook], int, int, str]) -> tuple[dict, list[dict]]:
    """Render image ``i`` of split ``s`` from its own seed, write it, and return its records."""
    cfg, looks, s, i, folder = job
    split = SPLITS[s]
    last = i if cfg.every_class and i < cfg.classes else None
    image, objects = render_scene(cfg, looks, np.random.default_rng([cfg.seed, s, i]), last)
    name = f"{split}_{i:05d}.png"
    cv2.imwrite(str(Path(folder) / name), image[:, :, ::-1], PNG_FLAGS)
    record: dict[str, Any] = {"id": i + 1, "file_name": name, "height": cfg.size, "width": cfg.size}
    if cfg.lvis_fields:
        # The labels are exhaustive: every absent class is verified absent.
        present = {o.label + 1 for o in objects}
        record["neg_category_ids"] = [c for c in range(1, cfg.classes + 1) if c not in present]
        record["not_exhaustive_category_ids"] = []
    anns = []
    for o in objects:
        rle = mask_utils.encode(o.full_mask(cfg.size))
        x, y, w, h = mask_utils.toBbox(rle).tolist()
        anns.append(
            {
                "image_id": i + 1,
                "category_id": o.label + 1,
                "segmentation": {"size": [cfg.size, cfg.size], "counts": rle["counts"].decode()},
                "area": int(mask_utils.area(rle)),
                "bbox": [x, y, w, h],
                "iscrowd": 0,
                "occluded_fraction": round(1 - int(o.visible.sum()) / o.full_area, 4),
            }
        )
    return record, anns


def generate(
    cfg: SynthConfig, out: str | Path, progress: bool = False, workers: int | None = None
) -> dict[str, Path]:
    """Write ``out/{train,val}/*.png`` and ``out/annotations/instances_{train,val}.json``.

    Images are rendered in ``workers`` processes (default: one per core); every
    image has its own seed and the records are gathered in order, so the
    output does not depend on the number of workers.
    """
    from multiprocessing import get_context

    from tqdm import tqdm

    out = Path(out)
    looks = class_looks(cfg)
    (out / "annotations").mkdir(parents=True, exist_ok=True)
    workers = workers if workers is not None else min(os.cpu_count() or 1, 8)
    pool = (
        get_context("fork").Pool(workers) if workers > 1 and cfg.train_images + cfg.val_images > 8 else None
    )
    datasets: dict[str, dict[str, Any]] = {}
    try:
        for s, split in enumerate(SPLITS):
            n_images = cfg.train_images if split == "train" else cfg.val_images
            (out / split).mkdir(exist_ok=True)
            jobs = [(cfg, looks, s, i, str(out / split)) for i in range(n_images)]
            done = pool.imap(_write_image, jobs, chunksize=4) if pool else map(_write_image, jobs)
            images, anns = [], []
            for record, image_anns in tqdm(done, total=n_images, desc=f"synth {split}", disable=not progress):
                images.append(record)
                for a in image_anns:
                    anns.append({"id": len(anns) + 1, **a})
            datasets[split] = {"images": images, "annotations": anns}
    finally:
        if pool is not None:
            pool.close()
            pool.join()
    train_counts = Counter((a["image_id"], a["category_id"]) for a in datasets["train"]["annotations"])
    images_per_class = Counter(c for _, c in train_counts)
    categories = [
        {
            "id": k + 1,
            "name": f"{looks[k].kind}_{k + 1}",
            "supercategory": looks[k].kind,
            "frequency": _frequency(images_per_class.get(k + 1, 0)),
            "image_count": images_per_class.get(k + 1, 0),
            **({"isthing": int(k < cfg.classes)} if cfg.stuff else {}),
        }
        for k in range(cfg.classes + cfg.stuff)
    ]
    written = {}
    for split in SPLITS:
        doc = {
            "info": {"description": "instseg synthetic scenes", "config": _config_json(cfg)},
            "images": datasets[split]["images"],
            "annotations": datasets[split]["annotations"],
            "categories": categories,
        }
        written[split] = write_json(doc, out / "annotations" / f"instances_{split}.json")
    return written


def _config_json(cfg: SynthConfig) -> dict[str, Any]:
    from dataclasses import asdict

    return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(cfg).items()}


def preset(name: str, **overrides: Any) -> SynthConfig:
    if name not in PRESETS:
        raise KeyError(f"unknown synthetic preset {name!r}; choose from {sorted(PRESETS)}")
    return replace(PRESETS[name], **overrides)
