"""Evaluation speed and memory: instseg against pycocotools and bare faster-coco-eval, in one run.

The evaluation is made from real COCO masks (coco_tiny, 160 images): the images
are repeated under new ids until there are ``--images`` of them, and every
ground-truth mask gets shifted, dilated or eroded copies with random scores and
sometimes a wrong class, plus pure false positives moved to another place.
Each engine runs in a forked child, so its peak RSS is its own; the stats of
all engines are checked to agree before any time is printed.

    python benchmarks/eval_speed.py --images 2000 --dets-per-gt 5
"""

from __future__ import annotations

import argparse
import copy
import json
import multiprocessing as mp
import platform
import resource
import sys
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pycocotools.mask as mask_utils

from instseg.data.coco import to_rle

ROOT = Path(__file__).resolve().parents[1]
COCO_TINY = ROOT.parent / "shared" / "data" / "coco_tiny" / "annotations"


def _variants(mask: np.ndarray, rng: np.random.Generator, k: int) -> list[dict[str, Any]]:
    """``k`` perturbed copies of one mask, as compressed RLE."""
    out = []
    h, w = mask.shape
    for i in range(k):
        m = mask
        if i % 3 == 1:
            m = cv2.dilate(m, np.ones((3, 3), np.uint8), iterations=int(rng.integers(1, 4)))
        elif i % 3 == 2:
            m = cv2.erode(m, np.ones((3, 3), np.uint8), iterations=int(rng.integers(1, 3)))
        shift = rng.integers(-6, 7, 2) if i < k - 1 else rng.integers(-h // 3, h // 3 + 1, 2)  # last: an FP
        m = np.roll(np.roll(m, int(shift[0]), 0), int(shift[1]), 1)
        if m.any():
            rle = mask_utils.encode(np.asfortranarray(m))
            out.append({"size": [h, w], "counts": rle["counts"].decode()})
    return out


def build(n_images: int, dets_per_gt: int, seed: int = 0) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    rng = np.random.default_rng(seed)
    sources = [json.loads((COCO_TINY / f"instances_{s}2017.json").read_text()) for s in ("val", "train")]
    categories = sources[0]["categories"]
    cat_ids = [c["id"] for c in categories]
    base_images, base_anns = [], []
    for src in sources:
        base_images += src["images"]
        base_anns += src["annotations"]
    by_image: dict[int, list[dict[str, Any]]] = {}
    for a in base_anns:
        by_image.setdefault(a["image_id"], []).append(a)
    pool: dict[int, list[dict[str, Any]]] = {}  # annotation id -> perturbed RLEs
    images_info = {im["id"]: im for im in base_images}
    for a in base_anns:
        if a.get("iscrowd"):
            continue
        im = images_info[a["image_id"]]
        rle = to_rle(a["segmentation"], im["height"], im["width"])
        if rle is None:
            continue
        pool[a["id"]] = _variants(mask_utils.decode(rle), rng, dets_per_gt + 2)
    gt = {"images": [], "annotations": [], "categories": categories}
    results: list[dict[str, Any]] = []
    ann_id = 0
    for new_id in range(1, n_images + 1):
        im = base_images[(new_id - 1) % len(base_images)]
        gt["images"].append({**im, "id": new_id})
        for a in by_image.get(im["id"], []):
            ann_id += 1
            gt["annotations"].append({**a, "id": ann_id, "image_id": new_id})
            variants = pool.get(a["id"], [])
            if not variants:
                continue
            for j in rng.choice(len(variants), size=min(dets_per_gt, len(variants)), replace=False):
                wrong = rng.random() < 0.1
                results.append(
                    {
                        "image_id": new_id,
                        "category_id": int(rng.choice(cat_ids)) if wrong else a["category_id"],
                        "score": float(np.round(rng.random(), 3)),  # rounded: ties happen, as in real output
                        "segmentation": variants[j],
                    }
                )
    return gt, results


def _pycocotools(gt: dict, results: list, iou_type: str) -> list[float]:
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    coco = COCO()
    coco.dataset = copy.deepcopy(gt)
    coco.createIndex()
    ev = COCOeval(coco, coco.loadRes(copy.deepcopy(results)), iou_type)
    ev.evaluate()
    ev.accumulate()
    ev.summarize()
    return list(ev.stats)


def _faster(gt: dict, results: list, iou_type: str) -> list[float]:
    from faster_coco_eval import COCO, COCOeval_faster

    coco = COCO(gt)  # no copies: this runs in a throw-away child, so the fastest bare use is fair
    ev = COCOeval_faster(coco, coco.loadRes(results), iouType=iou_type, print_function=print)
    ev.evaluate()
    ev.accumulate()
    ev.summarize()
    return list(ev.stats[:12])


def _instseg(gt: dict, results: list, iou_type: str) -> list[float]:
    from instseg.eval.coco import coco_evaluate

    stats = coco_evaluate(gt, results, (iou_type,))[iou_type]  # summary stats, as evaluation in training
    return list(stats.values())[:12]


def _instseg_report(gt: dict, results: list, iou_type: str) -> list[float]:
    from instseg.eval.coco import coco_report

    stats = coco_report(gt, results, (iou_type,))[iou_type].stats  # + per-class table, TP/FP/FN, PR curves
    return list(stats.values())[:12]


ENGINES = {
    "pycocotools": _pycocotools,
    "faster-coco-eval": _faster,
    "instseg": _instseg,
    "instseg-report": _instseg_report,
}


def _child(name: str, gt: dict, results: list, iou_type: str, queue: Any) -> None:
    import contextlib
    import io

    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        stats = ENGINES[name](gt, results, iou_type)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    queue.put(
        {"seconds": seconds, "stats": stats, "peak_mb": peak / 1024, "added_mb": (peak - before) / 1024}
    )


def run(name: str, gt: dict, results: list, iou_type: str, repeat: int = 1) -> dict[str, Any]:
    """Median time over ``repeat`` fresh children; peak memory of the worst one."""
    ctx = mp.get_context("fork")
    runs = []
    for _ in range(repeat):
        queue = ctx.Queue()
        proc = ctx.Process(target=_child, args=(name, gt, results, iou_type, queue))
        proc.start()
        runs.append(queue.get())
        proc.join()
    out = dict(runs[0])
    out["seconds"] = float(np.median([r["seconds"] for r in runs]))
    out["all_seconds"] = [round(r["seconds"], 3) for r in runs]
    out["peak_mb"] = max(r["peak_mb"] for r in runs)
    out["added_mb"] = max(r["added_mb"] for r in runs)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--dets-per-gt", type=int, default=5)
    parser.add_argument("--repeat", type=int, default=3, help="runs per engine (pycocotools: 1)")
    parser.add_argument("--skip-pycocotools", action="store_true")
    parser.add_argument("--out", type=Path, help="write the numbers as JSON here")
    args = parser.parse_args()
    if not COCO_TINY.is_dir():
        print(f"needs the shared coco_tiny data at {COCO_TINY}", file=sys.stderr)
        return 1
    start = time.perf_counter()
    gt, results = build(args.images, args.dets_per_gt)
    print(
        f"built {len(gt['images'])} images, {len(gt['annotations'])} GT, {len(results)} RLE detections "
        f"in {time.perf_counter() - start:.0f} s"
    )
    rows: dict[str, dict[str, Any]] = {}
    plan = [("segm", n) for n in ENGINES if not (args.skip_pycocotools and n == "pycocotools")]
    plan += [("boundary", "faster-coco-eval"), ("boundary", "instseg")]
    for iou_type, name in plan:
        repeat = 1 if name == "pycocotools" else args.repeat
        rows[f"{iou_type}/{name}"] = r = run(name, gt, results, iou_type, repeat)
        print(
            f"{iou_type:<9} {name:<17} {r['seconds']:7.2f} s {r['all_seconds']}"
            f"  peak RSS {r['peak_mb']:6.0f} MB (+{r['added_mb']:.0f})   AP {r['stats'][0]:.4f}",
            flush=True,
        )
    for iou_type in ("segm", "boundary"):
        ref = rows[f"{iou_type}/faster-coco-eval"]["stats"]
        for key, r in rows.items():
            if key.startswith(iou_type):
                diff = float(np.max(np.abs(np.asarray(r["stats"]) - np.asarray(ref))))
                r["max_stat_diff_vs_faster_coco_eval"] = diff
                assert diff < 1e-9, f"{key} disagrees with faster-coco-eval by {diff}"
    seg, bnd = rows["segm/faster-coco-eval"], rows["boundary/faster-coco-eval"]
    summary = {
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "machine": f"{platform.machine()}, {mp.cpu_count()} cores, Python {platform.python_version()}",
        "images": len(gt["images"]),
        "gt": len(gt["annotations"]),
        "detections": len(results),
        "segm_overhead_vs_faster_coco_eval": rows["segm/instseg"]["seconds"] / seg["seconds"] - 1,
        "segm_report_overhead_vs_faster_coco_eval": rows["segm/instseg-report"]["seconds"] / seg["seconds"]
        - 1,
        "boundary_speedup_vs_faster_coco_eval": bnd["seconds"] / rows["boundary/instseg"]["seconds"],
        "boundary_over_segm_faster_coco_eval": bnd["seconds"] / seg["seconds"],
        "pycocotools_over_instseg_segm": (
            rows["segm/pycocotools"]["seconds"] / rows["segm/instseg"]["seconds"]
            if "segm/pycocotools" in rows
            else None
        ),
        "rows": {k: {kk: vv for kk, vv in v.items() if kk != "stats"} for k, v in rows.items()},
    }
    print(json.dumps({k: v for k, v in summary.items() if k != "rows"}, indent=2))
    if args.out:
        args.out.write_text(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
