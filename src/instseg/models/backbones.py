"""ResNet and MobileNetV3 + FPN backbones with trainable normalisation, for training from scratch.

torchvision's detection builders freeze BatchNorm because they expect ImageNet
weights; from scratch that leaves the network unnormalised, so the norm here is
GroupNorm or ordinary BatchNorm (``frozen_bn`` remains for pretrained weights).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn
from torchvision.models import mobilenet_v3_large, mobilenet_v3_small, resnet
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.ops import FrozenBatchNorm2d
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool, LastLevelP6P7

from instseg.errors import CheckpointError


def resnet18_half(
    weights: None = None, norm_layer: Callable[[int], nn.Module] = nn.BatchNorm2d
) -> resnet.ResNet:
    """ResNet-18 with half the channels in every stage (32-64-128-256): a quarter of the FLOPs.

    The mobile option for CPUs with fast dense convolutions: its 3x3 convs run
    many times faster per FLOP than MobileNetV3's depthwise and expansion layers
    at high resolution, and its stride-4 stage has two residual blocks where
    MobileNetV3-Large has three thin layers. torchvision's blocks and stem, so
    folding and the ResNet weight layout apply unchanged.
    """
    if weights is not None:
        raise ValueError("resnet18_half has no published weights; load a local file with backbone_weights")
    net = resnet.ResNet(resnet.BasicBlock, [2, 2, 2, 2], norm_layer=norm_layer)
    width = 32
    net.inplanes = width
    net.conv1 = nn.Conv2d(3, width, kernel_size=7, stride=2, padding=3, bias=False)
    net.bn1 = norm_layer(width)
    net.layer1 = net._make_layer(resnet.BasicBlock, width, 2)
    for i in (2, 3, 4):
        setattr(net, f"layer{i}", net._make_layer(resnet.BasicBlock, width * 2 ** (i - 1), 2, stride=2))
    net.fc = nn.Linear(width * 8, 1000)
    for m in net.modules():  # torchvision's ResNet initialisation for the rebuilt layers
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d | nn.GroupNorm):
            nn.init.constant_(m.weight, 1)
            nn.init.constant_(m.bias, 0)
    return net


RESNETS: dict[str, Callable[..., resnet.ResNet]] = {
    "resnet18": resnet.resnet18,
    "resnet18_half": resnet18_half,
    "resnet34": resnet.resnet34,
    "resnet50": resnet.resnet50,
}
# MobileNetV3 blocks ending the stride-4/8/16/32 stages, and their channels (torchvision's layouts)
MOBILENETS: dict[str, tuple[Callable[..., nn.Module], dict[int, tuple[str, int]]]] = {
    "mobilenet_v3_large": (
        mobilenet_v3_large,
        {1: ("3", 24), 2: ("6", 40), 3: ("12", 112), 4: ("16", 960)},
    ),
    "mobilenet_v3_small": (
        mobilenet_v3_small,
        {1: ("1", 16), 2: ("3", 24), 3: ("8", 48), 4: ("12", 576)},
    ),
}
BACKBONES = (*RESNETS, *MOBILENETS)


def norm_layer(kind: str) -> Callable[[int], nn.Module]:
    if kind == "gn":
        return lambda channels: nn.GroupNorm(min(32, channels // 4), channels)
    if kind == "bn":
        return nn.BatchNorm2d
    if kind == "frozen_bn":
        return FrozenBatchNorm2d
    raise ValueError(f"unknown norm {kind!r}; expected gn, bn or frozen_bn")


def build_trunk(
    name: str = "resnet18",
    norm: str = "gn",
    returned_layers: tuple[int, ...] = (1, 2, 3, 4),
    weights: str | Path | None = None,
) -> tuple[nn.Module, dict[str, str], list[int]]:
    """A classification trunk, the names of its stages ``returned_layers`` (1..4: strides 4, 8, 16,
    32) as ``IntermediateLayerGetter`` wants them, and their channels.

    ``weights``: a local torchvision state dict of the same trunk (.pth or
    .safetensors). MobileNetV3 is the mobile option (use ``norm="bn"``: its
    channel counts do not all split into GroupNorm groups).
    """
    if name in RESNETS:
        trunk = RESNETS[name](weights=None, norm_layer=norm_layer(norm))
        if weights is not None:
            load_backbone_weights(trunk, weights)
        stage_channels = trunk.inplanes // 8  # output channels of layer1
        channels = [stage_channels * 2 ** (i - 1) for i in returned_layers]
        return trunk, {f"layer{i}": str(k) for k, i in enumerate(returned_layers)}, channels
    if name in MOBILENETS:
        build, stages = MOBILENETS[name]
        net = build(weights=None, norm_layer=norm_layer(norm))
        if weights is not None:
            load_backbone_weights(net, weights)
        channels = [stages[i][1] for i in returned_layers]
        return net.features, {stages[i][0]: str(k) for k, i in enumerate(returned_layers)}, channels
    raise ValueError(f"unknown backbone {name!r}; expected one of {', '.join(BACKBONES)}")


def build_fpn_backbone(
    name: str = "resnet18",
    norm: str = "gn",
    fpn_channels: int = 256,
    returned_layers: tuple[int, ...] = (1, 2, 3, 4),
    weights: str | Path | None = None,
    extra: str = "maxpool",
    fpn_norm: str | None = None,
) -> BackboneWithFPN:
    """``build_trunk`` + an FPN on its stages. ``extra`` adds the levels above the trunk: one
    max-pooled level (Mask R-CNN's P6) or two strided convolutions on the top level (RetinaNet/FCOS's
    P6, P7). The FPN's convolutions are normalised like the trunk when it has GroupNorm, by
    ``fpn_norm`` when given, and not at all otherwise."""
    if extra not in ("maxpool", "p6p7"):
        raise ValueError(f"unknown extra FPN levels {extra!r}; expected maxpool or p6p7")
    body, return_layers, in_channels = build_trunk(name, norm, returned_layers, weights)
    return BackboneWithFPN(
        body,
        return_layers=return_layers,
        in_channels_list=in_channels,
        out_channels=fpn_channels,
        extra_blocks=LastLevelMaxPool() if extra == "maxpool" else LastLevelP6P7(fpn_channels, fpn_channels),
        norm_layer=norm_layer(fpn_norm) if fpn_norm else norm_layer(norm) if norm == "gn" else None,
    )


def load_backbone_weights(trunk: nn.Module, path: str | Path) -> None:
    """Load ImageNet-style trunk weights from a local file; the classifier head is ignored."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: backbone weights not found")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path))
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
    head = ("fc.", "classifier.")
    state = {k: v for k, v in state.items() if not k.startswith(head)}
    try:
        missing, unexpected = trunk.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # tensors of the wrong shape
        first = str(exc).splitlines()[-1].strip()
        raise CheckpointError(f"{path}: not a matching backbone state dict ({first})") from None
    missing = [k for k in missing if not k.startswith(head)]
    if missing or unexpected:
        raise CheckpointError(
            f"{path}: not a matching backbone state dict (missing {missing[:3]}, unexpected {unexpected[:3]})"
        )
