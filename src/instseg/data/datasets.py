"""Datasets for training (COCO objects + augmentation) and inference (lists of image files).

Training samples are addressed by ``(index, seed)``: the sampler hands every
draw its own seed, so augmentation does not depend on which worker drew it or
on where a resumed run restarted, and resume reproduces the same trajectory.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import Dataset, Sampler

from instseg.data.coco import CocoIndex
from instseg.data.images import read_image
from instseg.data.repeat_factors import epoch_indices
from instseg.data.transforms import TrainTransform
from instseg.errors import DataError

log = logging.getLogger(__name__)


class CocoTrainDataset(Dataset):
    def __init__(self, index: CocoIndex, transform: TrainTransform) -> None:
        self.index = index
        self.transform = transform

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[Tensor, dict[str, Tensor]]:
        idx, seed = key if isinstance(key, tuple) else (key, None)
        info = self.index.images[idx]
        image = read_image(self.index.image_path(info), (int(info["height"]), int(info["width"])))
        objects = self.index.objects.get(info["id"], [])
        if seed is None:
            img, target = self.transform(image, objects)
        else:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                img, target = self.transform(image, objects)
            target["seed"] = torch.tensor(seed)  # the draw's own seed, for the criterion's random points
        target["image_id"] = torch.tensor(info["id"])
        if "neg_category_ids" in info:  # LVIS-style: which classes this image verifies (models/federated.py)
            present = set(target["labels"].tolist())
            for key, field in (
                ("neg_labels", "neg_category_ids"),
                ("not_exhaustive_labels", "not_exhaustive_category_ids"),
            ):
                labels = [self.index.label_of[c] for c in info.get(field, []) if c in self.index.label_of]
                if key == "neg_labels":  # a class pasted on the image is there (data/copy_paste.py)
                    labels = [c for c in labels if c not in present]
                target[key] = torch.tensor(labels, dtype=torch.int64)
        return img, target


class ImageListDataset(Dataset):
    """Float images ``[3, H, W]`` in [0, 1] from files, each with the id it will be reported under."""

    def __init__(
        self,
        paths: Sequence[Path],
        image_ids: Sequence[int] | None = None,
        sizes: Sequence[tuple[int, int]] | None = None,
    ) -> None:
        self.paths = list(paths)
        self.image_ids = list(image_ids) if image_ids is not None else list(range(len(self.paths)))
        self.sizes = sizes
        self.failures: list[str] | None = None  # a list: unreadable images are noted here and skipped

    def skipping_unreadable(self) -> ImageListDataset:
        """This dataset, noting each unreadable image's one-line error in ``failures`` instead of
        stopping there (read in this process: the notes of worker processes would be lost)."""
        self.failures = []
        return self

    @classmethod
    def from_coco(cls, index: CocoIndex) -> ImageListDataset:
        return cls(
            [index.image_path(im) for im in index.images],
            [im["id"] for im in index.images],
            [(int(im["height"]), int(im["width"])) for im in index.images],
        )

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, idx: int) -> tuple[Tensor, int] | None:
        size = self.sizes[idx] if self.sizes is not None else None
        try:
            return read_image(self.paths[idx], size).float().div_(255.0), self.image_ids[idx]
        except DataError as exc:
            if self.failures is None:
                raise
            log.warning("skipped: %s", exc)
            self.failures.append(str(exc))
            return None


class SeededEpochSampler(Sampler):
    """Shuffled ``(index, seed)`` draws, epoch after epoch, that can start at any step.

    The order of epoch ``e`` depends only on ``(seed, e)``; ``start_step`` skips
    the draws a resumed run has already trained on. With ``world`` ranks, step
    ``s`` trains on the ``world * batch_size`` draws one process would take for
    a batch that large, and rank ``r`` takes the ``r``-th ``batch_size`` of them:
    the ranks together see exactly one large batch, with the same augmentation.
    ``repeat``: each image's repeat factor (``data/repeat_factors.py``); an
    epoch then holds every image ``floor(r)`` or ``ceil(r)`` times, drawn from
    the same seed, so ranks and resumed runs agree on it too.
    """

    def __init__(
        self,
        size: int,
        batch_size: int,
        seed: int,
        start_step: int = 0,
        rank: int = 0,
        world: int = 1,
        repeat: Tensor | None = None,
    ) -> None:
        if size == 0:
            raise ValueError("cannot sample from an empty dataset")
        if repeat is not None and len(repeat) != size:
            raise ValueError(f"{len(repeat)} repeat factors for {size} images")
        self.size = size
        self.batch_size = batch_size
        self.seed = seed
        self.rank, self.world = rank, world
        self.start = start_step * batch_size * world
        self.repeat = repeat

    def epoch(self, epoch: int) -> list[int]:
        """The shuffled images of one epoch."""
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        if self.repeat is None:
            return torch.randperm(self.size, generator=g).tolist()
        images = epoch_indices(self.repeat, g)
        return images[torch.randperm(len(images), generator=g)].tolist()

    def __iter__(self) -> Iterator[tuple[int, int]]:
        position = 0
        epoch = 0
        step_draws = self.batch_size * self.world
        while True:
            order = self.epoch(epoch)
            for i in order:
                if position >= self.start and (position % step_draws) // self.batch_size == self.rank:
                    yield i, (self.seed * 1_000_003 + position) % (2**63)
                position += 1
            epoch += 1

    def __len__(self) -> int:  # infinite; DataLoader only needs this for len(loader)
        return 2**62


def collate(batch: list[tuple[Any, Any] | None]) -> tuple[list[Any], list[Any]]:
    """Lists of images and of targets; skipped samples (None) are left out."""
    kept = [b for b in batch if b is not None]
    return [b[0] for b in kept], [b[1] for b in kept]


def batch_to(
    images: list[Tensor], targets: list[dict[str, Tensor]], device: torch.device | str
) -> tuple[list[Tensor], list[dict[str, Tensor]]]:
    """A training batch on ``device``."""
    images = [im.to(device, non_blocking=True) for im in images]
    return images, [{k: v.to(device) for k, v in t.items()} for t in targets]
