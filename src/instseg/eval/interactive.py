"""Interactive segmentation metrics: mIoU after k clicks, NoC@85/90, and box-prompt mIoU.

The click protocol of RITM and SAM, deterministic: the first click is the
object's pixel farthest from its boundary; each next click is the pixel
farthest from the boundary of the current error (missed object pixels or
covered background, whichever reaches further from its own boundary),
positive on a miss and negative on a spill. The previous answer's logits go
back in as the mask prompt. The first click asks for three readings and keeps
the one with the highest predicted IoU, as SAM's interactive evaluation does;
later clicks ask for one. NoC@t is the number of clicks an object needs to
reach IoU t, counted as ``max_clicks`` when it never does. An object stops
being clicked once every metric is decided (5 clicks done and IoU 0.90
reached), as a user would stop; its later IoUs are its last.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import Tensor
from tqdm import tqdm

from instseg.masks import boundary_distance
from instseg.structures import Instances

REPORTED_CLICKS = (1, 3, 5)
NOC_THRESHOLDS = (0.85, 0.90)


class Promptable(Protocol):
    """What the protocol needs of a promptable model (``prompt_predictor.PromptPredictor`` is one)."""

    logits: Tensor | None

    def set_image(self, image: Any) -> None: ...

    def predict(
        self,
        points: Any = None,
        labels: Any = None,
        box: Any = None,
        mask_input: Any = None,
        multimask: bool = True,
    ) -> Instances: ...


def farthest_from_boundary(region: np.ndarray) -> tuple[tuple[int, int], float]:
    """The (x, y) of ``region``'s pixel farthest from its boundary (the image edge counts as
    boundary), and that distance; the first such pixel in raster order on ties."""
    distance = boundary_distance(torch.from_numpy(np.asarray(region, dtype=bool))[None])[0].numpy()
    flat = int(np.argmax(distance))
    y, x = divmod(flat, region.shape[1])
    return (x, y), float(distance[y, x])


def next_click(predicted: np.ndarray, truth: np.ndarray) -> tuple[tuple[int, int], int]:
    """The next corrective click: ((x, y), 1) inside the missed part or ((x, y), 0) inside the spill."""
    missed_xy, missed = farthest_from_boundary(truth & ~predicted)
    spill_xy, spilled = farthest_from_boundary(predicted & ~truth)
    return (missed_xy, 1) if missed >= spilled else (spill_xy, 0)


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


@dataclass
class InteractiveReport:
    max_clicks: int
    ious: np.ndarray  # [objects, max_clicks]: IoU after each click
    box_ious: np.ndarray  # [objects]
    objects: int = 0
    images: int = 0
    metrics: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.objects = len(self.ious)
        for k in REPORTED_CLICKS:
            if k <= self.max_clicks:
                self.metrics[f"mIoU@{k}"] = float(self.ious[:, k - 1].mean()) if self.objects else 0.0
        for t in NOC_THRESHOLDS:
            reached = self.ious >= t
            clicks = np.where(reached.any(1), reached.argmax(1) + 1, self.max_clicks)
            self.metrics[f"NoC@{round(t * 100)}"] = float(clicks.mean()) if self.objects else 0.0
        self.metrics["box mIoU"] = float(self.box_ious.mean()) if self.objects else 0.0

    def format(self) -> str:
        head = " | ".join(self.metrics)
        row = " | ".join(f"{v:.3f}" for v in self.metrics.values())
        rule = "|" + "---|" * len(self.metrics)
        return f"| {head} |\n{rule}\n| {row} |\n{self.objects} objects in {self.images} images"

    def plot(self, path: str | Path) -> Path:
        """Histograms of the per-object IoU after 1 click, after the last click and from a box."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        from instseg.pictures import save_figure

        fig, ax = plt.subplots(figsize=(6.5, 4.5))
        bins = np.linspace(0, 1, 21)
        for values, label in (
            (self.ious[:, 0], "1 click"),
            (self.ious[:, -1], f"{self.max_clicks} clicks"),
            (self.box_ious, "box"),
        ):
            ax.hist(values, bins=bins, alpha=0.5, label=f"{label}: mean {values.mean():.3f}")
        ax.set(xlabel="IoU with the ground truth", ylabel="objects")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
        return save_figure(fig, path)


