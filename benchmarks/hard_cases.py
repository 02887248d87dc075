"""Hard cases: every family on the ``hard`` preset for the same budget, broken down by occlusion and thinness.

The ``hard`` preset (8 classes, 12-40 objects of 4-28 px, wires, 40%
occlusion, touching objects, rough edges, clutter) is generated under
``runs/data/hard`` unless ``--data`` names it. Each family (its small-object
``nuclei`` preset, at the images' own scale) trains for ``--budget-min``
minutes, one after the other, and is scored with the
occlusion and thinness breakdowns of ``instseg eval`` (see
``instseg.eval.breakdown``): mask AP, Boundary AP, AP per occlusion bin and AP
on thin objects (width/length < 0.25: the wires).

    python benchmarks/hard_cases.py --budget-min 10
    python benchmarks/hard_cases.py --models mask_rcnn solov2 --budget-min 10 --seed 1
    python benchmarks/hard_cases.py --models solov2 --set point_refine=true

``--rescore CKPT ...`` scores existing checkpoints instead (e.g. the DSB2018
ones, with ``--data ../shared/data/dsb2018 --max-dets 500``): nuclei have no
occlusion field, so their table breaks down by thinness and size. With
``--set point_refine=false`` a refining checkpoint is scored without its point
head, the same weights otherwise: the refinement's own effect.
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

from synthetic_budget import train_for_budget

import instseg
from instseg.config import field_values
from instseg.data.synthetic import generate, preset

FAMILIES = ("mask_rcnn", "yolact", "solov2", "condinst", "mask2former")
# the small-object presets (P2 levels, small anchors and scale ranges), at the images' own scale: the
# objects here are 8-56 px across, the nuclei presets' 7-40 px after their x1.5
PRESET = "nuclei"


def score(
    checkpoint: str | Path,
    data: str,
    breakdowns: tuple[str, ...],
    out: Path,
    overrides: dict | None = None,
    max_dets: int = 100,
) -> dict:
    model = instseg.load(checkpoint, **(overrides or {}))
    ev = instseg.evaluate(
        model, data, out=out, breakdowns=breakdowns, matching=False, max_dets=(1, 10, max_dets)
    )
    row = {
        "AP": ev.report.metrics["segm"]["AP"],
        "Boundary AP": ev.report.metrics["boundary"]["AP"],
        "s/image": ev.report.seconds_per_image,
    }
    for attribute, rows in ev.report.breakdowns.items():
        for r in rows:
            row[f"{attribute} {r['bin']}"] = r["segm"]
            row[f"{attribute} {r['bin']} boundary"] = r["boundary"]
    return row


def train(args: argparse.Namespace, model: str) -> Path:
    options = {"scale": args.scale, **field_values(args.set)}
    result = train_for_budget(
        model,
        args.data,
        run_folder(args, model),
        args.budget_min,
        preset=PRESET,
        model_options=options,
        lr=args.lr,
        seed=args.seed,
    )
    print(f"{model}: {result.steps} steps")
    return Path(result.checkpoint)


def run_folder(args: argparse.Namespace, name: str) -> Path:
    """Where a model trained, or a checkpoint is scored, with ``--set``'s fields."""
    return Path(args.out) / "-".join([name, *args.set])


def table(rows: dict[str, dict], columns: list[str]) -> str:
    lines = ["| model | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for name, row in rows.items():
        cells = [f"{row[c]:.3f}" if row.get(c, -1) >= 0 else "-" for c in columns]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models", nargs="+", choices=FAMILIES, default=list(FAMILIES))
    parser.add_argument("--data", default="runs/data/hard")
    parser.add_argument("--budget-min", type=float, default=10.0)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--scale", type=float, default=1.0, help="resize factor (1: the preset's 256 px)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--set",
        nargs="*",
        default=[],
        help="model fields for every family, e.g. point_refine=true; with --rescore, inference "
        "overrides, e.g. point_refine=false to score a refining checkpoint without its head",
    )
    parser.add_argument("--max-dets", type=int, default=100, help="detections scored per image")
    parser.add_argument("--rescore", nargs="+", help="score these checkpoints instead of training")
    parser.add_argument("--out", default="runs/bench/hard_cases")
    args = parser.parse_args()
    rows: dict[str, dict] = {}
    if args.rescore:
        breakdowns = ("thinness", "size")
        for checkpoint in args.rescore:
            name = " ".join([checkpoint, *args.set])
            out = run_folder(args, Path(checkpoint).parent.name)
            rows[name] = score(checkpoint, args.data, breakdowns, out, field_values(args.set), args.max_dets)
    else:
        breakdowns = ("occlusion", "thinness")
        if not (Path(args.data) / "annotations" / "instances_train.json").is_file():
            generate(preset("hard"), args.data, progress=True)
        for model in args.models:
            checkpoint = train(args, model)
            name = " ".join([model, *args.set])
            eval_out = run_folder(args, model) / "eval"
            rows[name] = score(checkpoint, args.data, breakdowns, eval_out, max_dets=args.max_dets)
    print(
        f"\n{time.strftime('%Y-%m-%d')}, {platform.machine()}, seed {args.seed}, {args.budget_min:g} min each"
    )
    print(f"`python {' '.join(sys.argv)}`\n")
    columns = ["AP", "Boundary AP"]
    columns += [c for c in next(iter(rows.values())) if " " in c and c not in columns and "boundary" not in c]
    print(table(rows, [*columns, "s/image"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
