"""Start training from another checkpoint's weights, on a dataset that may have other classes.

The model is built from the checkpoint's own config (the architecture must
match its weights), with any fields the user changes on top, such as
``norm: frozen_bn`` to keep a BatchNorm trunk's statistics. Every tensor is
taken from the checkpoint, except those whose size depends on the number of
classes (the class logits, Mask R-CNN's per-class boxes and masks), which
keep their fresh initialisation; anything else that does not fit is an error,
because it means another architecture. The one exception is what a loss
counts as it trains (Seesaw's samples per class, the equalized focal loss's
gradient sums: a module's buffers where it sets ``counts_while_training``):
fine-tuning with another class loss than the checkpoint's starts those counts
from zero.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from instseg.engine import checkpoint as ckpt
from instseg.errors import CheckpointError
from instseg.models.build import checkpoint_config

log = logging.getLogger(__name__)


def fine_tune_config(init: str | Path, family: str | None, overrides: dict[str, Any]) -> tuple[str, Any]:
    """(family, model config) of a run that starts from ``init``: the checkpoint's, with ``overrides``."""
    meta = ckpt.load_meta(init)
    if family is not None and family != meta["family"]:
        raise CheckpointError(f"{init}: a {meta['family']} checkpoint cannot start a {family} model")
    return meta["family"], checkpoint_config(meta, overrides)


def _class_sized(theirs: tuple[int, ...], ours: tuple[int, ...], old: int, new: int) -> bool:
    """Whether two shapes differ only where a size counts classes: K, K + 1 (background or "no
    object") or 4 (K + 1) (Mask R-CNN's per-class boxes)."""
    if len(theirs) != len(ours):
        return False
    sizes = {(f * (old + m), f * (new + m)) for f in (1, 4) for m in (0, 1)}
    return all(a == b or (a, b) in sizes for a, b in zip(theirs, ours, strict=True))


def load_for_fine_tuning(model: nn.Module, init: str | Path, num_classes: int) -> list[str]:
    """Copy ``init``'s weights into ``model``; returns the names of the class-sized tensors left as
    initialised (none when the classes are as many as the checkpoint's)."""
    meta = ckpt.load_meta(init)
    old = len(meta["categories"])
    state: dict[str, Tensor] = ckpt.load_weights(init)
    taken, fresh = {}, []
    counts = {
        f"{owner}.{name}" if owner else name
        for owner, module in model.named_modules()
        if getattr(module, "counts_while_training", False)
        for name, _ in module.named_buffers(recurse=False)
    }
    for key, value in model.state_dict().items():
        if key not in state and key in counts:
            log.info("%s has no %s: it starts from its initial value", init, key)
            continue
        if key not in state:
            raise CheckpointError(f"{init}: has no {key}; it is another architecture than the model's")
        theirs = state[key]
        if theirs.shape == value.shape:
            taken[key] = theirs
        elif _class_sized(tuple(theirs.shape), tuple(value.shape), old, num_classes):
            fresh.append(key)
        else:
            raise CheckpointError(
                f"{init}: {key} is {tuple(theirs.shape)} there and {tuple(value.shape)} in the model; "
                "it is another architecture (change no architecture field when fine-tuning)"
            )
    model.load_state_dict(taken, strict=False)
    return fresh
