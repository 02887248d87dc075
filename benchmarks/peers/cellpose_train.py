"""Runs inside the peer environment: train Cellpose 3.1 from scratch with its own ``train_seg`` for a
wall-clock budget, then segment the val images and write COCO results (RLE masks) for instseg's evaluator.

Cellpose's own recipe and defaults (CPnet, AdamW at its default learning rate,
224-px crops rescaled to its mean diameter, batch 8), with two choices the
benchmark needs: the flows are computed from the label maps before the clock
starts (Cellpose would compute them inside ``train_seg`` too; instseg's rows
do not count reading their data either), and the number of epochs is set from
the time one epoch takes, measured on throwaway networks first (runs of 1 and 3
epochs, so that ``train_seg``'s own set-up time is not taken for an epoch), so that the
run fits the budget (``train_seg`` takes epochs, not minutes). An epoch is
``--epoch-images`` sampled images (``train_seg``'s ``nimg_per_epoch``) rather
than the whole train split: ``train_seg``'s schedule (a 10-epoch linear
warm-up, then, past 100 epochs, halvings over the last 50) is written for
hundreds of epochs, and whole-split epochs on 2 CPU cores give a 30-minute
budget only a handful, all inside the warm-up. Cellpose gives
no score per object; each mask is scored by its mean cell probability, so that
AP can rank them. Called by ``benchmarks/dsb2018.py --peer cellpose``.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import numpy as np
import torch
from cellpose import dynamics, models, train
from PIL import Image

from instseg.data.coco import CocoIndex, resolve_source
from instseg.data.inspect import ground_truth_instances
from instseg.masks import encode_masks, masks_to_boxes
from instseg.structures import results_to_coco

CHANNELS = [0, 0]  # grayscale: nuclei in any stain


def read_split(data: Path, split: str) -> tuple[CocoIndex, list[np.ndarray], list[np.ndarray]]:
    """Images as float arrays and one label map per image (1..N, 0 background) from COCO masks."""
    index = CocoIndex(resolve_source(data, split), keep_crowd=True)
    images, labels = [], []
    for record in index.images:
        image = np.asarray(Image.open(index.image_path(record)).convert("RGB"), dtype=np.float32)
        truth = ground_truth_instances(index, record, image.shape[:2])
        label = np.zeros(image.shape[:2], np.int32)
        for i, mask in enumerate(truth.masks.numpy()):
            label[mask & (label == 0)] = i + 1
        images.append(image)
        labels.append(label)
    return index, images, labels


def new_network() -> models.CellposeModel:
    return models.CellposeModel(gpu=False, pretrained_model=False, model_type=None)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", type=Path, required=True, help="COCO dataset folder with train and val")
    parser.add_argument("--budget-min", type=float, default=30.0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--epoch-images", type=int, default=64, help="train_seg's nimg_per_epoch")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    _, images, labels = read_split(args.data, "train")
    flows = dynamics.labels_to_flows(labels, device=torch.device("cpu"))
    common = {
        "train_data": images,
        "train_labels": flows,
        "channels": CHANNELS,
        "batch_size": args.batch,
        "nimg_per_epoch": args.epoch_images,
    }
    (args.out / "probe").mkdir(exist_ok=True)
    probe_s = []
    for n in (1, 3):  # train_seg's set-up costs as much as an epoch: two probes separate the two
        started = time.perf_counter()
        train.train_seg(new_network().net, n_epochs=n, save_path=args.out / "probe", **common)
        probe_s.append(time.perf_counter() - started)
    epoch_s = (probe_s[1] - probe_s[0]) / 2
    setup_s = max(probe_s[0] - epoch_s, 0.0)
    epochs = max(1, int((args.budget_min * 60 - setup_s) / epoch_s))
    print(json.dumps({"epoch_s": epoch_s, "setup_s": setup_s, "epochs": epochs}), flush=True)
    model = new_network()
    started = time.perf_counter()
    weights = train.train_seg(model.net, n_epochs=epochs, save_path=args.out, model_name="dsb", **common)[0]
    train_s = time.perf_counter() - started
    model = models.CellposeModel(gpu=False, pretrained_model=str(weights))
    index, val_images, _ = read_split(args.data, "val")
    results, seconds = [], []
    for record, image in zip(index.images, val_images, strict=True):
        started = time.perf_counter()
        label, flow, _ = model.eval(image, channels=CHANNELS)
        seconds.append(time.perf_counter() - started)
        count = int(label.max())
        if count == 0:
            continue
        masks = torch.from_numpy(label[None] == np.arange(1, count + 1)[:, None, None])
        keep = masks.flatten(1).any(1)
        masks = masks[keep]
        probability = 1 / (1 + np.exp(-flow[2]))  # the cell-probability map, as a logit
        scores = torch.tensor([float(probability[m.numpy()].mean()) for m in masks])
        labels_ = torch.ones(len(masks), dtype=torch.int64)
        results += results_to_coco(
            record["id"], masks_to_boxes(masks), labels_, scores, encode_masks(masks), index.categories
        )
    (args.out / "results.json").write_text(json.dumps(results))
    summary = {
        "results": str(args.out / "results.json"),
        "detections": len(results),
        "epochs": epochs,
        "train_s": train_s,
        "infer_s_per_image": float(np.mean(seconds)),
    }
    (args.out / "peer_summary.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
