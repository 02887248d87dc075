"""Synthetic data generation speed: images per second for each preset at 256x256, files included.

python benchmarks/synth_speed.py --images 200
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

from instseg.data.synthetic import PRESETS, generate, preset


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--size", type=int, default=256)
    args = parser.parse_args()
    print(f"{time.strftime('%Y-%m-%d %H:%M')}, {platform.machine()}, Python {platform.python_version()}")
    print("| preset | images | size | seconds | images/s | instances/image |")
    print("|---|---|---|---|---|---|")
    for name in PRESETS:
        if name == "tiny":
            continue
        cfg = preset(name, train_images=args.images, val_images=0, size=args.size)
        with tempfile.TemporaryDirectory() as tmp:
            start = time.perf_counter()
            written = generate(cfg, tmp)
            seconds = time.perf_counter() - start
            n = len(json.loads(Path(written["train"]).read_text())["annotations"])
        rate, per_image = args.images / seconds, n / args.images
        print(f"| {name} | {args.images} | {args.size} | {seconds:.2f} | {rate:.0f} | {per_image:.1f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
