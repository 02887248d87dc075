"""``instseg data stats`` and ``instseg data show``: look at a dataset before training on it."""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pycocotools.mask as mask_utils
import torch

from instseg.data.coco import CocoIndex, resolve_source
from instseg.data.images import read_image
from instseg.errors import DataError
from instseg.pictures import save_figure, save_overlay
from instseg.structures import Instances

SMALL, MEDIUM = 32**2, 96**2  # COCO's area ranges


@dataclass
class DatasetStats:
    name: str
    images: int
    instances_per_image: np.ndarray
    areas: np.ndarray  # mask areas in px, non-crowd
    class_counts: dict[str, int]
    image_sizes: Counter = field(default_factory=Counter)  # (H, W) -> images
    crowd: int = 0
    lvis_frequency: dict[str, str] = field(default_factory=dict)  # class -> LVIS tag r/c/f, when tagged

    def format(self, classes: int = 10) -> str:
        n = self.instances_per_image
        a = self.areas
        total = max(len(a), 1)
        small, large = int((a < SMALL).sum()), int((a > MEDIUM).sum())
        lines = [
            f"{self.name}: {self.images} images, {len(a)} instances (+{self.crowd} crowd regions)",
            f"instances per image: min {n.min() if len(n) else 0}, median {np.median(n) if len(n) else 0:g}, "
            f"mean {n.mean() if len(n) else 0:.1f}, max {n.max() if len(n) else 0}, "
            f"{int((n == 0).sum())} images without objects",
            f"object area (px): median {np.median(a) if len(a) else 0:.0f}; "
            f"small (<32^2) {small / total:.0%}, medium {(len(a) - small - large) / total:.0%}, "
            f"large (>96^2) {large / total:.0%}",
        ]
        counts = sorted(self.class_counts.items(), key=lambda kv: -kv[1])
        if counts:
            head = ", ".join(f"{k} {v}" for k, v in counts[:classes])
            lines.append(f"classes ({len(counts)}): {head}{' ...' if len(counts) > classes else ''}")
            if len(counts) > 1:
                lines.append(f"imbalance: most/least frequent = {counts[0][1] / max(counts[-1][1], 1):.1f}")
        sizes = ", ".join(f"{w}x{h} ({k})" for (h, w), k in self.image_sizes.most_common(5))
        lines.append(f"image sizes (WxH): {sizes}")
        return "\n".join(lines)


def dataset_stats(data: str | Path, split: str = "train") -> DatasetStats:
    index = CocoIndex(resolve_source(data, split), keep_crowd=True)
    per_image, areas, crowd = [], [], 0
    names = {i + 1: c.name for i, c in enumerate(index.categories)}
    counts: Counter[str] = Counter({c.name: 0 for c in index.categories})
    for im in index.images:
        objects = index.objects.get(im["id"], [])
        crowd += sum(o["iscrowd"] for o in objects)
        real = [o for o in objects if not o["iscrowd"]]
        per_image.append(len(real))
        areas += [float(mask_utils.area(o["rle"])) for o in real]
        counts.update(names[o["label"]] for o in real)
    return DatasetStats(
        name=f"{index.source.annotations.name}",
        images=len(index.images),
        instances_per_image=np.asarray(per_image, dtype=np.int64),
        areas=np.asarray(areas),
        class_counts=dict(counts),
        image_sizes=Counter((int(im["height"]), int(im["width"])) for im in index.images),
        crowd=crowd,
        lvis_frequency={
            str(c.get("name", c["id"])): str(c["frequency"])
            for c in index.dataset["categories"]
            if "frequency" in c
        },
    )


