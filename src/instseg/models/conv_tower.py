"""3x3 conv + norm + ReLU towers, the building block of every dense head and mask branch.

A head shared by several pyramid levels runs the same convolutions on each
level; ``levels`` gives such a tower one BatchNorm per level (see
``LevelNorms``).
"""

from __future__ import annotations

from torch import Tensor, nn

from instseg.models.backbones import norm_layer


class LevelNorms(nn.ModuleList):
    """One BatchNorm per pyramid level behind a convolution the levels share.

    In training each level's call normalises by its own batch statistics, but
    a single BatchNorm's running statistics average all levels, so at
    inference every level is normalised wrongly (on DSB2018 a trained
    MobileNetV3 YOLACT's class loss doubled). Separate statistics per level,
    as EfficientDet's shared heads keep them, remove that mismatch.
    """


class ConvTower(nn.Sequential):
    """Conv + norm + ReLU blocks; ``forward(x, level)`` uses the level's own norm where each has one."""

    def forward(self, x: Tensor, level: int = 0) -> Tensor:
        for layer in self:
            x = layer[level](x) if isinstance(layer, LevelNorms) else layer(x)
        return x


def conv_tower(cin: int, channels: int, depth: int, norm: str, levels: int = 1) -> ConvTower:
    """``depth`` 3x3 conv + norm + ReLU blocks: the towers of FCOS-style heads and mask branches.

    A tower shared by ``levels`` > 1 pyramid levels gets per-level BatchNorm
    (``LevelNorms``); GroupNorm has no running statistics and stays shared.
    """
    layers: list[nn.Module] = []
    for i in range(depth):
        if norm == "bn" and levels > 1:
            normalise: nn.Module = LevelNorms([norm_layer(norm)(channels) for _ in range(levels)])
        else:
            normalise = norm_layer(norm)(channels)
        layers += [
            nn.Conv2d(cin if i == 0 else channels, channels, 3, padding=1, bias=False),
            normalise,
            nn.ReLU(inplace=True),
        ]
    return ConvTower(*layers)
