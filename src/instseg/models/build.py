"""The model families by name: their config class, builder and presets.

A plain dict of plain functions: the name is what the CLI and checkpoints store,
and the mapping is read here in one place, not assembled by decorators.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from instseg.config import config_from_dict
from instseg.errors import InstsegError
from instseg.models import condinst, mask2former, mask_rcnn, solov2, yolact


@dataclass(frozen=True)
class Family:
    config: type
    build: Callable[[Any, int], nn.Module]
    presets: dict[str, Callable[[], Any]] = field(default_factory=dict)


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
            "light": mask2former.light_preset,
        },
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


def build_model(name: str, config: Any, num_classes: int) -> nn.Module:
    try:
        return family(name).build(config, num_classes)
    except ValueError as exc:  # builders reject inconsistent configs with ValueError
        raise InstsegError(f"{name} config: {exc}") from None


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
