"""Are a refactor's predictions the same as before it? Train one short checkpoint per family, save what
it predicts on DSB2018 val images, and compare two such saves tensor by tensor.

Only the public API is used (``instseg.train``, ``instseg.load``, ``Predictor.predict``), so the same
script runs on the code before a change and after it:

    python benchmarks/seam_identity.py train --out runs/identity          # before the change
    python benchmarks/seam_identity.py save runs/identity before          # before the change
    python benchmarks/seam_identity.py save runs/identity after           # after the change
    python benchmarks/seam_identity.py compare runs/identity before after

``compare`` prints, per family, whether boxes, labels, scores and masks are equal to the bit, and
otherwise the largest difference.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

import instseg
from instseg.config import field_values
from instseg.data.coco import CocoIndex, resolve_source

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "dsb2018"
RUNS = {
    "mask_rcnn": "nuclei",
    "solov2": "nuclei",
    "condinst": "nuclei",
    "yolact": "realtime_nuclei",
    "mask2former": "nuclei",
}
FIELDS = ("boxes", "labels", "scores", "masks")


def val_files(data: Path, count: int) -> list[Path]:
    index = CocoIndex(resolve_source(data, "val"))
    return [index.image_path(info) for info in index.images[:count]]


def train_all(args: argparse.Namespace) -> None:
    for family, preset in RUNS.items():
        if args.families and family not in args.families:
            continue
        instseg.train(
            family,
            args.data / "annotations" / "instances_train.json",
            preset=preset,
            images=str(args.data / "train"),
            out=str(args.out / family),
            overwrite=True,
            time_budget_s=args.seconds,
            steps=100000,
            batch_size=2,
            crop_size=256,
            precise_bn_batches=20,
            warmup_steps=10,
            lr=1e-3,
            checkpoint_every=0,
            seed=0,
        )


def save(args: argparse.Namespace) -> None:
    files = val_files(args.data, args.images)
    saved = {}
    for family in args.families or RUNS:
        predictor = instseg.load(args.out / family / "checkpoint", device="cpu", **field_values(args.set))
        outputs = predictor.predict(files)
        saved[family] = [{k: getattr(o, k) for k in FIELDS} for o in outputs]
        print(family, "detections per image:", [len(o) for o in outputs])
    torch.save(saved, args.out / f"{args.name}.pt")


def compare(args: argparse.Namespace) -> None:
    a = torch.load(args.out / f"{args.a}.pt", weights_only=True)
    b = torch.load(args.out / f"{args.b}.pt", weights_only=True)
    for family in a:
        lines = []
        for i, (x, y) in enumerate(zip(a[family], b[family], strict=True)):
            for k in FIELDS:
                if x[k].shape != y[k].shape:
                    lines.append(f"image {i} {k}: shape {tuple(x[k].shape)} vs {tuple(y[k].shape)}")
                elif not torch.equal(x[k], y[k]):
                    diff = (x[k].double() - y[k].double()).abs().max().item()
                    lines.append(f"image {i} {k}: max difference {diff:.3g}")
        count = sum(len(o["labels"]) for o in a[family])
        verdict = "bit-identical" if not lines else "DIFFERENT"
        print(f"{family}: {verdict} ({len(a[family])} images, {count} detections)")
        for line in lines[:10]:
            print("   ", line)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    sub = parser.add_subparsers(dest="command", required=True)
    tr = sub.add_parser("train")
    tr.add_argument("--out", type=Path, required=True)
    tr.add_argument("--seconds", type=float, default=120.0, help="training budget per family")
    tr.add_argument("--families", nargs="*", help="only these (default: all)")
    sv = sub.add_parser("save")
    sv.add_argument("out", type=Path)
    sv.add_argument("name")
    sv.add_argument("--images", type=int, default=10)
    sv.add_argument("--families", nargs="*", help="only these (default: all)")
    sv.add_argument("--set", nargs="*", default=[], metavar="FIELD=VALUE", help="model config overrides")
    cp = sub.add_parser("compare")
    cp.add_argument("out", type=Path)
    cp.add_argument("a")
    cp.add_argument("b")
    args = parser.parse_args()
    {"train": train_all, "save": save, "compare": compare}[args.command](args)


if __name__ == "__main__":
    main()
