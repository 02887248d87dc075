"""Peak memory of ``instseg predict`` on one large image with many objects, default settings.

A 4000x3000 image with ``--objects`` bright nuclei-like blobs on a dark, noisy background is written,
then ``instseg predict --model nuclei IMAGE`` runs in a child process; its peak resident set size
(``ru_maxrss``), its wall time and the instances it found are printed.

    python benchmarks/predict_memory.py --objects 300
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image


def blobs(width: int, height: int, count: int, seed: int = 0) -> np.ndarray:
    """Separate elliptic blobs of random size and brightness on a grid, as fluorescent nuclei look."""
    rng = np.random.default_rng(seed)
    image = rng.normal(20, 4, (height, width)).clip(0, 255)
    columns = int(np.ceil(np.sqrt(count * width / height)))
    rows = int(np.ceil(count / columns))
    cell_w, cell_h = width // columns, height // rows
    yy, xx = np.mgrid[-cell_h // 2 : cell_h // 2, -cell_w // 2 : cell_w // 2]
    for k in range(count):
        r, c = divmod(k, columns)
        ry, rx = rng.uniform(0.2, 0.35, 2) * min(cell_w, cell_h)
        inside = (yy / ry) ** 2 + (xx / rx) ** 2 <= 1
        y0, x0 = r * cell_h, c * cell_w
        patch = image[y0 : y0 + inside.shape[0], x0 : x0 + inside.shape[1]]
        patch[inside[: patch.shape[0], : patch.shape[1]]] = rng.uniform(120, 230)
    return np.repeat(image.astype(np.uint8)[..., None], 3, axis=2)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--objects", type=int, default=300)
    parser.add_argument("--width", type=int, default=4000)
    parser.add_argument("--height", type=int, default=3000)
    parser.add_argument("--model", default="nuclei")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        image = Path(tmp) / "large.png"
        Image.fromarray(blobs(args.width, args.height, args.objects)).save(image)
        out = Path(tmp) / "out"
        command = ["instseg", "predict", "--model", args.model, str(image), "--out", str(out)]
        started = time.perf_counter()
        subprocess.run([sys.executable, "-m", "instseg.cli", *command[1:]], check=True)
        seconds = time.perf_counter() - started
        peak_gib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20
        found = len(json.loads((out / "predictions.json").read_text()))
    print(f"\n{time.strftime('%Y-%m-%d')}, {platform.machine()}, {platform.processor() or 'cpu'}")
    print(f"`{' '.join(command[:-2])} <{args.width}x{args.height}, {args.objects} objects>`")
    print(f"peak RSS {peak_gib:.2f} GiB, {seconds:.1f} s, {found} instances")
    return 0


if __name__ == "__main__":
    sys.exit(main())
