"""CondInst's dynamic mask head: a tiny per-instance FCN whose weights are predicted, run for all at once.

Each instance brings its own parameters (for a 3-layer head of width 8 on 8
mask channels: 169 numbers) and its location. Its input is the shared mask
feature map plus the coordinates of every pixel relative to that location, so
the same features give a different mask for every instance. All layers are
1x1 convolutions, which for N instances are N small matrix products: one
batched ``matmul`` per layer, no Python loop over instances, and the relative
coordinates never materialise per instance.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def layer_shapes(in_channels: int, width: int, layers: int) -> list[tuple[int, int]]:
    """(out, in) of each dynamic 1x1 conv; the input gets two coordinate channels, the output is 1."""
    if layers < 1:
        raise ValueError(f"the dynamic mask head needs at least one layer, got {layers}")
    dims = [in_channels + 2] + [width] * (layers - 1) + [1]
    return [(dims[i + 1], dims[i]) for i in range(layers)]


def num_parameters(in_channels: int, width: int, layers: int) -> int:
    return sum(o * i + o for o, i in layer_shapes(in_channels, width, layers))


def blob_parameters(in_channels: int, width: int, layers: int, radius: float, peak: float = 4.0) -> Tensor:
    """Parameters of a head that ignores the features and answers a diamond of ``radius`` (in offset
    units) around its location: logit ``peak * (1 - (|dx| + |dy|) / radius)``. Layer 1 splits each
    offset into its positive and negative part, layer 2 adds them up, later layers pass that on and the
    last one turns it into the logit. An untrained hypernetwork whose output is these parameters plus a
    little noise starts from "the object is around here" rather than from a constant mask."""
    if layers < 2 or width < 4:
        raise ValueError(f"a blob needs at least 2 layers of width 4, got {layers} of width {width}")
    shapes = layer_shapes(in_channels, width, layers)
    weights = [torch.zeros(o, i) for o, i in shapes]
    biases = [torch.zeros(o) for o, _ in shapes]
    x, y = in_channels, in_channels + 1
    weights[0][0, x], weights[0][1, x], weights[0][2, y], weights[0][3, y] = 1.0, -1.0, 1.0, -1.0
    for weight in weights[1:-1]:
        weight[0, : 4 if weight is weights[1] else 1] = 1.0
    weights[-1][0, : 4 if layers == 2 else 1] = -peak / radius
    biases[-1][0] = peak
    return torch.cat([w.flatten() for w in weights] + biases)


def dynamic_mask_logits(
    params: Tensor,
    features: Tensor,
    pixels: Tensor,
    locations: Tensor,
    soi: Tensor,
    width: int,
    layers: int,
) -> Tensor:
    """Mask logits ``[N, P]`` of N instances at P pixels.

    ``params`` [N, num_parameters]: weights of every layer, then biases;
    ``features`` [C, P] shared by all, or [N, C, P] one window each; ``pixels``
    [2, P] or [N, 2, P] the (x, y) input-pixel centres of those P pixels;
    ``locations`` [N, 2] where each instance was predicted; ``soi`` [N] the size
    that normalises its relative coordinates (its level's object size).
    """
    n = params.shape[0]
    c = features.shape[-2]
    shapes = layer_shapes(c, width, layers)
    sizes = [o * i for o, i in shapes] + [o for o, _ in shapes]
    chunks = torch.split(params, sizes, dim=1)
    weights = [chunk.view(n, o, i) for chunk, (o, i) in zip(chunks[:layers], shapes, strict=True)]
    biases = [chunk[:, :, None] for chunk in chunks[layers:]]
    # layer 1 on [features; (location - pixel) / soi], split so that coordinates need no per-instance copy
    w_feat, w_xy = weights[0][:, :, :c], weights[0][:, :, c:]
    x = torch.matmul(w_feat, features)
    x = x + (torch.bmm(w_xy, locations[:, :, None]) - torch.matmul(w_xy, pixels)) / soi[:, None, None]
    x = x + biases[0]
    for weight, bias in zip(weights[1:], biases[1:], strict=True):
        x = torch.bmm(weight, F.relu(x)) + bias
    return x[:, 0]
