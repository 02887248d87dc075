"""Long tail: the same budget for a baseline, repeat-factor sampling, and RFS + federated training.

On the synthetic ``longtail`` preset (40 classes, rare ones in 1-10 training
images, LVIS fields), one family is trained for ``--budget-min`` minutes per
variant, one run after the other, then scored LVIS-federated at 300
detections per image and a score threshold of 1e-4 (LVIS's conventions):
AP, APr, APc, APf, and how many rare classes reach an AP above 0.

    python benchmarks/long_tail.py --model condinst --budget-min 10
    python benchmarks/long_tail.py --model mask_rcnn --budget-min 10 --variants baseline rfs

Variants: ``baseline``; ``rfs`` (``repeat_threshold``); ``rfs_federated``
(RFS + the federated loss: sigmoid families only). ``--data``: an LVIS-style
dataset folder (default: the preset, generated under ``runs/data/longtail``).
"""

from __future__ import annotations

import argparse
import dataclasses
import platform
import sys
import time
from pathlib import Path

import instseg
from instseg.data.synthetic import generate, preset
from instseg.models.build import family

VARIANTS = {
    "baseline": {},
    "rfs": {"repeat_threshold": None},  # filled from --repeat-threshold
    "rfs_federated": {"repeat_threshold": None, "federated_classes": None},
}
LVIS_INFERENCE = {"detections_per_image": 300, "score_threshold": 1e-4}


def run(args: argparse.Namespace, variant: str) -> dict:
    fields = {k: v for k, v in VARIANTS[variant].items()}
    if "repeat_threshold" in fields:
        fields["repeat_threshold"] = args.repeat_threshold
    model_options = {}
    if "federated_classes" in fields:
        model_options["federated_classes"] = fields.pop("federated_classes") or args.federated_classes
    out = Path(args.out) / f"{args.model}-{variant}"
    started = time.perf_counter()
    result = instseg.train(
        args.model,
        args.data,
        preset=args.preset,
        model_options=model_options,
        out=str(out),
        overwrite=True,
        time_budget_s=args.budget_min * 60,
        steps=10**9,
        batch_size=4,
        crop_size=None,
        lr=args.lr,
        warmup_steps=50,
        eval_max_dets=(300,),
        checkpoint_every=200,
        seed=args.seed,
        **fields,
    )
    fields_of = {f.name for f in dataclasses.fields(family(args.model).config)}
    predictor = instseg.load(result.checkpoint, **{k: v for k, v in LVIS_INFERENCE.items() if k in fields_of})
    ev = instseg.evaluate(predictor, args.data, max_dets=[300], out=out / "eval")
    segm = ev.report.coco["segm"]
    rare = [row for row in segm.per_class if row.get("frequency") == "r" and row["gt"] > 0]
    return {
        "variant": variant,
        "AP": segm.stats["AP"],
        "APr": segm.stats["APr"],
        "APc": segm.stats["APc"],
        "APf": segm.stats["APf"],
        "rare_with_AP": sum(1 for row in rare if row["AP"] > 0),
        "rare_scored": len(rare),
        "steps": result.steps,
        "minutes": round((time.perf_counter() - started) / 60, 1),
    }


def index_path(data: str) -> Path:
    return Path(data) / "annotations" / "instances_train.json"


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="condinst")
    parser.add_argument("--preset", default="default")
    parser.add_argument("--data", default="runs/data/longtail")
    parser.add_argument("--budget-min", type=float, default=10.0)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--repeat-threshold", type=float, default=0.05)
    parser.add_argument("--federated-classes", type=int, default=20)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="runs/bench/long_tail")
    args = parser.parse_args()
    if not index_path(args.data).is_file():
        generate(preset("longtail"), args.data, progress=True)
    rows = [run(args, variant) for variant in args.variants]
    print(
        f"\n{time.strftime('%Y-%m-%d')}, {platform.machine()}, {args.model} {args.preset}, seed {args.seed}"
    )
    print(f"`python benchmarks/long_tail.py --model {args.model} --budget-min {args.budget_min:g}`\n")
    print("| variant | AP | APr | APc | APf | rare classes with AP > 0 | steps |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['variant']} | {r['AP']:.3f} | {r['APr']:.3f} | {r['APc']:.3f} | {r['APf']:.3f} "
            f"| {r['rare_with_AP']} of {r['rare_scored']} | {r['steps']} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
