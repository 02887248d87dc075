"""Inference-only rewrites: BatchNorm folded into the convolution before it, and channels-last memory.

In eval mode a BatchNorm is a per-channel affine map, so it can be folded
into the preceding convolution's weights and bias (``torch.nn.utils.fusion``
does the arithmetic); that saves one pass over every feature map. Channels-last
(NHWC) memory is what oneDNN's CPU kernels want, above all for depthwise
convolutions (BENCHMARKS.md measures both). Both change the module tree or its tensors' layout, so they
are applied to a copy that is only used for inference; checkpoints keep the
trained structure.
"""

from __future__ import annotations

import copy
import itertools

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_weights
from torchvision.models._utils import IntermediateLayerGetter
from torchvision.models.resnet import BasicBlock, Bottleneck
from torchvision.ops.misc import FrozenBatchNorm2d

from instseg.models.conv_tower import LevelNorms, PerLevel

NORMS = (nn.BatchNorm2d, FrozenBatchNorm2d)


def _foldable(norm: nn.Module) -> bool:
    return isinstance(norm, NORMS) and getattr(norm, "running_mean", None) is not None


def fold(conv: nn.Conv2d, norm: nn.Module) -> nn.Conv2d:
    """A copy of ``conv`` that computes ``norm(conv(x))`` with ``norm``'s running statistics."""
    folded = copy.deepcopy(conv)
    folded.weight, folded.bias = fuse_conv_bn_weights(
        conv.weight, conv.bias, norm.running_mean, norm.running_var, norm.eps, norm.weight, norm.bias
    )
    return folded


def _fold_sequence(seq: nn.Module) -> int:
    """Conv -> norm neighbours in a module that runs its children in order: a Sequential
    (Conv2dNormActivation, conv towers) or the trunk's ``IntermediateLayerGetter`` (ResNet's stem)."""
    names = list(seq._modules)
    returned = getattr(seq, "return_layers", {})
    count = 0
    for a, b in itertools.pairwise(names):
        conv, norm = seq._modules[a], seq._modules[b]
        if not isinstance(conv, nn.Conv2d) or a in returned:
            continue
        if _foldable(norm):
            seq._modules[a], seq._modules[b] = fold(conv, norm), nn.Identity()
            count += 1
        elif isinstance(norm, LevelNorms) and all(_foldable(n) for n in norm):
            # a convolution shared by pyramid levels becomes one folded copy per level
            seq._modules[a], seq._modules[b] = nn.Identity(), PerLevel([fold(conv, n) for n in norm])
            count += len(norm)
    return count


def _fold_block(block: BasicBlock | Bottleneck) -> int:
    """torchvision ResNet blocks: ``convN`` feeds ``bnN`` (N = 1, 2, and 3 in a Bottleneck)."""
    count = 0
    for i in (1, 2, 3) if isinstance(block, Bottleneck) else (1, 2):
        norm = getattr(block, f"bn{i}")
        if _foldable(norm):
            setattr(block, f"conv{i}", fold(getattr(block, f"conv{i}"), norm))
            setattr(block, f"bn{i}", nn.Identity())
            count += 1
    return count


@torch.no_grad()
def fold_batch_norms(model: nn.Module) -> int:
    """Fold, in place, every BatchNorm that directly follows a convolution; returns how many.

    Only valid in eval mode (the running statistics are frozen in). GroupNorm
    depends on the input and is left alone.
    """
    count = 0
    for module in list(model.modules()):
        if isinstance(module, nn.Sequential | IntermediateLayerGetter):
            count += _fold_sequence(module)
        elif isinstance(module, BasicBlock | Bottleneck):
            count += _fold_block(module)
    return count


def inference_model(model: nn.Module, channels_last: bool | None = None) -> nn.Module:
    """An eval-mode copy of ``model`` with BatchNorms folded, each module's own inference rewrite
    applied (any module may define ``prepare_for_inference()``, as ``FCOSHead`` does to merge its
    output convolutions) and, by default on CPU, channels-last."""
    fast = copy.deepcopy(model).eval()
    fold_batch_norms(fast)
    for module in fast.modules():
        prepare = getattr(module, "prepare_for_inference", None)
        if callable(prepare):
            prepare()
    if channels_last is None:
        channels_last = all(p.device.type == "cpu" for p in fast.parameters())
    return fast.to(memory_format=torch.channels_last) if channels_last else fast
