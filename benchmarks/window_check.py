"""Does a model's accuracy depend on the size of its input? The same pixels, two ways.

For every val image larger than the training crops, the centre SIZE x SIZE
window and its ground truth (cut to the window) are scored twice: predicted
on the whole image and cut to the window, or predicted on the window alone.
A model whose predictions do not depend on the input's size scores about the
same both ways (a little lower on the window: objects cut by its edges lose
their context).

    python benchmarks/window_check.py runs/bench/solov2_30_b2/checkpoint runs/bench/condinst_30_iou/checkpoint
"""

from __future__ import annotations

import argparse
import copy
import json
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pycocotools.mask as mask_utils
from PIL import Image
from pycocotools.coco import COCO

import instseg

MAX_DETS = (1, 10, 500)


def encode(mask: np.ndarray) -> dict[str, Any]:
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    rle["counts"] = rle["counts"].decode()
    return rle


def write_windows(data: Path, size: int, out: Path) -> tuple[dict, dict, dict[int, tuple[int, int]]]:
    """Ground truth of the larger images (whole) and of their centre windows; the windows' images on disk."""
    gt = COCO(str(data / "annotations" / "instances_val.json"))
    larger = [im for im in gt.dataset["images"] if im["width"] * im["height"] > 320 * 256]
    ids = {im["id"] for im in larger}
    whole = {
        **gt.dataset,
        "images": larger,
        "annotations": [a for a in gt.dataset["annotations"] if a["image_id"] in ids],
    }
    images, annotations, origins = [], [], {}
    (out / "images").mkdir(parents=True, exist_ok=True)
    for im in larger:
        x0, y0 = (im["width"] - size) // 2, (im["height"] - size) // 2
        origins[im["id"]] = (x0, y0)
        name = Path(im["file_name"]).stem + ".png"
        Image.open(data / "val" / im["file_name"]).convert("RGB").crop((x0, y0, x0 + size, y0 + size)).save(
            out / "images" / name
        )
        images.append({**im, "file_name": name, "width": size, "height": size})
        for ann in gt.loadAnns(gt.getAnnIds(imgIds=im["id"])):
            cut = gt.annToMask(ann)[y0 : y0 + size, x0 : x0 + size]
            if cut.any():
                rle = encode(cut)
                box = [float(v) for v in mask_utils.toBbox(rle)]
                annotations.append({**ann, "segmentation": rle, "area": float(cut.sum()), "bbox": box})
    window = {**gt.dataset, "images": images, "annotations": annotations}
    return whole, window, origins


def cut_results(results: list[dict], origins: dict[int, tuple[int, int]], size: int) -> list[dict]:
    out = []
    for det in results:
        x0, y0 = origins[det["image_id"]]
        cut = mask_utils.decode(det["segmentation"])[y0 : y0 + size, x0 : x0 + size]
        if cut.any():
            rle = encode(cut)
            out.append({**det, "segmentation": rle, "bbox": [float(v) for v in mask_utils.toBbox(rle)]})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoints", nargs="+")
    parser.add_argument(
        "--data", type=Path, default=Path(__file__).parents[1] / ".." / "shared" / "data" / "dsb2018"
    )
    parser.add_argument("--size", type=int, default=256)
    args = parser.parse_args()
    opts: dict[str, Any] = {"boundary": False, "max_dets": MAX_DETS, "matching": False}
    with tempfile.TemporaryDirectory() as tmp:
        whole, window, origins = write_windows(args.data, args.size, Path(tmp))
        whole_json, window_json = Path(tmp) / "whole.json", Path(tmp) / "window.json"
        whole_json.write_text(json.dumps(whole))
        window_json.write_text(json.dumps(window))
        count = len(window["annotations"])
        print(f"{len(window['images'])} windows of {args.size}x{args.size}, {count} objects")
        for ck in args.checkpoints:
            model = instseg.load(ck)
            ev = instseg.evaluate(model, whole_json, images=args.data / "val", progress=False, **opts)
            cut = cut_results(ev.results, origins, args.size)
            on_whole = instseg.evaluate_results(cut, copy.deepcopy(window), **opts).metrics["segm"]["AP"]
            ev = instseg.evaluate(model, window_json, images=Path(tmp) / "images", progress=False, **opts)
            on_window = ev.report.metrics["segm"]["AP"]
            print(f"{ck}: mask AP whole image, cut {on_whole:.3f}; window alone {on_window:.3f}")


if __name__ == "__main__":
    main()