def evaluate_object(model: Promptable, truth: np.ndarray, max_clicks: int) -> tuple[list[float], float]:
    """IoU after each click, and with the object's box as the prompt, on the image already set."""
    points: list[tuple[int, int]] = []
    labels: list[int] = []
    xy, _ = farthest_from_boundary(truth)
    points.append(xy)
    labels.append(1)
    ious, mask_input = [], None
    for k in range(max_clicks):
        found = model.predict(points, labels, mask_input=mask_input, multimask=k == 0)
        predicted = found.masks[0].numpy()
        ious.append(iou(predicted, truth))
        if k + 1 >= max(REPORTED_CLICKS) and ious[-1] >= max(NOC_THRESHOLDS):
            ious += [ious[-1]] * (max_clicks - k - 1)  # done: every metric is decided; the user stops
            break
        mask_input = model.logits[0][:1]
        if k + 1 < max_clicks:
            xy, label = next_click(predicted, truth)
            points.append(xy)
            labels.append(label)
    ys, xs = np.nonzero(truth)
    box = [float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)]
    box_iou = iou(model.predict(box=box, multimask=False).masks[0].numpy(), truth)
    return ious, box_iou


def evaluate_interactive(
    model: Promptable,
    images: list[tuple[Tensor, list[np.ndarray]]] | Any,
    max_clicks: int = 20,
    progress: bool = True,
) -> InteractiveReport:
    """``images``: (image ``[3, H, W]``, the bool masks of its objects) pairs, or an iterable of them."""
    all_ious, box_ious, count = [], [], 0
    for image, truths in tqdm(images, desc="interactive", unit="image", disable=not progress):
        count += 1
        if not len(truths):
            continue
        model.set_image(image)
        for truth in truths:
            ious, box_iou = evaluate_object(model, np.asarray(truth, dtype=bool), max_clicks)
            all_ious.append(ious)
            box_ious.append(box_iou)
    report = InteractiveReport(
        max_clicks, np.asarray(all_ious, dtype=np.float64).reshape(-1, max_clicks), np.asarray(box_ious)
    )
    report.images = count
    return report


def coco_objects(index: Any, max_objects: int | None = None) -> Any:
    """(image, non-crowd object masks) per image of a ``CocoIndex``, the largest ``max_objects`` of each
    image when given (a fixed choice, so runs compare)."""
    from instseg.data.images import read_image
    from instseg.data.inspect import ground_truth_instances

    for record in index.images:
        image = read_image(index.image_path(record), (record["height"], record["width"])).float() / 255
        masks = ground_truth_instances(index, record, tuple(image.shape[-2:])).masks
        masks = masks[masks.flatten(1).any(1)]
        if max_objects is not None and len(masks) > max_objects:
            masks = masks[torch.argsort(masks.flatten(1).sum(1), descending=True)[:max_objects]]
        yield image, [m.numpy() for m in masks]


class InstanceBaseline:
    """An instance model answering clicks: of its masks that contain a positive click, the one that
    agrees with the most clicks (inside for positive, outside for negative), the best-scoring among
    equals; empty when no mask contains a positive click. A box gets the mask whose box overlaps it
    most. What a user of a non-promptable model can do, to compare a promptable one against: more
    clicks can only pick another of the same masks."""

    def __init__(self, segment: Any) -> None:
        self.segment = segment  # image -> Instances (a Predictor)
        self.logits: Tensor | None = torch.zeros(1, 1, 1, 1)
        self.found: Instances | None = None

    def set_image(self, image: Any) -> None:
        self.found = self.segment(image)

    def predict(
        self,
        points: Any = None,
        labels: Any = None,
        box: Any = None,
        mask_input: Any = None,
        multimask: bool = True,
    ) -> Instances:
        from torchvision.ops import box_iou

        found = self.found
        order = torch.argsort(found.scores, descending=True)
        chosen = None
        if points is not None:
            xy = torch.as_tensor(points, dtype=torch.long).reshape(-1, 2)
            signs = torch.ones(len(xy)) if labels is None else torch.as_tensor(labels, dtype=torch.float32)
            inside = found.masks[:, xy[:, 1], xy[:, 0]]  # [N, clicks]
            agree = (inside == (signs > 0)).sum(1)
            touched = (inside & (signs > 0)).any(1)
            candidates = [int(i) for i in order if touched[i]]
            chosen = max(candidates, key=lambda i: int(agree[i]), default=None)  # max keeps the first
        elif box is not None and len(found):
            overlap = box_iou(torch.as_tensor(box, dtype=torch.float32).reshape(1, 4), found.boxes)[0]
            chosen = int(overlap.argmax())
        if chosen is None:
            empty = torch.zeros((1, *found.image_size), dtype=torch.bool)
            return Instances(
                torch.zeros(1, 4), torch.ones(1, dtype=torch.int64), torch.zeros(1), empty, found.image_size
            )
        return found[chosen]
