"""Seconds per training step of one family and preset, for several variants timed in turn in one run.

A 30-minute benchmark's step count is set by what one step costs; this times
that step alone, on nuclei-like synthetic crops (the ``hard`` scene preset with
one class: 12-40 objects of radius 4-28 px in 256x256), with the benchmark's
batch of 2 and its optimiser. Variants are timed in turn, step after step, so
they share the machine's noise; their ratio to the first is what to read.

    python benchmarks/train_step.py condinst nuclei --variants "" "semantic_weight=1"
    python benchmarks/train_step.py condinst nuclei --variants "" --channels-last --profile
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import numpy as np
import torch
from torch import nn

from instseg.config import field_values
from instseg.data.synthetic import class_looks, preset, render_scene
from instseg.masks import masks_to_boxes
from instseg.models.build import build_model, model_config


def synthetic_batch(
    size: int, batch: int, seed: int
) -> tuple[list[torch.Tensor], list[dict[str, torch.Tensor]]]:
    cfg = preset("hard", classes=1, size=size)
    looks, rng = class_looks(cfg), np.random.default_rng(seed)
    images, targets = [], []
    for _ in range(batch):
        image, objects = render_scene(cfg, looks, rng)
        masks = torch.zeros((len(objects), size, size), dtype=torch.bool)
        for i, o in enumerate(objects):
            masks[i][o.window()] = torch.from_numpy(o.visible)
        images.append(torch.from_numpy(image).permute(2, 0, 1).float() / 255)
        labels = torch.ones(len(objects), dtype=torch.int64)
        targets.append({"boxes": masks_to_boxes(masks), "labels": labels, "masks": masks.to(torch.uint8)})
    return images, targets


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("family")
    parser.add_argument("preset")
    parser.add_argument(
        "--variants", nargs="+", default=[""], help='model fields, "k=v k=v"; "" = the preset'
    )
    parser.add_argument("--channels-last", action="store_true", help="add the first variant in channels-last")
    parser.add_argument("--steps", type=int, default=6, help="timed steps per variant, after one warm-up")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--profile", action="store_true", help="the first variant's top operators")
    args = parser.parse_args()
    torch.manual_seed(0)
    images, targets = synthetic_batch(args.size, 2, seed=0)
    runs: list[tuple[str, nn.Module, torch.optim.Optimizer]] = []
    variants = [(v, False) for v in args.variants] + (
        [(args.variants[0], True)] if args.channels_last else []
    )
    for text, channels_last in variants:
        model = build_model(
            args.family, model_config(args.family, args.preset, field_values(text.split())), 1
        ).train()
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
        name = (text or "preset") + (" (channels-last)" if channels_last else "")
        runs.append((name, model, torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.05)))

    def step(model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        loss = sum(model(images, targets).values())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    times: dict[str, list[float]] = {name: [] for name, _, _ in runs}
    for _, model, optimizer in runs:
        step(model, optimizer)
    for _ in range(args.steps):
        for name, model, optimizer in runs:
            start = time.perf_counter()
            step(model, optimizer)
            times[name].append(time.perf_counter() - start)
    print(
        f"{time.strftime('%Y-%m-%d %H:%M')}, {platform.machine()}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads; {args.family} {args.preset}, 2 synthetic {args.size}px crops"
    )
    base = statistics.median(times[runs[0][0]])
    for name, values in times.items():
        median = statistics.median(values)
        print(f"  {name}: {median:.2f} s/step (median of {len(values)}), {median / base:.2f}x")
    if args.profile:
        from torch.profiler import profile

        _, model, optimizer = runs[0]
        with profile() as prof:
            step(model, optimizer)
        total = sum(e.self_cpu_time_total for e in prof.key_averages())
        for event in sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)[:6]:
            print(f"  {event.key}: {100 * event.self_cpu_time_total / total:.1f}% of self CPU time")


if __name__ == "__main__":
    main()
