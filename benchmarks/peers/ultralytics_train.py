"""Runs inside the peer environment: train an ultralytics YOLO-seg from scratch for a wall-clock budget,
then predict the val images and write COCO results (RLE masks) for instseg's evaluator.

Its own trainer and defaults; offline (no weights, no fonts, no plots). Called by
``benchmarks/dsb2018.py --peer yolov8n-seg``, which converts the data and scores the results.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from ultralytics import YOLO

from instseg.masks import encode_masks
from instseg.structures import Category, results_to_coco


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="yolov8n-seg")
    parser.add_argument("--data", type=Path, required=True, help="data.yaml of a YOLO-seg dataset")
    parser.add_argument("--val-json", type=Path, required=True, help="COCO val annotations (ids, sizes)")
    parser.add_argument("--val-images", type=Path, required=True)
    parser.add_argument("--budget-min", type=float, default=30.0)
    parser.add_argument("--imgsz", type=int, default=512)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    yolo = YOLO(f"{args.model}.yaml")
    yolo.train(
        data=str(args.data),
        time=args.budget_min / 60,  # hours; overrides epochs
        epochs=1000,
        imgsz=args.imgsz,
        batch=args.batch,
        device="cpu",
        workers=1,
        pretrained=False,
        amp=False,
        plots=False,
        val=False,
        project=str(args.out),
        name="train",
        exist_ok=True,
        verbose=False,
    )
    best = args.out / "train" / "weights" / "last.pt"
    model = YOLO(str(best))
    gt = json.loads(args.val_json.read_text())
    cats = [Category(int(c["id"]), str(c["name"])) for c in sorted(gt["categories"], key=lambda c: c["id"])]
    results = []
    for im in gt["images"]:
        path = args.val_images / im["file_name"]
        image = np.asarray(Image.open(path).convert("RGB"))
        pred = model.predict(
            image[..., ::-1], imgsz=args.imgsz, conf=0.001, max_det=500, retina_masks=True, verbose=False
        )[0]
        if pred.masks is None:
            continue
        masks = pred.masks.data.bool().cpu()[:, : im["height"], : im["width"]]
        labels = pred.boxes.cls.cpu().long() + 1  # YOLO class k is the k-th category by id
        rles = encode_masks(masks)
        results += results_to_coco(im["id"], pred.boxes.xyxy.cpu(), labels, pred.boxes.conf.cpu(), rles, cats)
    (args.out / "results.json").write_text(json.dumps(results))
    print(json.dumps({"results": str(args.out / "results.json"), "detections": len(results)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
