"""SAM's two-way transformer: prompt tokens and image embedding attend to each other.

Each block: tokens self-attend, tokens attend to the image, an MLP on the
tokens, then the image attends to the tokens, so the embedding itself is
updated by the prompt before masks are read from it. Positional encodings are
added to queries and keys at every attention (not to values), the first
block's self-attention excepted. Cross-attention projects to half the width
(``downsample``), which halves its cost over the 4096 image tokens.
"""

from __future__ import annotations

from torch import Tensor, nn
from torch.nn import functional as F


class TokenAttention(nn.Module):
    def __init__(self, dim: int, heads: int, downsample: int = 1) -> None:
        super().__init__()
        inner = dim // downsample
        self.heads = heads
        self.q_proj, self.k_proj, self.v_proj = (
            nn.Linear(dim, inner),
            nn.Linear(dim, inner),
            nn.Linear(dim, inner),
        )
        self.out_proj = nn.Linear(inner, dim)

    def _split(self, x: Tensor) -> Tensor:
        b, n, c = x.shape
        return x.reshape(b, n, self.heads, c // self.heads).transpose(1, 2)

    def forward(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        q, k, v = self._split(self.q_proj(q)), self._split(self.k_proj(k)), self._split(self.v_proj(v))
        out = F.scaled_dot_product_attention(q, k, v)
        return self.out_proj(out.transpose(1, 2).flatten(2))


class TwoWayBlock(nn.Module):
    def __init__(self, dim: int, heads: int, mlp: int, downsample: int, first: bool) -> None:
        super().__init__()
        self.first = first  # the first block's tokens are their own positions: no encoding added
        self.self_attn = TokenAttention(dim, heads)
        self.norm1 = nn.LayerNorm(dim)
        self.token_to_image = TokenAttention(dim, heads, downsample)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp), nn.ReLU(), nn.Linear(mlp, dim))
        self.norm3 = nn.LayerNorm(dim)
        self.image_to_token = TokenAttention(dim, heads, downsample)
        self.norm4 = nn.LayerNorm(dim)

    def forward(
        self, tokens: Tensor, image: Tensor, token_pos: Tensor, image_pos: Tensor
    ) -> tuple[Tensor, Tensor]:
        if self.first:
            tokens = self.self_attn(tokens, tokens, tokens)
        else:
            q = tokens + token_pos
            tokens = tokens + self.self_attn(q, q, tokens)
        tokens = self.norm1(tokens)
        tokens = self.norm2(tokens + self.token_to_image(tokens + token_pos, image + image_pos, image))
        tokens = self.norm3(tokens + self.mlp(tokens))
        image = self.norm4(image + self.image_to_token(image + image_pos, tokens + token_pos, tokens))
        return tokens, image


class TwoWayTransformer(nn.Module):
    def __init__(self, dim: int, depth: int, heads: int, mlp: int, downsample: int = 2) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(TwoWayBlock(dim, heads, mlp, downsample, i == 0) for i in range(depth))
        self.final_token_to_image = TokenAttention(dim, heads, downsample)
        self.norm_final = nn.LayerNorm(dim)

    def forward(self, image: Tensor, image_pos: Tensor, tokens: Tensor) -> tuple[Tensor, Tensor]:
        """Image ``[B, C, h, w]`` and its encoding, tokens ``[B, N, C]`` (also their own positional
        encoding) -> (tokens ``[B, N, C]``, image ``[B, h * w, C]``)."""
        image = image.flatten(2).transpose(1, 2)
        image_pos = image_pos.flatten(2).transpose(1, 2)
        token_pos, x = tokens, tokens
        for block in self.blocks:
            x, image = block(x, image, token_pos, image_pos)
        x = self.norm_final(x + self.final_token_to_image(x + token_pos, image + image_pos, image))
        return x, image
