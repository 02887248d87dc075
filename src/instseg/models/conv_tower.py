"""3x3 conv + norm + ReLU towers, the building block of every dense head and mask branch.

A head shared by several pyramid levels runs the same convolutions on each
level; ``levels`` gives such a tower one BatchNorm per level (see
``LevelNorms``).
"""

from __future__ import annotations

from torch import Tensor, nn

from instseg.models.backbones import norm_layer


class PerLevel(nn.ModuleList):
    """One module per pyramid level; a ``ConvTower`` calls the one of the level it runs on."""


class LevelNorms(PerLevel):
    """One BatchNorm per pyramid level behind a convolution the levels share.

    In training each level's call normalises by its own batch statistics, but
    a single BatchNorm's running statistics average all levels, so at
    inference every level is normalised wrongly (BENCHMARKS.md shows the cost
    on DSB2018). Separate statistics per level,
    as EfficientDet's shared heads keep them, remove that mismatch.
    """


class ConvTower(nn.Sequential):
    """Conv + norm + ReLU blocks; ``forward(x, level)`` uses the level's own module where each has one."""

    def forward(self, x: Tensor, level: int = 0) -> Tensor:
        for layer in self:
            x = layer[level](x) if isinstance(layer, PerLevel) else layer(x)
        return x


def conv_tower(
    cin: int, channels: int, depth: int, norm: str, levels: int = 1, separable: bool = False
) -> ConvTower:
    """``depth`` 3x3 conv + norm + ReLU blocks: the towers of FCOS-style heads and mask branches.

    A tower shared by ``levels`` > 1 pyramid levels gets per-level BatchNorm
    (``LevelNorms``); GroupNorm has no running statistics and stays shared.
    ``separable``: each 3x3 conv is a depthwise 3x3 then a pointwise 1x1 (SSDLite's
    heads), ~8x fewer multiply-adds at 64 channels, for mobile models whose
    finest level's head costs more than their trunk.
    """
    layers: list[nn.Module] = []
    for i in range(depth):
        if norm == "bn" and levels > 1:
            normalise: nn.Module = LevelNorms([norm_layer(norm)(channels) for _ in range(levels)])
        else:
            normalise = norm_layer(norm)(channels)
        c = cin if i == 0 else channels
        if separable:
            depthwise = nn.Conv2d(c, c, 3, padding=1, groups=c, bias=False)
            layers += [depthwise, nn.Conv2d(c, channels, 1, bias=False)]
        else:
            layers.append(nn.Conv2d(c, channels, 3, padding=1, bias=False))
        layers += [
            normalise,
            nn.ReLU(inplace=True),
        ]
    return ConvTower(*layers)
