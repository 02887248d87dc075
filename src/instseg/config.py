"""Typed configs: the training config, the base every model config extends, and the dict/YAML/flag
plumbing every config shares.

Model configs live beside their models and extend ``ModelConfig``. Any config dataclass round-trips
through a plain dict (JSON in checkpoints, YAML from users, ``--flags`` on the
command line) with its field types enforced, so a typo fails loudly.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml

from instseg.errors import InstsegError

C = TypeVar("C")


BackboneName = Literal[
    "resnet18", "resnet18_half", "resnet34", "resnet50", "mobilenet_v3_large", "mobilenet_v3_small"
]
NormName = Literal["gn", "bn", "frozen_bn"]


@dataclass
class ModelConfig:
    """The fields every family's config has: its trunk, how images are resized, and what it outputs."""

    backbone: BackboneName = "resnet18"
    norm: NormName = "gn"  # GroupNorm or BatchNorm to train from scratch; frozen BatchNorm for fine-tuning
    backbone_weights: str | None = None  # local torchvision state dict of the trunk
    scale: float | None = None  # fixed resize factor; None: shorter side to min_size
    min_size: int = 800
    max_size: int = 1333  # longest side after resizing, in both modes
    detections_per_image: int = 100
    mask_threshold: float = 0.5  # probability above which a pixel is in an output mask


@dataclass
class TrainConfig:
    data: str = ""  # COCO JSON or dataset folder (annotations/instances_train*.json)
    images: str | None = None  # image folder, when it cannot be guessed from data
    val_data: str | None = None  # default: the val split of a dataset folder
    val_images: str | None = None
    out: str = "runs/train"
    overwrite: bool = False  # replace a training run already in out (else refused, unless resuming it)
    steps: int = 1000
    time_budget_s: float | None = None  # stop after this long; the schedule follows elapsed time
    batch_size: int = 4
    # repeat-factor sampling: images with classes in fewer than this fraction of the training images
    # are drawn sqrt(threshold / fraction) times as often (LVIS: 0.001); 0: off
    repeat_threshold: float = 0.0
    optimizer: Literal["adamw", "sgd"] = "adamw"
    lr: float = 3e-4
    weight_decay: float = 0.05
    backbone_lr: float = 1.0  # the backbone's lr as a fraction of lr (fine-tuning: e.g. 0.1; 0 freezes it)
    init: str | None = None  # start from this checkpoint's weights (fine-tuning; its family and config)
    # "classifier": only the family's class layers learn; every other weight and BatchNorm statistic stays
    # as loaded. Decoupled classifier re-training (Kang et al., ICLR 2020): with ``init`` and a larger
    # ``repeat_threshold``, the features learnt on the natural distribution, the classifier re-balanced
    train_only: Literal["all", "classifier"] = "all"
    momentum: float = 0.9
    warmup_steps: int = 100
    schedule: Literal["cosine", "step", "constant"] = "cosine"
    min_lr_ratio: float = 0.02
    clip_grad: float | None = 10.0
    ema: bool = False
    precise_bn_batches: int = 200  # BatchNorm statistics averaged over this many batches at the end; 0: off
    ema_decay: float = 0.999
    # autocast: bf16 on CPU or CUDA; fp16 (with a gradient scaler) on CUDA only
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    compile: bool = False  # torch.compile the backbone for training (needs a C++ compiler on CPU)
    channels_last: bool = False  # NHWC weights and activations: faster for BatchNorm/MobileNet models on CPU
    device: str = "auto"
    threads: int | None = None  # torch CPU threads
    workers: int = 2
    seed: int = 0
    log_every: int = 10
    eval_every: int = 0  # steps between evaluations; 0: only at the end
    checkpoint_every: int = 500
    keep_every: int = 0  # also keep <out>/snapshots/step_N every N steps (learning curves); 0: never
    eval_max_dets: tuple[int, ...] = (1, 10, 100)
    boundary_ap: bool = True
    # augmentation (instseg.data.transforms.TrainTransform)
    scale_range: tuple[float, float] = (1.0, 1.0)
    crop_size: int | None = None
    # objects with less than this fraction of their area inside a crop are left out of its targets, so the
    # crop's edges are not lined with slivers to detect (YOLOv5's box candidates keep 10% of a box's area)
    crop_min_visible: float = 0.0
    hflip: bool = True
    vflip: bool = False
    color_jitter: float = 0.0
    # copy-paste (instseg.data.copy_paste): the chance an image gets up to copy_paste_objects objects of
    # other training images pasted on it; copy_paste_balance 1 draws them class-balanced (long tail), 0
    # as they come
    copy_paste: float = 0.0
    copy_paste_objects: int = 3
    copy_paste_balance: float = 0.0


