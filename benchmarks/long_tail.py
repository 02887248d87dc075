"""Long tail: the same budget for a baseline, repeat-factor sampling, RFS + a long-tail loss or copy-paste.

On the synthetic ``longtail`` preset (40 classes, rare ones in 1-10 training
images, LVIS fields), one family is trained for ``--budget-min`` minutes per
variant, one run after the other, then scored LVIS-federated at 300
detections per image and a score threshold of 1e-4 (LVIS's conventions):
AP, APr, APc, APf, and how many rare classes reach an AP above 0.

    python benchmarks/long_tail.py --model condinst --budget-min 10
    python benchmarks/long_tail.py --model mask_rcnn --preset nuclei --budget-min 10

Variants: ``baseline``; ``rfs`` (``repeat_threshold``); ``rfs_federated`` (RFS
+ the federated loss) and ``rfs_equalized`` (RFS + the equalized focal loss),
for the FCOS families' sigmoid classifiers; ``rfs_seesaw`` (RFS + Seesaw on a
cosine classifier: the softmax classifiers of Mask R-CNN and Mask2Former);
``rfs_retrained`` (decoupled classifier re-training: RFS for the budget less
``--retrain-min``, then those minutes train only the class layers at the
larger ``--retrain-threshold``, every other weight frozen; same total budget);
``copy_paste`` (class-balanced copy-paste: each image, with chance
``--copy-paste``, gets up to ``--copy-paste-objects`` objects of other
training images, every class as likely), ``copy_paste_unbalanced`` (objects
drawn as they come, the paper's) and ``rfs_copy_paste`` (balanced, with RFS).
``--data``: an LVIS-style dataset folder (default: the preset, generated under
``runs/data/longtail``).
"""

from __future__ import annotations

import argparse
import dataclasses
import platform
import sys
import time
from pathlib import Path

from synthetic_budget import train_for_budget

import instseg
from instseg.data.synthetic import generate, preset
from instseg.models.build import family

# what each variant adds: repeat-factor sampling (a training field), a model field
VARIANTS: dict[str, dict] = {
    "baseline": {},
    "rfs": {"repeat": True},
    "rfs_federated": {"repeat": True, "model": {"federated_classes": None}},  # filled from the flag
    "rfs_equalized": {"repeat": True, "model": {"class_loss": "equalized_focal"}},
    "rfs_seesaw": {"repeat": True, "model": {"class_loss": "seesaw"}},
    "rfs_retrained": {"repeat": True, "retrain": True},
    "copy_paste": {"train": {"copy_paste_balance": 1.0}},  # the chance and count: from the flags
    "copy_paste_unbalanced": {"train": {"copy_paste_balance": 0.0}},
    "rfs_copy_paste": {"repeat": True, "train": {"copy_paste_balance": 1.0}},
}
SIGMOID_ONLY = ("rfs_federated", "rfs_equalized")
SOFTMAX_FAMILIES = ("mask_rcnn", "mask2former")
LVIS_INFERENCE = {"detections_per_image": 300, "score_threshold": 1e-4}


def run(args: argparse.Namespace, variant: str) -> dict:
    spec = VARIANTS[variant]
    fields = {"repeat_threshold": args.repeat_threshold} if spec.get("repeat") else {}
    if "train" in spec:
        fields.update(spec["train"], copy_paste=args.copy_paste, copy_paste_objects=args.copy_paste_objects)
    model_options: dict = {"scale": args.scale, **spec.get("model", {})}
    if "federated_classes" in model_options:
        model_options["federated_classes"] = args.federated_classes
    out = Path(args.out) / f"{args.model}-{variant}"
    started = time.perf_counter()
    retrain_min = args.retrain_min if spec.get("retrain") else 0.0
    result = train_for_budget(
        args.model,
        args.data,
        out,
        args.budget_min - retrain_min,
        preset=args.preset,
        model_options=model_options,
        lr=args.lr,
        eval_max_dets=(300,),
        seed=args.seed,
        **fields,
    )
    steps = str(result.steps)
    if retrain_min:
        result = train_for_budget(
            args.model,
            args.data,
            out / "classifier",
            retrain_min,
            init=str(result.checkpoint),
            train_only="classifier",
            repeat_threshold=args.retrain_threshold,
            lr=args.lr,
            warmup_steps=20,
            eval_max_dets=(300,),
            seed=args.seed,
        )
        steps += f" + {result.steps}"
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
        "rare_above": sum(1 for row in rare if row["AP"] >= 0.1),
        "rare_scored": len(rare),
        "steps": steps,
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
    parser.add_argument(
        "--variants",
        nargs="+",
        choices=list(VARIANTS),
        help="default: baseline, rfs, rfs + the family's loss, rfs_copy_paste",
    )
    parser.add_argument("--repeat-threshold", type=float, default=0.05)
    parser.add_argument("--retrain-min", type=float, default=4.0, help="rfs_retrained: minutes of the budget")
    parser.add_argument("--retrain-threshold", type=float, default=1.0)
    parser.add_argument("--copy-paste", type=float, default=1.0, help="copy_paste variants: the chance")
    parser.add_argument("--copy-paste-objects", type=int, default=3)
    parser.add_argument("--federated-classes", type=int, default=20)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument(
        "--scale", type=float, default=1.0, help="resize factor (the preset's 256 px images: 1, native)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="runs/bench/long_tail")
    args = parser.parse_args()
    if not args.variants:
        last = "rfs_seesaw" if args.model in SOFTMAX_FAMILIES else "rfs_federated"
        args.variants = ["baseline", "rfs", last, "rfs_copy_paste"]
    softmax = args.model in SOFTMAX_FAMILIES
    for variant in args.variants:
        if (variant in SIGMOID_ONLY and softmax) or (variant == "rfs_seesaw" and not softmax):
            kind = "sigmoid" if variant in SIGMOID_ONLY else "softmax"
            parser.error(f"{variant} is for {kind} classifiers")
    if "rfs_retrained" in args.variants and not 0 < args.retrain_min < args.budget_min:
        parser.error("--retrain-min must be above 0 and below --budget-min")
    if not index_path(args.data).is_file():
        generate(preset("longtail"), args.data, progress=True)
    rows = [run(args, variant) for variant in args.variants]
    print(
        f"\n{time.strftime('%Y-%m-%d')}, {platform.machine()}, {args.model} {args.preset}, seed {args.seed}"
    )
    command = f"python benchmarks/long_tail.py --model {args.model} --preset {args.preset}"
    command += f" --budget-min {args.budget_min:g} --seed {args.seed}"
    command += f" --repeat-threshold {args.repeat_threshold:g}"
    if "rfs_retrained" in args.variants:
        command += f" --retrain-min {args.retrain_min:g} --retrain-threshold {args.retrain_threshold:g}"
    if any("copy_paste" in v for v in args.variants):
        command += f" --copy-paste {args.copy_paste:g} --copy-paste-objects {args.copy_paste_objects}"
    print(f"`{command} --variants {' '.join(args.variants)}`\n")
    print("| variant | AP | APr | APc | APf | rare classes with AP > 0 | AP >= 0.1 | steps |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['variant']} | {r['AP']:.3f} | {r['APr']:.3f} | {r['APc']:.3f} | {r['APf']:.3f} "
            f"| {r['rare_with_AP']} of {r['rare_scored']} | {r['rare_above']} | {r['steps']} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
