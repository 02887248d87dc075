"""Which classes a sigmoid classifier may learn as absent in each image: LVIS's federated rules.

LVIS annotates each image for some classes only: its positives (exhaustively,
unless the image lists them in ``not_exhaustive_category_ids``) and the classes
verified absent (``neg_category_ids``). A class an image does not verify must
not be learnt as absent there. The federated loss of CenterNet2 and Detic
(Zhou et al. 2021) goes further: each batch trains only its ground-truth
classes plus a sample of the others drawn by ``frequency ** 0.5``, so a rare
class is not pushed down by every image that merely does not contain it.
Positive locations always train their own class; only negatives are weighed.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor


def negative_weights(
    targets: list[dict[str, Tensor]],
    num_classes: int,
    sampled: int = 0,
    frequencies: Sequence[float] = (),
    generator: torch.Generator | None = None,
) -> Tensor:
    """float ``[B, K]``: 1 where class ``k`` may be learnt as absent in image ``b``, else 0.

    Images whose targets carry ``neg_labels`` (LVIS-style records) keep their
    positives and verified negatives, less their ``not_exhaustive_labels``;
    other images keep every class. ``sampled`` > 0: the federated loss, the
    batch's ground-truth classes plus others drawn by ``frequencies ** 0.5``
    (training images per class; uniform without them) up to ``sampled`` classes.
    """
    weights = torch.ones((len(targets), num_classes))
    for b, t in enumerate(targets):
        if "neg_labels" not in t:
            continue
        verified = torch.zeros(num_classes, dtype=torch.bool)
        verified[t["neg_labels"].long().cpu() - 1] = True
        verified[t["labels"].long().cpu() - 1] = True
        verified[t["not_exhaustive_labels"].long().cpu() - 1] = False
        weights[b] = verified.float()
    if 0 < sampled < num_classes:
        present = torch.unique(torch.cat([t["labels"].long().cpu() for t in targets] or [torch.zeros(0)]))
        keep = torch.zeros(num_classes, dtype=torch.bool)
        keep[(present - 1).long()] = True
        chance = torch.tensor(frequencies, dtype=torch.float64) if frequencies else torch.ones(num_classes)
        chance = chance.double().clamp(min=0).sqrt()
        chance[keep] = 0
        extra = min(sampled - int(keep.sum()), int((chance > 0).sum()))
        if extra > 0:
            keep[torch.multinomial(chance, extra, replacement=False, generator=generator)] = True
        weights *= keep.float()
    return weights


def federated_weights(
    targets: list[dict[str, Tensor]], num_classes: int, sampled: int = 0, frequencies: Sequence[float] = ()
) -> Tensor | None:
    """``negative_weights``, or None when no rule applies (no LVIS-style record in the batch and no
    federated loss), so that nothing needs weighing."""
    if sampled <= 0 and not any("neg_labels" in t for t in targets):
        return None
    return negative_weights(targets, num_classes, sampled, frequencies)
