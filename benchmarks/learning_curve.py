"""Evaluate every snapshot of a training run on val and plot mask AP against training time.

    python benchmarks/learning_curve.py runs/bench/align --data ../shared/data/dsb2018

Snapshots come from training with ``--keep-every N``; the run's metrics.jsonl
gives the training seconds at each step.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

import instseg


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path)
    parser.add_argument(
        "--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared/data/dsb2018"
    )
    parser.add_argument("--max-dets", type=int, nargs="+", default=[1, 10, 500])
    args = parser.parse_args()
    rows = [json.loads(x) for x in (args.run / "metrics.jsonl").read_text().splitlines() if x.strip()]
    seconds = {r["step"]: r["time"] for r in rows if "loss" in r}
    points = []
    for snap in sorted((args.run / "snapshots").glob("step_*")):
        step = int(snap.name.split("_")[1])
        ev = instseg.evaluate(snap, args.data, max_dets=args.max_dets, boundary=False, progress=False)
        logged = [s for s in seconds if s <= step]
        t = seconds[max(logged)] if logged else 0.0
        points.append(
            {
                "step": step,
                "train_s": t,
                "mask_AP": ev.metrics["segm"]["AP"],
                "mask_AP50": ev.metrics["segm"]["AP50"],
            }
        )
        print(json.dumps(points[-1]), flush=True)
    if not points:
        print(f"{args.run}/snapshots: no snapshots (train with --keep-every N)", file=sys.stderr)
        return 2
    (args.run / "learning_curve.json").write_text(json.dumps(points, indent=2))
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot([p["train_s"] / 60 for p in points], [p["mask_AP"] for p in points], "o-", label="mask AP")
    ax.plot([p["train_s"] / 60 for p in points], [p["mask_AP50"] for p in points], "s--", label="mask AP50")
    ax.set_xlabel("training minutes")
    ax.set_ylabel("DSB2018 val")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(args.run / "learning_curve.png", dpi=110)
    print(f"learning curve: {args.run / 'learning_curve.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
