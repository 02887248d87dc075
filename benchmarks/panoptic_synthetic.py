"""Mask2Former's panoptic and semantic readings measured: the synthetic ``panoptic`` preset, PQ and mIoU.

The preset (3 thing classes on a background split into 3 stuff classes) is
generated under ``runs/data/panoptic`` unless ``--data`` names it. Mask2Former
trains on it for ``--budget-min`` minutes with the synthetic benchmarks'
recipe (stuff regions are one segment per class and image, as the paper's
universal training takes them), then val is scored three ways: PQ/SQ/RQ
(``instseg eval --task panoptic``), mIoU (``--task semantic``) and instance
mask AP, with the per-class tables.

    python benchmarks/panoptic_synthetic.py --budget-min 15
    python benchmarks/panoptic_synthetic.py --budget-min 15 --set query_init=learned
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

from synthetic_budget import train_for_budget

import instseg
from instseg.config import field_values
from instseg.data.coco import CocoIndex, resolve_source
from instseg.data.synthetic import generate, preset
from instseg.engine.dense_evaluation import evaluate_dense, format_dense


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("runs/data/panoptic"))
    parser.add_argument("--preset", default="light", help="Mask2Former preset")
    parser.add_argument("--set", nargs="*", default=[], help="model config overrides, key=value")
    parser.add_argument("--budget-min", type=float, default=15.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("runs/bench/panoptic"))
    args = parser.parse_args()
    if not (args.data / "annotations" / "instances_val.json").is_file():
        generate(preset("panoptic"), args.data, progress=True)
    model_options = {"scale": 1.0, **field_values(args.set)}
    started = time.strftime("%Y-%m-%d %H:%M")
    result = train_for_budget(
        "mask2former",
        args.data,
        args.out,
        args.budget_min,
        preset=args.preset,
        model_options=model_options,
        seed=args.seed,
    )
    predictor = instseg.load(result.checkpoint)
    index = CocoIndex(resolve_source(args.data, "val"), keep_crowd=True)
    row = {"date": started, "machine": platform.processor() or platform.machine(), "args": vars(args)}
    row["mask_AP"] = result.metrics["segm"]["AP"]
    for task in ("panoptic", "semantic"):
        summary = evaluate_dense(predictor.model, predictor.categories, index, task, predictor.device)
        print(f"\n{task} ({args.out})\n{format_dense(summary, task)}")
        row[task] = summary
    print(f"\ninstance mask AP {row['mask_AP']:.4f}")
    (args.out / "panoptic_benchmark.json").write_text(json.dumps(row, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
