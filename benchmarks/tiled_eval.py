"""Predict val images tile by tile and write COCO results: how a model trained on crops does on windows.

Each image is cut into overlapping ``--tile`` x ``--tile`` windows; a window
keeps the detections whose box centre lies in its core (the overlaps are
split at their midlines), so every object is reported once, by the window
that sees it whole, with no NMS. Score the results with ``instseg eval``:

    python benchmarks/tiled_eval.py --model runs/bench/m2f_30_crop128/checkpoint \
        --tile 128 --overlap 32 --out runs/bench/m2f_30_crop128/tiled.json
    instseg eval --results runs/bench/m2f_30_crop128/tiled.json --data ../shared/data/dsb2018 \
        --max-dets 1 10 500

A measurement, not yet a predictor option: masks are written at full size one
by one, which is slow on large images.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
from pycocotools import mask as mask_utils
from tqdm import tqdm

import instseg
from instseg.data.coco import CocoIndex, resolve_source
from instseg.data.images import read_image

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "dsb2018"


def starts(n: int, tile: int, overlap: int) -> list[int]:
    """Window origins along one side: ``tile - overlap`` apart, the last flush with the edge."""
    if n <= tile:
        return [0]
    out = [*range(0, n - tile, tile - overlap), n - tile]
    return sorted(set(out))


def cores(n: int, tile: int, s: list[int]) -> list[tuple[float, float]]:
    """Each window's core along one side: its overlaps with its neighbours split at their midlines."""
    bounds = []
    for i, a in enumerate(s):
        lo = 0 if i == 0 else (s[i - 1] + tile + a) / 2
        hi = n if i == len(s) - 1 else (a + tile + s[i + 1]) / 2
        bounds.append((lo, hi))
    return bounds


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True)
    p.add_argument("--data", default=str(DEFAULT_DATA))
    p.add_argument("--tile", type=int, default=128)
    p.add_argument("--overlap", type=int, default=32)
    p.add_argument("--out", type=Path, required=True)
    a = p.parse_args()
    predictor = instseg.load(a.model, device="cpu")
    index = CocoIndex(resolve_source(a.data, "val"), keep_crowd=True)
    results = []
    for im in tqdm(index.images):
        h, w = int(im["height"]), int(im["width"])
        pixels = read_image(index.image_path(im), (h, w)).permute(1, 2, 0).numpy()
        ys, xs = starts(h, a.tile, a.overlap), starts(w, a.tile, a.overlap)
        ycore, xcore = cores(h, a.tile, ys), cores(w, a.tile, xs)
        for y0, (ylo, yhi) in zip(ys, ycore, strict=True):
            for x0, (xlo, xhi) in zip(xs, xcore, strict=True):
                tile = np.ascontiguousarray(pixels[y0 : y0 + a.tile, x0 : x0 + a.tile])
                inst = predictor.predict(tile)
                if len(inst) == 0:
                    continue
                masks = inst.masks
                dense = masks.dense() if hasattr(masks, "dense") else masks
                dense = torch.as_tensor(dense).bool().numpy()
                for k in range(len(inst)):
                    bx0, by0, bx1, by1 = inst.boxes[k].tolist()
                    cx, cy = (bx0 + bx1) / 2 + x0, (by0 + by1) / 2 + y0
                    if not (xlo <= cx < xhi and ylo <= cy < yhi):
                        continue
                    full = np.zeros((h, w), dtype=np.uint8, order="F")
                    th, tw = dense.shape[1:]
                    full[y0 : y0 + th, x0 : x0 + tw] = dense[k]
                    rle = mask_utils.encode(full)
                    rle["counts"] = rle["counts"].decode()
                    results.append(
                        {
                            "image_id": im["id"],
                            "category_id": predictor.categories[int(inst.labels[k]) - 1].id,
                            "score": float(inst.scores[k]),
                            "segmentation": rle,
                            "bbox": [bx0 + x0, by0 + y0, bx1 - bx0, by1 - by0],
                        }
                    )
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(results))
    print(len(results), "detections ->", a.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
