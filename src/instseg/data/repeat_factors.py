"""Repeat-factor sampling (Gupta et al., LVIS 2019): images with rare classes are drawn more often.

For category ``c`` let ``f(c)`` be the fraction of training images that
contain it; an image's repeat factor is the largest ``max(1, sqrt(t / f(c)))``
over its categories, so a class in fewer than a fraction ``t`` of the images
is oversampled by ``sqrt(t / f)``, and frequent ones are not touched. Each
epoch an image appears ``floor(r)`` times, plus once more with probability
``r - floor(r)`` (stochastic rounding, drawn per epoch from the sampler's seed).
"""

from __future__ import annotations

import math
from collections import Counter

import torch
from torch import Tensor

from instseg.data.coco import CocoIndex


def _labels_per_image(index: CocoIndex) -> list[set[int]]:
    return [{o["label"] for o in index.objects.get(im["id"], [])} for im in index.images]


def images_per_class(index: CocoIndex) -> list[int]:
    """How many training images contain each class, labels 1..K in order (LVIS's image counts)."""
    counts = Counter(label for labels in _labels_per_image(index) for label in labels)
    return [counts.get(label, 0) for label in range(1, len(index.categories) + 1)]


def repeat_factors(index: CocoIndex, threshold: float) -> Tensor:
    """float64 ``[images]``: each training image's repeat factor at ``threshold`` (LVIS: 0.001); 1 for
    images without objects."""
    n = max(len(index.images), 1)
    per_class = [
        max(1.0, math.sqrt(threshold * n / count)) if count else 1.0 for count in images_per_class(index)
    ]
    return torch.tensor(
        [max((per_class[c - 1] for c in labels), default=1.0) for labels in _labels_per_image(index)],
        dtype=torch.float64,
    )


def epoch_indices(factors: Tensor, generator: torch.Generator) -> Tensor:
    """The images of one epoch, each ``floor(r)`` or ``ceil(r)`` times (stochastic rounding), unshuffled."""
    whole = factors.floor()
    extra = torch.rand(len(factors), generator=generator, dtype=torch.float64) < (factors - whole)
    counts = (whole + extra).long()
    return torch.repeat_interleave(torch.arange(len(factors)), counts)