def _coerce(value: Any, hint: Any, name: str) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        is_none = value is None or (isinstance(value, str) and value.lower() in ("none", "null"))
        if is_none and type(None) in args:
            return None
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(value, arg, name)
            except (TypeError, ValueError):
                continue
        raise ValueError(f"{name}: cannot use {value!r} as {hint}")
    if origin is Literal:
        for choice in args:
            if value == choice or str(value) == str(choice):
                return choice
        raise ValueError(f"{name}: {value!r} is not one of {list(args)}")
    if origin is tuple:
        if isinstance(value, str | bytes) or not isinstance(value, list | tuple):
            raise ValueError(f"{name}: expected a list, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, args[0], name) for v in value)
        if len(args) != len(value):
            raise ValueError(f"{name}: expected {len(args)} values, got {len(value)}")
        return tuple(_coerce(v, a, name) for v, a in zip(value, args, strict=True))
    if hint is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
            return value.lower() in ("true", "yes", "1")
        raise ValueError(f"{name}: expected true/false, got {value!r}")
    if hint is int:
        if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
            raise ValueError(f"{name}: expected an integer, got {value!r}")
        return int(value)
    if hint is float:
        if isinstance(value, bool):
            raise ValueError(f"{name}: expected a number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str | Path):
            raise ValueError(f"{name}: expected a string, got {value!r}")
        return str(value)
    return value


def config_from_dict(cls: type[C], values: dict[str, Any], base: C | None = None) -> C:
    """Build ``cls`` from ``values`` on top of ``base`` (or the defaults), checking names and types."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise InstsegError(f"{cls.__name__}: unknown field(s) {', '.join(unknown)}")
    try:
        coerced = {k: _coerce(v, hints[k], k) for k, v in values.items()}
    except ValueError as exc:
        raise InstsegError(f"{cls.__name__}: {exc}") from None
    return dataclasses.replace(base if base is not None else cls(), **coerced)


def config_to_dict(config: Any) -> dict[str, Any]:
    return {f.name: _plain(getattr(config, f.name)) for f in dataclasses.fields(config)}


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def field_values(pairs: Iterable[str]) -> dict[str, Any]:
    """``["nms_threshold=0.5", "mask_rescore=false"]`` -> fields with YAML values (``--set``)."""
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise InstsegError(f"{pair!r}: expected FIELD=VALUE")
        out[key] = yaml.safe_load(value)
    return out


def load_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise InstsegError(f"{path}: cannot read ({exc.strerror})") from None
    except yaml.YAMLError as exc:
        raise InstsegError(f"{path}: malformed YAML ({str(exc).splitlines()[0]})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise InstsegError(f"{path}: expected a mapping of config fields")
    return data


def add_config_flags(parser: argparse.ArgumentParser, cls: type, title: str) -> None:
    """One ``--field-name`` flag per dataclass field; unset flags stay out of the namespace."""
    group = parser.add_argument_group(title)
    hints = typing.get_type_hints(cls)
    defaults = cls()
    for f in dataclasses.fields(cls):
        hint = hints[f.name]
        flag = "--" + f.name.replace("_", "-")
        default = getattr(defaults, f.name)
        kwargs: dict[str, Any] = {
            "dest": f.name,
            "default": argparse.SUPPRESS,
            "help": f"(default: {default})",
        }
        inner = [a for a in typing.get_args(hint) if a is not type(None)]
        base = (
            inner[0]
            if typing.get_origin(hint) in (typing.Union, types.UnionType) and len(inner) == 1
            else hint
        )
        if base is bool:
            group.add_argument(flag, action=argparse.BooleanOptionalAction, **kwargs)
        elif typing.get_origin(base) is tuple:
            group.add_argument(flag, nargs="+", metavar="V", **kwargs)
        elif typing.get_origin(base) is Literal:
            group.add_argument(flag, choices=[str(c) for c in typing.get_args(base)], **kwargs)
        else:
            group.add_argument(flag, metavar=getattr(base, "__name__", "V").upper(), **kwargs)


def split_fields(values: dict[str, Any], *classes: type) -> list[dict[str, Any]]:
    """Share out flat fields (from YAML or flags) among config classes; unknown names are an error."""
    parts: list[dict[str, Any]] = [{} for _ in classes]
    for key, value in values.items():
        for part, cls in zip(parts, classes, strict=True):
            if key in {f.name for f in dataclasses.fields(cls)}:
                part[key] = value
                break
        else:
            raise InstsegError(f"unknown config field {key!r}")
    return parts
