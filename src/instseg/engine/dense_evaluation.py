"""Score a model's panoptic or semantic reading on a COCO dataset (``instseg eval --task``).

Ground truth comes from the instance annotations: segments are painted in
file order, later over earlier (the synthetic scenes list stuff first and the
nearest object last), pixels no annotation covers are void, and a category's
``isthing`` (COCO panoptic's field; 1 when absent) says thing or stuff.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch
from pycocotools import mask as mask_utils
from torch import nn
from tqdm import tqdm

from instseg.data.coco import CocoIndex
from instseg.data.images import read_image
from instseg.engine.evaluation import check_categories
from instseg.errors import InstsegError
from instseg.eval.panoptic import PanopticQuality, Segment, SemanticIoU
from instseg.structures import Category

Task = Literal["panoptic", "semantic"]


def thing_labels(index: CocoIndex) -> dict[int, bool]:
    """Label (1..K) -> whether its category is a thing."""
    flags = {c["id"]: bool(c.get("isthing", 1)) for c in index.dataset["categories"]}
    return {index.label_of[c.id]: flags[c.id] for c in index.categories}


def ground_truth_segments(index: CocoIndex, image: dict) -> tuple[np.ndarray, list[Segment], np.ndarray]:
    """A segment-id map (0: void), its segments (category = label 1..K), and the label map (0: void)."""
    size = (int(image["height"]), int(image["width"]))
    segment_map = np.zeros(size, dtype=np.int32)
    label_map = np.zeros(size, dtype=np.int32)
    segments = []
    for i, obj in enumerate(index.objects.get(image["id"], []), start=1):
        inside = mask_utils.decode(obj["rle"]).astype(bool)
        segment_map[inside] = i
        label_map[inside] = obj["label"]
        segments.append(Segment(i, obj["label"], obj["iscrowd"]))
    return segment_map, segments, label_map


def evaluate_dense(
    model: nn.Module,
    categories: Sequence[Category],
    index: CocoIndex,
    task: Task,
    device: torch.device | str = "cpu",
    progress: bool = True,
) -> dict:
    """PQ/SQ/RQ (all, things, stuff, per class) or mIoU (per class) over every image of ``index``, from
    a model with ``panoptic`` and ``semantic`` readings (Mask2Former's) trained on ``categories``."""
    if not hasattr(model, task):
        raise InstsegError(
            f"{type(model).__name__} has no {task} reading; --task {task} needs a query-based model "
            "(mask2former)"
        )
    check_categories(categories, index)
    things = thing_labels(index)
    quality = PanopticQuality(things) if task == "panoptic" else SemanticIoU(len(things))
    is_thing = torch.tensor([things[k] for k in sorted(things)], device=device)
    for image in tqdm(index.images, desc=task, disable=not progress):
        pixels = read_image(index.image_path(image), (int(image["height"]), int(image["width"])))
        pixels = pixels.to(device).float().div_(255.0)
        gt_map, gt_segments, gt_labels = ground_truth_segments(index, image)
        if task == "panoptic":
            pred_map, info = model.panoptic([pixels], is_thing)[0]
            pred_segments = [Segment(s["id"], s["label"]) for s in info]
            quality.update(gt_map, gt_segments, pred_map.cpu().numpy(), pred_segments)
        else:
            scores = model.semantic([pixels])[0]
            quality.update(gt_labels, scores.argmax(0).add(1).cpu().numpy())
    summary = quality.summary()
    summary["names"] = {index.label_of[c.id]: c.name for c in index.categories}
    return summary


def format_dense(summary: dict, task: Task) -> str:
    """The summary as a plain-text table, one row per class."""
    names = summary["names"]
    if task == "semantic":
        lines = [
            f"mIoU {summary['miou']:.4f}   pixel accuracy {summary['pixel_accuracy']:.4f}",
            "",
            "class IoU",
        ]
        lines += [f"  {names[k]:<20} {v:.4f}" for k, v in sorted(summary["per_class"].items())]
        return "\n".join(lines)
    lines = [f"{'':<20} {'PQ':>7} {'SQ':>7} {'RQ':>7} {'N':>4}"]
    for group in ("all", "things", "stuff"):
        r = summary[group]
        lines.append(f"{group:<20} {r['pq']:7.4f} {r['sq']:7.4f} {r['rq']:7.4f} {r['n']:4d}")
    lines += ["", f"{'class':<20} {'PQ':>7} {'SQ':>7} {'RQ':>7} {'TP':>5} {'FP':>5} {'FN':>5}"]
    for k, r in sorted(summary["per_class"].items()):
        counts = f"{r['tp']:5d} {r['fp']:5d} {r['fn']:5d}"
        lines.append(f"{names[k]:<20} {r['pq']:7.4f} {r['sq']:7.4f} {r['rq']:7.4f} {counts}")
    return "\n".join(lines)
