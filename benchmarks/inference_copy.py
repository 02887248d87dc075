"""Seconds to build the inference copy (deep copy + BatchNorm folding + channels-last) of a model.

python benchmarks/inference_copy.py yolact:realtime_nuclei mask_rcnn:nuclei mask2former:default
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from instseg.models.build import build_model, model_config
from instseg.models.fusion import inference_model


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="+", help="family:preset")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    for spec in args.models:
        name, preset = spec.split(":")
        model = build_model(name, model_config(name, preset), 1).eval()
        times = []
        for _ in range(args.runs):
            start = time.perf_counter()
            inference_model(model)
            times.append(time.perf_counter() - start)
        print(f"{spec}: {statistics.median(times) * 1000:.0f} ms (median of {args.runs})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
