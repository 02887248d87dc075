"""SAM's image encoder: a plain ViT over 16-px patches, windowed attention with a few global blocks,
decomposed relative positions, and a convolutional neck down to the prompt width.

Built with the official shapes (``vit_b``/``vit_l``/``vit_h`` in ``model.py``),
its tensors map one to one onto segment-anything's checkpoints
(``importers/sam.py``). Windowed blocks attend within 14x14-token windows,
which keeps a 64x64-token grid affordable; the global blocks mix the windows.
Attention runs through ``scaled_dot_product_attention`` with the
relative-position terms as its additive mask.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F


class ChannelLayerNorm(nn.LayerNorm):
    """LayerNorm over the channels of each pixel of an NCHW map."""

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


def relative_table(table: Tensor, size: int) -> Tensor:
    """``[size, size, C]``: the embedding of each query-key offset along one axis, the table
    resampled linearly when it was learnt for another size."""
    if table.shape[0] != 2 * size - 1:
        table = F.interpolate(table.T[None], size=2 * size - 1, mode="linear")[0].T
    offsets = torch.arange(size, device=table.device)
    return table[offsets[:, None] - offsets[None, :] + size - 1]


class RelPosAttention(nn.Module):
    """Multi-head self-attention over an ``[B, H, W, C]`` grid with decomposed relative positions:
    the bias of query (y, x) towards key (y', x') is q . Rh[y - y'] + q . Rw[x - x']."""

    def __init__(self, dim: int, heads: int, grid: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.rel_h = nn.Parameter(torch.zeros(2 * grid - 1, dim // heads))
        self.rel_w = nn.Parameter(torch.zeros(2 * grid - 1, dim // heads))

    def forward(self, x: Tensor) -> Tensor:
        b, h, w, c = x.shape
        q, k, v = self.qkv(x).reshape(b, h * w, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
        grid_q = q.reshape(b, self.heads, h, w, -1)
        bias_h = torch.einsum("bnhwc,hkc->bnhwk", grid_q, relative_table(self.rel_h, h))
        bias_w = torch.einsum("bnhwc,wkc->bnhwk", grid_q, relative_table(self.rel_w, w))
        bias = (bias_h[..., :, None] + bias_w[..., None, :]).reshape(b, self.heads, h * w, h * w)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
        return self.proj(out.transpose(1, 2).reshape(b, h, w, c))


def to_windows(x: Tensor, size: int) -> tuple[Tensor, tuple[int, int]]:
    """``[B, H, W, C]`` -> ``[B * windows, size, size, C]``, padding H and W up to multiples of size."""
    b, h, w, c = x.shape
    ph, pw = -h % size, -w % size
    x = F.pad(x, (0, 0, 0, pw, 0, ph))
    hp, wp = h + ph, w + pw
    x = x.reshape(b, hp // size, size, wp // size, size, c).transpose(2, 3)
    return x.reshape(-1, size, size, c), (hp, wp)


def from_windows(x: Tensor, size: int, padded: tuple[int, int], hw: tuple[int, int]) -> Tensor:
    hp, wp = padded
    c = x.shape[-1]
    x = x.reshape(-1, hp // size, wp // size, size, size, c).transpose(2, 3).reshape(-1, hp, wp, c)
    return x[:, : hw[0], : hw[1]]


class ViTBlock(nn.Module):
    def __init__(self, dim: int, heads: int, window: int, grid: int) -> None:
        super().__init__()
        self.window = window  # 0: global attention over the whole grid
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = RelPosAttention(dim, heads, window or grid)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def forward(self, x: Tensor) -> Tensor:
        y = self.norm1(x)
        if self.window:
            hw = (y.shape[1], y.shape[2])
            windows, padded = to_windows(y, self.window)
            y = from_windows(self.attn(windows), self.window, padded, hw)
        else:
            y = self.attn(y)
        x = x + y
        return x + self.mlp(self.norm2(x))


class ViTImageEncoder(nn.Module):
    """Image ``[B, 3, S, S]`` (normalised, padded) -> embedding ``[B, out_dim, S / patch, S / patch]``."""

    def __init__(
        self,
        image_size: int,
        patch: int,
        dim: int,
        depth: int,
        heads: int,
        global_blocks: tuple[int, ...],
        window: int,
        out_dim: int,
    ) -> None:
        super().__init__()
        grid = image_size // patch
        self.patch_embed = nn.Conv2d(3, dim, patch, stride=patch)
        self.pos_embed = nn.Parameter(torch.zeros(1, grid, grid, dim))
        self.blocks = nn.ModuleList(
            ViTBlock(dim, heads, 0 if i in global_blocks else window, grid) for i in range(depth)
        )
        self.neck = nn.Sequential(
            nn.Conv2d(dim, out_dim, 1, bias=False),
            ChannelLayerNorm(out_dim, eps=1e-6),
            nn.Conv2d(out_dim, out_dim, 3, padding=1, bias=False),
            ChannelLayerNorm(out_dim, eps=1e-6),
        )

    def forward(self, images: Tensor) -> Tensor:
        x = self.patch_embed(images).permute(0, 2, 3, 1)
        pos = self.pos_embed
        if pos.shape[1:3] != x.shape[1:3]:  # another input size than the one the table was made for
            pos = F.interpolate(pos.permute(0, 3, 1, 2), size=x.shape[1:3], mode="bicubic").permute(
                0, 2, 3, 1
            )
        x = x + pos
        for block in self.blocks:
            x = block(x)
        return self.neck(x.permute(0, 3, 1, 2))
