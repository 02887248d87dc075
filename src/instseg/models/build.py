"""The model families by name: their config class, builder and presets.

A plain dict of plain functions: the name is what the CLI and checkpoints store,
and the mapping is read here in one place, not assembled by decorators.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import nn

from instseg.config import config_from_dict, config_to_dict
from instseg.errors import CheckpointError, InstsegError
from instseg.models import mask_rcnn
from instseg.models.fcos import condinst, yolact
from instseg.models.mask2former import model as mask2former
from instseg.models.sam import model as sam
from instseg.models.solov2 import model as solov2
from instseg.structures import Category
from instseg.version import __version__

# Config version written into checkpoints: 2 gave every meaning one field name. Older checkpoints'
# fields are renamed on load (all of a family's renames at once, so that a swap of names is safe).
CONFIG_VERSION = 2
MAX_PARAMETERS = 2 * 10**9  # weights a model may have: three times vit_h
MAX_CLASSES = 100_000  # LVIS has 1,203; a header with more is corrupt
MAX_SIZE = 2**16  # any integer of a stored config: widths, sizes, counts
MAX_REPEATS = 256  # the count of a repeated block: ViT-H has 32
REPEAT_SUFFIXES = ("layers", "depth", "convs")
RENAMED_FIELDS: dict[str, dict[str, str]] = {
    "condinst": {"mask_weight": "dice_weight", "mask_bce_weight": "mask_weight"},
}


@dataclass(frozen=True)
class Family:
    config: type
    build: Callable[[Any, int], nn.Module]
    presets: dict[str, Callable[[], Any]] = field(default_factory=dict)
    # what output boxes are: the boxes the family predicts, or the tight boxes of its masks
    boxes: Literal["predicted", "mask"] = "predicted"


FAMILIES: dict[str, Family] = {
    "mask_rcnn": Family(
        mask_rcnn.MaskRCNNConfig,
        mask_rcnn.build_mask_rcnn,
        {"default": mask_rcnn.MaskRCNNConfig, "nuclei": mask_rcnn.nuclei_preset},
    ),
    "solov2": Family(
        solov2.SOLOv2Config,
        solov2.build_solov2,
        {"default": solov2.SOLOv2Config, "light": solov2.light_preset, "nuclei": solov2.nuclei_preset},
        boxes="mask",
    ),
    "yolact": Family(
        yolact.YOLACTConfig,
        yolact.build_yolact,
        {
            "default": yolact.YOLACTConfig,
            "nuclei": yolact.nuclei_preset,
            "realtime": yolact.realtime_preset,
            "realtime_nuclei": yolact.realtime_nuclei_preset,
        },
    ),
    "condinst": Family(
        condinst.CondInstConfig,
        condinst.build_condinst,
        {"default": condinst.CondInstConfig, "nuclei": condinst.nuclei_preset},
    ),
    "mask2former": Family(
        mask2former.Mask2FormerConfig,
        mask2former.build_mask2former,
        {
            "default": mask2former.Mask2FormerConfig,
            "nuclei": mask2former.nuclei_preset,
            "nuclei_paper": mask2former.nuclei_paper_preset,
            "light": mask2former.light_preset,
        },
        boxes="mask",
    ),
    "sam": Family(
        sam.SAMConfig,
        sam.build_sam,
        {
            "default": sam.vit_b_preset,
            "vit_b": sam.vit_b_preset,
            "vit_l": sam.vit_l_preset,
            "vit_h": sam.vit_h_preset,
            "nuclei": sam.nuclei_preset,
        },
        boxes="mask",
    ),
}


def family(name: str) -> Family:
    if name not in FAMILIES:
        raise InstsegError(f"unknown model {name!r}; available: {', '.join(FAMILIES)}")
    return FAMILIES[name]


def model_config(name: str, preset: str = "default", overrides: dict[str, Any] | None = None) -> Any:
    fam = family(name)
    if preset not in fam.presets:
        raise InstsegError(f"unknown preset {preset!r} for {name}; available: {', '.join(fam.presets)}")
    return config_from_dict(fam.config, overrides or {}, base=fam.presets[preset]())


def checkpoint_meta(name: str, config: Any, categories: list[Category], **extra: Any) -> dict[str, Any]:
    """What a checkpoint stores to rebuild its model: family, full config, categories (``extra`` adds
    the training recipe, step, metrics or source)."""
    return {
        "instseg_version": __version__,
        "config_version": CONFIG_VERSION,
        "family": name,
        "model_config": config_to_dict(config),
        "categories": [vars(c) for c in categories],
        **extra,
    }


def checkpoint_config(meta: dict[str, Any], overrides: dict[str, Any] | None = None) -> Any:
    """The model config stored in a checkpoint's metadata (older field names renamed), with
    ``overrides`` applied on top."""
    name = meta["family"]
    values = dict(meta["model_config"])
    if meta.get("config_version", 1) < 2:
        renames = RENAMED_FIELDS.get(name, {})
        values = {renames.get(k, k): v for k, v in values.items()}
    _check_sizes(values, name)
    return config_from_dict(family(name).config, {**values, **(overrides or {})})


def _check_sizes(values: dict[str, Any], name: str) -> None:
    """Bounds on a header's integers before any module is built: a corrupt or hostile header could
    otherwise ask for a million layers (each built before anything can be counted)."""
    for key, value in values.items():
        numbers = value if isinstance(value, list | tuple) else [value]
        for v in numbers:
            if not isinstance(v, int) or isinstance(v, bool):
                continue
            limit = MAX_REPEATS if key.endswith(REPEAT_SUFFIXES) else MAX_SIZE
            if abs(v) > limit:
                raise CheckpointError(f"{name} config: {key} = {v} is beyond any model (limit {limit})")


def build_model(
    name: str, config: Any, num_classes: int, weight_shapes: dict[str, tuple[int, ...]] | None = None
) -> nn.Module:
    """The model. With ``weight_shapes`` (a checkpoint's tensors, config from its header) it is first
    built on the meta device (shapes, no memory, the global RNG untouched), so a header that asks for
    terabytes, or that disagrees with the weights, is refused before anything is allocated."""
    fam = family(name)
    if num_classes > MAX_CLASSES:
        raise InstsegError(f"{name}: {num_classes} categories, more than the limit of {MAX_CLASSES}")
    try:
        if weight_shapes is not None:
            _check_shapes(name, fam, config, num_classes, weight_shapes)
        return fam.build(config, num_classes)
    except (ValueError, TypeError) as exc:  # builders reject inconsistent configs with ValueError
        raise InstsegError(f"{name} config: {exc}") from None


def _check_shapes(
    name: str, fam: Family, config: Any, num_classes: int, weight_shapes: dict[str, tuple[int, ...]]
) -> None:
    with torch.random.fork_rng(devices=[]), torch.device("meta"):
        shapes = {k: tuple(v.shape) for k, v in fam.build(config, num_classes).state_dict().items()}
    size = sum(math.prod(s) for s in shapes.values())
    if size > MAX_PARAMETERS:
        raise InstsegError(
            f"{name} config: {size / 1e9:.1f} billion weights, more than the limit of "
            f"{MAX_PARAMETERS / 1e9:.0f} billion (a corrupt checkpoint header?)"
        )
    differ = [k for k, s in shapes.items() if k in weight_shapes and weight_shapes[k] != s]
    if differ:
        k = differ[0]
        raise CheckpointError(
            f"{name} config: {len(differ)} weights differ in shape from the checkpoint's "
            f"(first: {k}, {list(shapes[k])} vs {list(weight_shapes[k])})"
        )


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
