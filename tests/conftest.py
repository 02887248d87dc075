"""Shared fixtures: a tiny synthetic COCO dataset written per session, and a tiny model config."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pycocotools.mask as mask_utils
import pytest
import torch
from PIL import Image

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"

# Small enough to train a few steps in seconds on a 2-core CPU.
TINY_MODEL = {
    "backbone": "resnet18",
    "norm": "gn",
    "fpn_channels": 32,
    "scale": 1.0,
    "anchor_sizes": [8, 16, 32, 64, 128],
    "mask_head_channels": 32,
    "mask_head_convs": 2,
    "box_head_dim": 64,
    "rpn_batch_per_image": 64,
    "box_batch_per_image": 32,
    "rpn_pre_nms_train": 300,
    "rpn_post_nms_train": 200,
    "rpn_pre_nms_test": 300,
    "rpn_post_nms_test": 100,
    "mask_resolution": 14,
}


@pytest.fixture(autouse=True, scope="session")
def _one_thread() -> None:
    torch.set_num_threads(1)


def shared_data(name: str) -> Path:
    path = SHARED_DATA / name
    if not path.is_dir():
        pytest.skip(f"{path} not present (real data lives in ../shared/data beside the project)")
    return path


def _scene(rng: np.random.Generator, size: int = 64) -> tuple[np.ndarray, list[tuple[str, np.ndarray]]]:
    """Noisy background with 1-3 squares (category 3) and disks (category 7)."""
    image = (rng.random((size, size, 3)) * 40 + 20).astype(np.uint8)
    yy, xx = np.mgrid[:size, :size]
    objects = []
    for k in range(int(rng.integers(1, 4))):
        cx, cy = (int(v) for v in rng.integers(14, size - 14, 2))
        r = int(rng.integers(5, 10))
        if k % 2 == 0:
            mask = (abs(xx - cx) <= r) & (abs(yy - cy) <= r)
            objects.append(("square", mask))
        else:
            mask = (xx - cx) ** 2 + (yy - cy) ** 2 <= r * r
            objects.append(("disk", mask))
        image[mask] = (220, 80, 60) if k % 2 == 0 else (60, 200, 90)
    return image, objects


def uncompressed_counts(mask: np.ndarray) -> list[int]:
    """COCO's uncompressed RLE: run lengths over the column-major pixels, starting with zeros."""
    counts, prev, run = [], 0, 0
    for v in mask.flatten(order="F").tolist():
        if v == prev:
            run += 1
        else:
            counts.append(run)
            prev, run = v, 1
    counts.append(run)
    return counts


def write_tiny_coco(root: Path, n_train: int = 6, n_val: int = 3, seed: int = 0) -> Path:
    """A COCO dataset folder using polygons, compressed and uncompressed RLE, a crowd region,
    non-contiguous category ids, and an image without objects."""
    rng = np.random.default_rng(seed)
    categories = [
        {"id": 3, "name": "square", "supercategory": "shape"},
        {"id": 7, "name": "disk", "supercategory": "shape"},
    ]
    ann_id = 1
    for split, n in (("train", n_train), ("val", n_val)):
        (root / split).mkdir(parents=True, exist_ok=True)
        images, annotations = [], []
        for i in range(n):
            image, objects = _scene(rng)
            if split == "train" and i == n - 1:
                objects = []  # an image without objects is a valid sample
                image[:] = 30
            name = f"{split}_{i:03d}.png"
            Image.fromarray(image).save(root / split / name)
            images.append({"id": 100 + i, "file_name": name, "height": 64, "width": 64})
            for kind, mask in objects:
                rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
                x, y, w, h = mask_utils.toBbox(rle).tolist()
                if kind == "square":
                    seg = [[x, y, x + w, y, x + w, y + h, x, y + h]]
                elif i % 2 == 0:
                    seg = {"size": [64, 64], "counts": rle["counts"].decode()}
                else:
                    seg = {"size": [64, 64], "counts": uncompressed_counts(mask)}
                annotations.append(
                    {
                        "id": ann_id,
                        "image_id": 100 + i,
                        "category_id": 3 if kind == "square" else 7,
                        "segmentation": seg,
                        "area": float(mask.sum()),
                        "bbox": [x, y, w, h],
                        "iscrowd": 0,
                    }
                )
                ann_id += 1
        if split == "val":
            crowd = np.zeros((64, 64), dtype=np.uint8)
            crowd[:6, :6] = 1
            rle = mask_utils.encode(np.asfortranarray(crowd))
            annotations.append(
                {
                    "id": ann_id,
                    "image_id": 100,
                    "category_id": 3,
                    "iscrowd": 1,
                    "area": 36.0,
                    "bbox": [0, 0, 6, 6],
                    "segmentation": {"size": [64, 64], "counts": rle["counts"].decode()},
                }
            )
            ann_id += 1
        (root / "annotations").mkdir(exist_ok=True)
        (root / "annotations" / f"instances_{split}.json").write_text(
            json.dumps({"images": images, "annotations": annotations, "categories": categories})
        )
    return root


@pytest.fixture(scope="session")
def tiny_coco(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_coco(tmp_path_factory.mktemp("tiny_coco"))


@pytest.fixture()
def tiny_model() -> dict:
    return dict(TINY_MODEL)


def tiny_train_options(out: Path, **kw) -> dict:
    return {
        "out": str(out),
        "steps": 6,
        "batch_size": 2,
        "lr": 1e-3,
        "warmup_steps": 2,
        "workers": 0,
        "log_every": 1,
        "checkpoint_every": 3,
        "eval_max_dets": [1, 10, 100],
        **kw,
    }


@pytest.fixture(scope="session")
def trained(tiny_coco: Path, tmp_path_factory: pytest.TempPathFactory):
    """A tiny Mask R-CNN trained for a few steps through the public API (shared by slower tests)."""
    import instseg

    out = tmp_path_factory.mktemp("trained")
    return instseg.train(
        "mask_rcnn",
        tiny_coco,
        model_options=dict(TINY_MODEL),
        progress=False,
        **tiny_train_options(out, keep_every=3),
    )
