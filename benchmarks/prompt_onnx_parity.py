"""SAM's two ONNX graphs against the eager model on DSB2018 val: the same masks and the same interactive
metrics, and what each costs.

The checkpoint is exported with ``instseg export`` (``x.encoder.onnx`` and ``x.decoder.onnx``), then
on the first N val images, one after the other:

- per object (the 10 largest of each image): the first click of the interactive protocol (three
  readings, the best kept) and the object's box, given to both; the worst mask IoU between the two
  answers and the worst difference of predicted IoU;
- the interactive metrics (``instseg eval --prompts points``: mIoU after 1/3/5 clicks, NoC, box mIoU)
  of each, and their difference;
- ``set_image`` seconds per image and milliseconds per prompt, each.

    python benchmarks/prompt_onnx_parity.py --checkpoint runs/bench/sam_nuclei_s0/checkpoint --images 20
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import instseg
from instseg.data.coco import CocoIndex, resolve_source
from instseg.eval.interactive import coco_objects, evaluate_interactive, farthest_from_boundary, iou
from instseg.export.prompt_onnx import export_prompt_onnx
from instseg.prompt_predictor import PromptPredictor

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "dsb2018"


def prompts(truth: np.ndarray) -> list[dict]:
    ys, xs = np.nonzero(truth)
    box = [float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)]
    return [
        {"points": [farthest_from_boundary(truth)[0]], "multimask": True},
        {"box": box, "multimask": False},
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--images", type=int, default=20)
    parser.add_argument("--max-objects", type=int, default=10)
    parser.add_argument("--max-clicks", type=int, default=20)
    args = parser.parse_args()
    if not args.data.is_dir():
        print(f"{args.data}: DSB2018 not found (expected ../shared/data/dsb2018)", file=sys.stderr)
        return 2
    torch.set_num_threads(2)
    index = CocoIndex(resolve_source(args.data, "val"))
    index.images = index.images[: args.images]
    samples = list(coco_objects(index, args.max_objects))
    root = Path(tempfile.mkdtemp())
    started = time.perf_counter()
    graphs = export_prompt_onnx(args.checkpoint, root / "sam.onnx")
    export_s = time.perf_counter() - started
    predictors = {
        "eager": PromptPredictor.from_checkpoint(args.checkpoint, "cpu"),
        "onnx": instseg.load_prompts(graphs[0]),
    }
    embed_s = {k: 0.0 for k in predictors}
    prompt_s = {k: 0.0 for k in predictors}
    worst_iou, worst_score, calls, objects = 1.0, 0.0, 0, 0
    for image, truths in samples:
        for key, predictor in predictors.items():
            begin = time.perf_counter()
            predictor.set_image(image)
            embed_s[key] += time.perf_counter() - begin
        for truth in truths:
            objects += 1
            for prompt in prompts(np.asarray(truth, dtype=bool)):
                answers = {}
                for key, predictor in predictors.items():
                    begin = time.perf_counter()
                    answers[key] = predictor.predict(**prompt)
                    prompt_s[key] += time.perf_counter() - begin
                calls += 1
                a, b = answers["eager"], answers["onnx"]
                for m in range(len(a)):
                    worst_iou = min(worst_iou, iou(a.masks[m].numpy(), b.masks[m].numpy()))
                    worst_score = max(worst_score, abs(float(a.scores[m]) - float(b.scores[m])))
    reports = {
        key: evaluate_interactive(predictor, samples, args.max_clicks, progress=False)
        for key, predictor in predictors.items()
    }
    n = len(samples)
    print(f"{n} images, {objects} objects, {calls} prompts (a click and a box each); export {export_s:.0f} s")
    print(f"worst mask IoU eager/ONNX {worst_iou:.4f}, worst predicted-IoU difference {worst_score:.1e}")
    metrics = list(reports["eager"].metrics)
    print("| run | set_image s | ms/prompt | " + " | ".join(metrics) + " |")
    print("|---|---|---|" + "---|" * len(metrics))
    for key, report in reports.items():
        values = " | ".join(f"{report.metrics[m]:.3f}" for m in metrics)
        print(f"| {key} | {embed_s[key] / n:.3f} | {1000 * prompt_s[key] / calls:.1f} | {values} |")
    largest = max(abs(reports["eager"].metrics[m] - reports["onnx"].metrics[m]) for m in metrics)
    print(f"largest metric difference: {largest:.4f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
