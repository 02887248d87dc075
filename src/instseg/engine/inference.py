"""Run a model over images and keep only RLE results, so memory does not grow with the dataset."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Subset
from tqdm import tqdm

from instseg import distributed
from instseg.cropped_masks import cropped_masks
from instseg.data.datasets import ImageListDataset, collate
from instseg.masks import encode_masks
from instseg.structures import Category, Instances, results_to_coco

ImageCallback = Callable[[int, torch.Tensor, Instances], None]


@dataclass
class InferenceRun:
    results: list[dict[str, Any]] = field(default_factory=list)
    images: int = 0
    model_seconds: float = 0.0  # forward + postprocess (mask pasting), without reading or encoding

    @property
    def seconds_per_image(self) -> float:
        return self.model_seconds / max(self.images, 1)


@torch.no_grad()
def run_inference(
    model: nn.Module,
    dataset: ImageListDataset,
    categories: Sequence[Category],
    device: torch.device | str = "cpu",
    batch_size: int = 1,
    workers: int = 0,
    on_image: ImageCallback | None = None,
    progress: bool = True,
    desc: str = "predict",
) -> InferenceRun:
    """COCO results (RLE masks) for every image; ``on_image`` sees each image's full Instances.

    On several ranks each predicts every ``world_size``-th image and rank 0
    gets all the results (``gathered``); ``on_image`` runs where the image was
    predicted.

    Masks come from the model as box crops (``cropped_masks()``), so a large
    image with many objects never needs a full-size mask per object; ``on_image``
    gets them so too (``Instances.dense_masks()`` makes the stack).

    ``model`` runs as given; pass ``Predictor.inference`` (or ``models.fusion.inference_model``'s
    copy) for BatchNorm folded and channels-last memory.
    """
    device = torch.device(device)
    was_training = model.training
    model.eval()
    shard = Subset(dataset, range(distributed.rank(), len(dataset), distributed.world_size()))
    loader = DataLoader(shard, batch_size=batch_size, num_workers=workers, collate_fn=collate)
    run = InferenceRun()
    try:
        for images, image_ids in tqdm(loader, desc=desc, disable=not progress, unit="batch"):
            if not images:  # every image of the batch was unreadable and skipped
                continue
            batch = [im.to(device) for im in images]
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            with cropped_masks():
                outputs = model(batch)
            if device.type == "cuda":
                torch.cuda.synchronize()
            run.model_seconds += time.perf_counter() - start
            run.images += len(batch)
            for image, image_id, out in zip(images, image_ids, outputs, strict=True):
                out = {k: v.cpu() for k, v in out.items()}
                run.results += results_to_coco(
                    image_id,
                    out["boxes"],
                    out["labels"],
                    out["scores"],
                    encode_masks(out["masks"]),
                    categories,
                )
                if on_image is not None:
                    on_image(image_id, image, Instances.from_output(out, tuple(image.shape[-2:]), categories))
    finally:
        model.train(was_training)
    return gathered(run, dataset.image_ids) if distributed.active() else run


def gathered(run: InferenceRun, image_ids: Sequence[int]) -> InferenceRun:
    """Every rank's results on rank 0, in the order one process would have produced them (the dataset's
    image order, each image's detections as the model ranked them); the other ranks keep none."""
    parts = distributed.gather_to_main((run.results, run.images, run.model_seconds))
    if parts is None:
        return InferenceRun([], run.images, run.model_seconds)
    position = {image_id: i for i, image_id in enumerate(image_ids)}
    merged = sorted((r for results, _, _ in parts for r in results), key=lambda r: position[r["image_id"]])
    return InferenceRun(merged, sum(p[1] for p in parts), sum(p[2] for p in parts))
