"""CPU latency of every instseg family: batch 1, fixed threads, median of N runs after warm-up.

Each model is built for 80 classes with its input resized to exactly SIZE x SIZE
(min_size = max_size = SIZE, no fixed scale) and timed on a photo-like image
(smooth noise). Untrained weights give arbitrary detections, so the forward
pass (backbone + heads) and the postprocessing are timed apart: the forward
time is what a trained model costs too; the postprocessing time depends on
how many candidates pass the score threshold.

    python benchmarks/latency.py --sizes 512 640 --runs 20
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch
import torch.nn.functional as F

from instseg.models.build import FAMILIES, build_model, count_parameters, model_config

# (family, preset): the rows; every family registered in models/build.py gets its default preset.
EXTRA_ROWS = [("solov2", "light")]


def _image(size: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    low = torch.rand((1, 3, size // 16, size // 16), generator=g)
    return F.interpolate(low, size=(size, size), mode="bilinear", align_corners=False)[0]


def _timed(fn, runs: int, warmup: int) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def measure(name: str, preset: str, size: int, runs: int, warmup: int) -> dict[str, float]:
    cfg = model_config(name, preset, {"min_size": size, "max_size": size, "scale": None})
    model = build_model(name, cfg, 80).eval()
    image = _image(size)
    with torch.inference_mode():
        total = _timed(lambda: model([image]), runs, warmup)
        batch, _ = model.transform([image])
        forward = _timed(lambda: model.backbone(batch.tensors), runs, warmup)
    return {"total_ms": total, "backbone_fpn_ms": forward, "params_M": count_parameters(model) / 1e6}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[512, 640])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = [(name, "default") for name in FAMILIES] + EXTRA_ROWS
    print(
        f"{time.strftime('%Y-%m-%d %H:%M')}, {platform.machine()}, torch {torch.__version__}, "
        f"{args.threads} threads, batch 1, median of {args.runs} after {args.warmup} warm-up runs"
    )
    print("| model | input | params (M) | backbone+FPN ms | end-to-end ms (untrained) |")
    print("|---|---|---|---|---|")
    for size in args.sizes:
        for name, preset in rows:
            r = measure(name, preset, size, args.runs, args.warmup)
            print(
                f"| {name} `{preset}` | {size} | {r['params_M']:.1f} | {r['backbone_fpn_ms']:.0f} "
                f"| {r['total_ms']:.0f} |",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
