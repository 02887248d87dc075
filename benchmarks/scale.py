"""Training throughput on this machine: one process against several, and fp32 against bf16.

Each row trains the same model for ``--steps`` steps on the same data with the
same total batch (``--batch-size`` images a step, split over the processes)
and the same total CPU threads (``--threads``, split over the processes), one
row after the other, and reads ``train_images_per_s`` from the run's
``train_summary.json`` (training time only, all processes' images together).

    python benchmarks/scale.py --model yolact --preset nuclei --steps 40

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


def train_rate(args: argparse.Namespace, out: Path, processes: int, precision: str) -> float:
    threads = max(1, args.threads // processes)
    command = [
        sys.executable, "-m", "instseg", "train",
        "--model", args.model, "--preset", args.preset, "--data", args.data,
        "--steps", str(args.steps), "--batch-size", str(args.batch_size // processes),
        "--precision", precision, "--crop-size", str(args.crop_size),
        "--workers", "0", "--precise-bn-batches", "0", "--checkpoint-every", "0",
        "--warmup-steps", "0", "--out", str(out), "--overwrite", "--nproc", str(processes),
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    subprocess.run(command, check=True, env=env, stdout=subprocess.DEVNULL)
    return json.loads((out / "train_summary.json").read_text())["train_images_per_s"]


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
    args = parser.parse_args()
    rows = [(1, "fp32"), (args.processes, "fp32"), (1, "bf16")]
    rates = {}
    with tempfile.TemporaryDirectory() as tmp:
        for processes, precision in rows:
            started = time.perf_counter()
            rates[processes, precision] = train_rate(args, Path(tmp) / "run", processes, precision)
            print(f"{processes} process(es), {precision}: {rates[processes, precision]:.3f} images/s "
                  f"({time.perf_counter() - started:.0f} s with start-up)", flush=True)  # fmt: skip
    base = rates[1, "fp32"]
    print(f"\n{time.strftime('%Y-%m-%d')}, {platform.machine()}, {args.threads} threads in all")
    print(f"`python benchmarks/scale.py --model {args.model} --preset {args.preset} --steps {args.steps}`\n")
    print("| processes x threads | precision | images/s | vs 1 process fp32 |")
    print("|---|---|---|---|")
    for (processes, precision), rate in rates.items():
        threads = max(1, args.threads // processes)
        print(f"| {processes} x {threads} | {precision} | {rate:.3f} | {rate / base:.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
