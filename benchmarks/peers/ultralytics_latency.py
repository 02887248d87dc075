"""Runs inside the peer environment (ultralytics installed, never instseg's dependency): YOLO-seg CPU latency.

Models are built from their YAML (no weights, no download). Prints one JSON
line per model and size: the network forward alone, and ``predict`` end to end
(letterbox, forward, NMS, mask assembly at the input size). ``--trained`` adds
trained weights, timed end to end on ``--images`` resized to SIZE x SIZE, with
the median number of detections they make. ``--onnx-dir`` adds each model
exported by ultralytics to ONNX (fixed SIZE x SIZE input, as it exports by
default) and timed through its own ``predict`` on the ``.onnx`` file, which
runs ONNX Runtime with the same letterbox, NMS and mask assembly in Python.

    YOLO_OFFLINE=1 YOLO_CONFIG_DIR=... python benchmarks/peers/ultralytics_latency.py --sizes 512 640
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from ultralytics import YOLO
from ultralytics.nn.tasks import SegmentationModel


def _timed(fn, runs: int, warmup: int) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--models", nargs="+", default=["yolov8n-seg", "yolo11n-seg", "yolo26n-seg"])
    parser.add_argument("--sizes", type=int, nargs="+", default=[512, 640])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--classes", type=int, default=80, help="the detection head's class count")
    parser.add_argument("--trained", nargs="*", default=[], help="trained weights (.pt) to time on --images")
    parser.add_argument("--images", nargs="*", default=[], help="image files for --trained")
    parser.add_argument("--conf", type=float, default=0.25, help="--trained score threshold")
    parser.add_argument("--max-det", type=int, default=300, help="--trained detections per image")
    parser.add_argument("--onnx-dir", default=None, help="also export each model here and time the .onnx")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    for weights in args.trained:
        for size in args.sizes:
            images = [
                np.asarray(Image.open(p).convert("RGB").resize((size, size), Image.BILINEAR))
                for p in args.images
            ]
            options = {"imgsz": size, "device": "cpu", "verbose": False, "retina_masks": True}
            options |= {"conf": args.conf, "max_det": args.max_det}
            variants = [(YOLO(weights), f"{weights} (trained)")]
            if args.onnx_dir:
                variants.append((_onnx(YOLO(weights), size, args.onnx_dir), f"{weights} (trained, onnx)"))
            for yolo, label in variants:
                for image in images[: args.warmup]:  # warm-up on the same settings as the timed calls
                    yolo.predict(image, **options)
                times, detections = [], []
                for image in images:
                    start = time.perf_counter()
                    result = yolo.predict(image, **options)[0]
                    times.append(time.perf_counter() - start)
                    detections.append(len(result.boxes))
                row = {
                    "model": label,
                    "size": size,
                    "params_M": sum(p.numel() for p in variants[0][0].model.parameters()) / 1e6,
                    "total_ms": statistics.median(times) * 1000,
                    "detections": statistics.median(detections),
                }
                print(json.dumps(row), flush=True)
    for name in args.models:
        yolo = YOLO(f"{name}.yaml")
        if args.classes != 80:  # the YAML's nc is 80; rebuild the network with the dataset's count
            rebuilt = SegmentationModel(f"{name}.yaml", nc=args.classes, verbose=False)
            for key, value in vars(yolo.model).items():  # what its exporter and predictor read (args, task)
                if not key.startswith("_") and not hasattr(rebuilt, key):
                    setattr(rebuilt, key, value)
            rebuilt.names = {i: f"class{i}" for i in range(args.classes)}
            yolo.model = rebuilt
        params = sum(p.numel() for p in yolo.model.parameters()) / 1e6
        for size in args.sizes:
            rng = np.random.default_rng(0)
            low = rng.random((size // 16, size // 16, 3))
            image = (np.kron(low, np.ones((16, 16, 1))) * 255).astype(np.uint8)
            x = torch.rand(1, 3, size, size)

            # the first predict fuses conv + BN, as deployed
            total = _timed(lambda y=yolo, i=image, s=size: _predict(y, i, s), args.runs, args.warmup)
            net = yolo.model
            with torch.inference_mode():
                forward = _timed(lambda net=net, x=x: net(x), args.runs, args.warmup)
            row = {
                "model": name,
                "size": size,
                "classes": args.classes,
                "params_M": params,
                "forward_ms": forward,
                "total_ms": total,
            }
            print(json.dumps(row), flush=True)
            if args.onnx_dir:
                exported = _onnx(yolo, size, args.onnx_dir)
                total = _timed(lambda e=exported, i=image, s=size: _predict(e, i, s), args.runs, args.warmup)
                onnx_row = {k: v for k, v in row.items() if k != "forward_ms"}
                print(json.dumps(onnx_row | {"model": f"{name} (onnx)", "total_ms": total}), flush=True)
    return 0


def _predict(yolo: YOLO, image: np.ndarray, size: int) -> None:
    yolo.predict(image, imgsz=size, device="cpu", verbose=False, retina_masks=True)


def _onnx(yolo: YOLO, size: int, folder: str) -> YOLO:
    """``yolo`` exported by ultralytics to ONNX at SIZE x SIZE, loaded back for its own ``predict``."""
    path = yolo.export(format="onnx", imgsz=size, device="cpu", verbose=False)
    target = Path(folder) / f"{Path(path).stem}-{size}-{time.monotonic_ns()}.onnx"
    Path(path).replace(target)
    return YOLO(str(target), task="segment")


if __name__ == "__main__":
    raise SystemExit(main())
