"""Training throughput on this machine: one process against several, and fp32 against bf16.

Each row trains the same model for ``--steps`` steps on the same data with the
same total batch (``--batch-size`` images a step, split over the processes)
and the same total CPU threads (``--threads``, split over the processes), one
row after the other. The rate is the steady state, read from rank 0's
``metrics.jsonl``: images of all processes together per second of training
from step ``--skip`` to the end, so start-up and ``torch.compile``'s first
compilation are left out (the compile time is printed apart).

    python benchmarks/scale.py --model yolact --preset nuclei --steps 60

``--data``: a COCO JSON of training images (default: the bundled DSB2018 sample);
a JSON file, not a dataset folder, so no validation runs between rows.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from instseg.demo import demo_data


def train_rate(
    args: argparse.Namespace, out: Path, processes: int, precision: str, compile_: bool
) -> tuple[float, float]:
    """(steady-state images/s, seconds to step ``--skip``) of one run."""
    threads = max(1, args.threads // processes)
    command = [
        sys.executable, "-m", "instseg", "train",
        "--model", args.model, "--preset", args.preset, "--data", args.data,
        "--steps", str(args.steps), "--batch-size", str(args.batch_size // processes),
        "--precision", precision, "--crop-size", str(args.crop_size), "--log-every", "1",
        "--workers", "0", "--precise-bn-batches", "0", "--checkpoint-every", "0",
        "--warmup-steps", "0", "--out", str(out), "--overwrite", "--nproc", str(processes),
    ]  # fmt: skip
    if compile_:
        command.append("--compile")
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    subprocess.run(command, check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    times = {r["step"]: r["time"] for r in map(json.loads, (out / "metrics.jsonl").open()) if "loss" in r}
    images = (args.steps - args.skip) * args.batch_size
    return images / (times[args.steps] - times[args.skip]), times[args.skip]


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="yolact")
    parser.add_argument("--preset", default="nuclei")
    parser.add_argument("--data", default=str(demo_data() / "annotations" / "instances_train.json"))
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--batch-size", type=int, default=4, help="images a step, all processes together")
    parser.add_argument("--crop-size", type=int, default=256)
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--skip", type=int, default=10, help="steps left out of the rate (start-up)")
    args = parser.parse_args()
    rows = [(1, "fp32", False), (args.processes, "fp32", False), (1, "bf16", False), (1, "fp32", True)]
    rates = {}
    with tempfile.TemporaryDirectory() as tmp:
        for row in rows:
            rates[row] = train_rate(args, Path(tmp) / "run", *row)
            print(row, f"{rates[row][0]:.3f} images/s, {rates[row][1]:.1f} s to step {args.skip}", flush=True)
    base = rates[1, "fp32", False][0]
    print(f"\n{time.strftime('%Y-%m-%d')}, {platform.machine()}, {args.threads} threads in all")
    print(f"`python benchmarks/scale.py --model {args.model} --preset {args.preset} --steps {args.steps}`\n")
    print(
        "| processes x threads | precision | compiled | images/s | vs 1 process fp32 "
        f"| s to step {args.skip} |"
    )
    print("|---|---|---|---|---|---|")
    for (processes, precision, compiled), (rate, first) in rates.items():
        threads = max(1, args.threads // processes)
        shown = "backbone" if compiled else "no"
        print(
            f"| {processes} x {threads} | {precision} | {shown} | {rate:.3f} | {rate / base:.2f}x "
            f"| {first:.1f} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