def plot_stats(stats: DatasetStats, out: str | Path) -> list[Path]:
    """Instances per image, object areas (with COCO S/M/L lines), class frequencies, image sizes."""
    out = Path(out)
    written = []
    fig, ax = plt.subplots(figsize=(6, 4))
    n = stats.instances_per_image
    ax.hist(n, bins=min(50, max(int(n.max()) + 1, 1)) if len(n) else 1, color="tab:blue")
    ax.set(xlabel="instances per image", ylabel="images", title=stats.name)
    written.append(save_figure(fig, out / "instances_per_image.png"))

    fig, ax = plt.subplots(figsize=(6, 4))
    if len(stats.areas):
        bins = np.logspace(0, np.log10(max(stats.areas.max(), 10)), 50)
        ax.hist(stats.areas, bins=bins, color="tab:green")
        ax.set_xscale("log")
    for x, label in ((SMALL, "32²"), (MEDIUM, "96²")):
        ax.axvline(x, color="k", linestyle="--", linewidth=1)
        ax.text(x, ax.get_ylim()[1] * 0.95, f" {label}", fontsize=8, va="top")
    ax.set(xlabel="object area (px, log)", ylabel="objects", title="small | medium | large")
    written.append(save_figure(fig, out / "object_areas.png"))

    counts = sorted(stats.class_counts.items(), key=lambda kv: -kv[1])
    fig, ax = plt.subplots(figsize=(max(6, 0.18 * len(counts)), 4))
    tags = {"f": ("tab:blue", "frequent"), "c": ("tab:orange", "common"), "r": ("tab:red", "rare")}
    colours = [tags.get(stats.lvis_frequency.get(k, ""), ("tab:orange", ""))[0] for k, _ in counts]
    ax.bar(range(len(counts)), [v for _, v in counts], color=colours)
    if stats.lvis_frequency:  # LVIS tags: the long tail in colour
        shown = sorted(set(stats.lvis_frequency.values()) & set(tags), key="fcr".index)
        handles = [plt.Rectangle((0, 0), 1, 1, color=tags[t][0]) for t in shown]
        ax.legend(handles, [tags[t][1] for t in shown], title="LVIS frequency")
    if len(counts) <= 40:
        ax.set_xticks(range(len(counts)), [k for k, _ in counts], rotation=90, fontsize=7)
    if counts and counts[0][1] > 20 * max(counts[-1][1], 1):
        ax.set_yscale("log")
    ax.set(ylabel="instances", title="class frequency (sorted)")
    written.append(save_figure(fig, out / "class_frequency.png"))

    fig, ax = plt.subplots(figsize=(5, 5))
    sizes = list(stats.image_sizes.items())
    ax.scatter(
        [w for (h, w), _ in sizes], [h for (h, w), _ in sizes], s=[10 + 5 * k for _, k in sizes], alpha=0.6
    )
    ax.set(xlabel="width", ylabel="height", title="image sizes (dot area: images)")
    written.append(save_figure(fig, out / "image_sizes.png"))
    return written


def ground_truth_instances(index: CocoIndex, image: dict, size: tuple[int, int]) -> Instances:
    objects = [o for o in index.objects.get(image["id"], []) if not o["iscrowd"]]
    h, w = size
    masks = torch.zeros((len(objects), h, w), dtype=torch.bool)
    for i, o in enumerate(objects):
        masks[i] = torch.from_numpy(mask_utils.decode(o["rle"]).astype(bool))
    return Instances(
        boxes=torch.tensor([o["bbox"] for o in objects], dtype=torch.float32).reshape(-1, 4),
        labels=torch.tensor([o["label"] for o in objects], dtype=torch.int64),
        scores=torch.ones(len(objects)),
        masks=masks,
        image_size=size,
        categories=tuple(index.categories),
    )


def show_ground_truth(
    data: str | Path,
    out: str | Path,
    split: str = "train",
    image_ids: Sequence[int] = (),
    count: int = 8,
    seed: int = 0,
    images: str | Path | None = None,
) -> list[Path]:
    """Overlays of the ground truth for the chosen images, or ``count`` random ones."""
    index = CocoIndex(resolve_source(data, split, images), keep_crowd=True)
    by_id = {im["id"]: im for im in index.images}
    missing = [i for i in image_ids if i not in by_id]
    if missing:
        raise DataError(f"{index.source.annotations}: no image ids {missing}")
    chosen = [by_id[i] for i in image_ids] or random.Random(seed).sample(
        index.images, min(count, len(index.images))
    )
    written = []
    for im in chosen:
        size = (int(im["height"]), int(im["width"]))
        picture = read_image(index.image_path(im), size)
        gt = ground_truth_instances(index, im, size)
        name = f"{im['id']}_{Path(im['file_name']).stem}.png"
        written.append(save_overlay(picture, gt, Path(out) / name))
    return written
