"""Does a model's accuracy depend on the size of its input? The same pixels, two ways.

For every val image larger than 320x256 (about the training crops), the centre SIZE x SIZE
window and its ground truth (cut to the window) are scored twice: predicted
on the whole image and cut to the window, or predicted on the window alone.
A model whose predictions do not depend on the input's size scores about the
same both ways (a little lower on the window: objects cut by its edges lose
their context).

    python benchmarks/window_check.py runs/bench/solov2_30_b2/checkpoint runs/bench/condinst_30_iou/checkpoint
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from pycocotools.coco import COCO

import instseg
from instseg.data.images import read_image
from instseg.masks import encode_masks, masks_to_boxes
from instseg.structures import Instances

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "dsb2018"
SMALL_AREA = 320 * 256  # images up to this area are about the training crops' size (the by-size split)
OPTIONS = {"boundary": False, "max_dets": (1, 10, 500), "matching": False}


def cut(inst: Instances, x0: int, y0: int, size: int, image_id: int) -> list[dict]:
    """COCO results of the detections whose mask reaches into the window, cut to it."""
    masks = inst.masks[:, y0 : y0 + size, x0 : x0 + size]
    keep = masks.flatten(1).any(1)
    window = Instances(
        masks_to_boxes(masks[keep]),
        inst.labels[keep],
        inst.scores[keep],
        masks[keep],
        (size, size),
        inst.categories,
    )
    return window.to_coco(image_id)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoints", nargs="+")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--size", type=int, default=256)
    args = parser.parse_args()
    size = args.size
    gt = COCO(str(args.data / "annotations" / "instances_val.json"))
    larger = [im for im in gt.dataset["images"] if im["width"] * im["height"] > SMALL_AREA]
    origins = {im["id"]: ((im["width"] - size) // 2, (im["height"] - size) // 2) for im in larger}
    images = {im["id"]: read_image(args.data / "val" / im["file_name"]) for im in larger}
    annotations = []
    for im in larger:
        x0, y0 = origins[im["id"]]
        anns = gt.loadAnns(gt.getAnnIds(imgIds=im["id"]))
        masks = torch.from_numpy(np.stack([gt.annToMask(a) for a in anns]).astype(bool))
        masks = masks[:, y0 : y0 + size, x0 : x0 + size]
        keep = torch.nonzero(masks.flatten(1).any(1)).flatten()
        boxes = masks_to_boxes(masks[keep])
        boxes[:, 2:] -= boxes[:, :2]  # xywh
        for i, rle, box in zip(keep.tolist(), encode_masks(masks[keep]), boxes.tolist(), strict=True):
            area = float(masks[i].sum())
            annotations.append({**anns[i], "segmentation": rle, "area": area, "bbox": box})
    window_gt = {
        **gt.dataset,
        "images": [{**im, "width": size, "height": size} for im in larger],
        "annotations": annotations,
    }
    print(f"{len(larger)} windows of {size}x{size}, {len(annotations)} objects")
    for ck in args.checkpoints:
        model = instseg.load(ck)
        whole, alone = [], []
        with torch.no_grad():
            for image_id, image in images.items():
                x0, y0 = origins[image_id]
                whole += cut(model.predict(image), x0, y0, size, image_id)
                alone += model.predict(image[:, y0 : y0 + size, x0 : x0 + size]).to_coco(image_id)
        ap = [
            instseg.evaluate_results(results, window_gt, **OPTIONS).metrics["segm"]["AP"]
            for results in (whole, alone)
        ]
        print(f"{ck}: mask AP whole image, cut {ap[0]:.3f}; window alone {ap[1]:.3f}")


if __name__ == "__main__":
    main()
