"""Which family should ``instseg demo`` train? Each candidate gets the demo's own recipe and budget on the
bundled 40/10-image DSB2018 subset, one after the other, and is scored on the 10 val images.

    python benchmarks/demo_families.py --minutes 5
"""

from __future__ import annotations

import argparse
import time

from instseg.demo import run_demo

CANDIDATES = [
    ("mask_rcnn", "nuclei"),
    ("solov2", "nuclei"),
    ("condinst", "nuclei"),
    ("yolact", "realtime_nuclei"),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=5.0)
    parser.add_argument("--out", default="runs/demo_families")
    parser.add_argument("--only", nargs="*", help="family names to run (default: all candidates)")
    args = parser.parse_args()
    rows = []
    for family, preset in CANDIDATES:
        if args.only and family not in args.only:
            continue
        started = time.perf_counter()
        out = f"{args.out}/{family}"
        demo = run_demo(out, args.minutes, "cpu", False, family, preset, pretrained=None).trained
        segm, boundary, bbox = (demo.metrics[k] for k in ("segm", "boundary", "bbox"))
        cells = [f"{family} `{preset}`", demo.steps, f"{segm['AP']:.3f}", f"{segm['AP50']:.3f}"]
        cells += [f"{boundary['AP']:.3f}", f"{bbox['AP']:.3f}", f"{demo.seconds_per_image:.2f}"]
        cells.append(f"{time.perf_counter() - started:.0f}")
        rows.append("| " + " | ".join(map(str, cells)) + " |")
        print(rows[-1], flush=True)
    print("| family | steps | mask AP | AP50 | Boundary AP | box AP | s/image | wall s |")
    print("|---|---|---|---|---|---|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
