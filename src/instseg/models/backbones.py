"""ResNet + FPN backbones with trainable normalisation, for training from scratch.

torchvision's detection builders freeze BatchNorm because they expect ImageNet
weights; from scratch that leaves the network unnormalised, so the norm here is
GroupNorm or ordinary BatchNorm (``frozen_bn`` remains for pretrained weights).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn
from torchvision.models import resnet
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.ops import FrozenBatchNorm2d
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

from instseg.errors import CheckpointError

RESNETS: dict[str, Callable[..., resnet.ResNet]] = {
    "resnet18": resnet.resnet18,
    "resnet34": resnet.resnet34,
    "resnet50": resnet.resnet50,
}


def norm_layer(kind: str) -> Callable[[int], nn.Module]:
    if kind == "gn":
        return lambda channels: nn.GroupNorm(min(32, channels // 4), channels)
    if kind == "bn":
        return nn.BatchNorm2d
    if kind == "frozen_bn":
        return FrozenBatchNorm2d
    raise ValueError(f"unknown norm {kind!r}; expected gn, bn or frozen_bn")


def build_resnet_fpn(
    name: str = "resnet18",
    norm: str = "gn",
    fpn_channels: int = 256,
    returned_layers: tuple[int, ...] = (1, 2, 3, 4),
    weights: str | Path | None = None,
) -> BackboneWithFPN:
    """ResNet trunk + FPN; ``weights`` is a local torchvision ResNet state dict (.pth or .safetensors)."""
    if name not in RESNETS:
        raise ValueError(f"unknown backbone {name!r}; expected one of {sorted(RESNETS)}")
    trunk = RESNETS[name](weights=None, norm_layer=norm_layer(norm))
    if weights is not None:
        load_backbone_weights(trunk, weights)
    stage_channels = trunk.inplanes // 8  # output channels of layer1
    in_channels = [stage_channels * 2 ** (i - 1) for i in returned_layers]
    return BackboneWithFPN(
        trunk,
        return_layers={f"layer{i}": str(k) for k, i in enumerate(returned_layers)},
        in_channels_list=in_channels,
        out_channels=fpn_channels,
        extra_blocks=LastLevelMaxPool(),
        norm_layer=norm_layer(norm) if norm == "gn" else None,
    )


def load_backbone_weights(trunk: nn.Module, path: str | Path) -> None:
    """Load ImageNet-style ResNet weights from a local file; the classifier head is ignored."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: backbone weights not found")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path))
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
    state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    missing, unexpected = trunk.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.startswith("fc.")]
    if missing or unexpected:
        raise CheckpointError(
            f"{path}: not a matching ResNet state dict (missing {missing[:3]}, unexpected {unexpected[:3]})"
        )
