"""Inference cost of a trained checkpoint on one image size: network forward and postprocessing apart,
parameters and GFLOPs (torch's FlopCounterMode: convolutions and matrix products, 2 FLOPs per MAC).

Images are val images resized to SIZE x SIZE, so the postprocessing handles as
many detections as the trained model really makes. Works for the families
built on the seam (``SegmentationModel``: SOLOv2, CondInst, YOLACT, Mask2Former), whose postprocessor is
timed with forward hooks.

    python benchmarks/inference_split.py runs/bench/yolact_30/checkpoint --size 512
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

import instseg
from instseg.data.coco import CocoIndex, resolve_source
from instseg.data.images import read_image
from instseg.models.build import count_parameters
from instseg.models.segmentation_model import SegmentationModel

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "dsb2018"


def val_image_files(data: Path, count: int) -> list[Path]:
    """The first ``count`` val images of ``data``."""
    index = CocoIndex(resolve_source(data, "val"))
    return [index.image_path(info) for info in index.images[:count]]


def val_images(data: Path, count: int, size: int) -> list[torch.Tensor]:
    """The first ``count`` val images of ``data``, resized to ``size`` x ``size``, as float [0, 1]."""
    index = CocoIndex(resolve_source(data, "val"))
    images = []
    for info in index.images[:count]:
        image = read_image(index.image_path(info), (int(info["height"]), int(info["width"])))
        image = image.float()[None] / 255
        images.append(F.interpolate(image, size=(size, size), mode="bilinear")[0])
    return images


def timed_predictions(
    model: torch.nn.Module, images: list[torch.Tensor], warmup: int, before: Callable[[], None] = lambda: None
) -> tuple[list[float], list[int]]:
    """Seconds and detection count of ``model([image])`` for every image, after ``warmup`` images
    (``before`` runs between the two)."""
    for image in images[:warmup]:
        model([image])
    before()
    seconds, detections = [], []
    for image in images:
        start = time.perf_counter()
        out = model([image])[0]
        seconds.append(time.perf_counter() - start)
        detections.append(len(out["scores"]))
    return seconds, detections


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--images", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    predictor = instseg.load(args.checkpoint, device="cpu")
    model = predictor.inference  # what predict runs: BatchNorm folded, channels-last
    images = val_images(args.data, args.images, args.size)
    if not isinstance(model, SegmentationModel):
        parser.error(f"{predictor.family} has no seam postprocessor (Mask R-CNN is torchvision's)")
    post_times: list[float] = []  # appended to by the hooks below
    started: list[float] = []
    model.postprocessor.register_forward_pre_hook(lambda *_: started.append(time.perf_counter()))
    model.postprocessor.register_forward_hook(lambda *_: post_times.append(time.perf_counter() - started[-1]))
    with torch.inference_mode():
        totals, detections = timed_predictions(model, images, warmup=3, before=post_times.clear)
        timed_posts = list(post_times)
        with FlopCounterMode(display=False) as counter:
            model([images[0]])
    post = statistics.median(timed_posts) * 1000
    total = statistics.median(totals) * 1000
    row = {
        "checkpoint": args.checkpoint,
        "size": args.size,
        "threads": args.threads,
        "params_M": count_parameters(predictor.model) / 1e6,
        "GFLOPs": counter.get_total_flops() / 1e9,
        "total_ms": total,
        "postprocess_ms": post,
        "forward_ms": statistics.median(t - p for t, p in zip(totals, timed_posts, strict=True)) * 1000,
        "detections_median": statistics.median(detections),
    }
    print(json.dumps(row, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
