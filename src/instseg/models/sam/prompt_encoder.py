"""SAM's prompt encoder: points, box corners and a coarse mask as tokens and a dense map.

A point (x, y) in input pixels becomes random Fourier features of its position
plus a learnt embedding of its kind (negative, positive, box top-left, box
bottom-right). A prompt of points alone is padded with one "not a point"
token, as SAM was trained. A mask prompt (the previous low-resolution logits)
is downsampled 4x by two strided convolutions onto the embedding grid; without
one every pixel gets the learnt "no mask" vector.

With a ``click_radius`` (not in the official models), the clicks and the box
are also drawn as maps at the mask prompt's resolution, as interactive
segmentation models before SAM took them (RITM: a disk per positive and per
negative click), and downsampled the same way into the dense map. The
Fourier features of a point vary over about ``reference / (4 pi)`` pixels,
too smooth to tell apart nuclei a few pixels wide at the reference a CPU
preset can afford; the maps say exactly where the user clicked, at once.
With ``box_map`` and no ``click_radius`` only the box is drawn and a click
reaches the decoder as its token alone. Neither cures a short CPU budget: a
decoder trained for 30 minutes echoes a drawn click's disk, of any size, and
ignores an undrawn click (BENCHMARKS.md, "why one click reads back a blob").

With ``point_features`` (not in the official models either), each click's
token also carries the image embedding under the click, sampled bilinearly and
projected: the token then says what was clicked, not only where, so the
decoder can look for the cells that resemble it instead of first learning to
find the click's position in the embedding.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from instseg.models.sam.image_encoder import ChannelLayerNorm

NEGATIVE, POSITIVE, BOX_TOP_LEFT, BOX_BOTTOM_RIGHT = range(4)
PADDING = -1  # the label of the "not a point" token


class RandomFourierEncoding(nn.Module):
    """Positions in [0, 1]^2 -> ``[sin, cos]`` of 2 pi times their projection on fixed Gaussian
    frequencies (a buffer, saved with the weights, so that prompts and image agree)."""

    def __init__(self, features: int) -> None:
        super().__init__()
        self.register_buffer("frequencies", torch.randn(2, features))

    def encode(self, xy: Tensor) -> Tensor:
        angles = 2 * math.pi * ((2 * xy - 1) @ self.frequencies)
        return torch.cat([angles.sin(), angles.cos()], dim=-1)

    def grid(self, h: int, w: int, stride: int, reference: int) -> Tensor:
        """``[C, h, w]``: the encoding of every embedding cell's centre, ``stride`` input pixels apart."""
        device = self.frequencies.device
        ys = (torch.arange(h, device=device, dtype=torch.float32) + 0.5) * stride / reference
        xs = (torch.arange(w, device=device, dtype=torch.float32) + 0.5) * stride / reference
        xy = torch.stack(torch.meshgrid(xs, ys, indexing="xy"), dim=-1)
        return self.encode(xy).permute(2, 0, 1)

    def points(self, xy: Tensor, reference: int) -> Tensor:
        """Points ``[..., 2]`` in input pixels, ``reference`` pixels to the unit."""
        return self.encode(xy.float() / reference)


def downsampler(inputs: int, hidden: int, dim: int) -> nn.Sequential:
    """Maps at 4x the embedding's resolution -> ``dim`` channels on its grid."""
    quarter = hidden // 4
    return nn.Sequential(
        nn.Conv2d(inputs, quarter, 2, stride=2),
        ChannelLayerNorm(quarter, eps=1e-6),
        nn.GELU(),
        nn.Conv2d(quarter, hidden, 2, stride=2),
        ChannelLayerNorm(hidden, eps=1e-6),
        nn.GELU(),
        nn.Conv2d(hidden, dim, 1),
    )


def click_maps(
    points: tuple[Tensor, Tensor] | None,
    boxes: Tensor | None,
    size: tuple[int, int],
    cell: float,
    radius: float | Tensor,
    origin: Tensor | None = None,
) -> Tensor:
    """``[B, 3, H, W]``: disks of ``radius`` pixels (one for all, or one per prompt ``[B]``) around the
    positive and the negative clicks (none at radius 0), and the box, on a grid of ``size`` cells
    ``cell`` input pixels wide whose top-left cell is ``origin`` ``[B, 2]`` (rows, columns; the window
    a prompt is decoded on)."""
    given = points[0] if points is not None else boxes
    assert given is not None
    batch, device = given.shape[0], given.device
    start = origin.float() if origin is not None else torch.zeros(batch, 2, device=device)
    ys = (start[:, :1] + torch.arange(size[0], device=device) + 0.5) * cell  # [B, H] in input pixels
    xs = (start[:, 1:] + torch.arange(size[1], device=device) + 0.5) * cell
    maps = torch.zeros(batch, 3, *size, device=device)
    drawn = not isinstance(radius, (int, float)) or radius > 0  # radius 0: the box alone
    if points is not None and points[0].shape[1] and drawn:
        xy, labels = points[0].float() + 0.5, points[1]
        dy = ys[:, None, :, None] - xy[:, :, None, None, 1]  # [B, N, H, 1]
        dx = xs[:, None, None, :] - xy[:, :, None, None, 0]  # [B, N, 1, W]
        r = torch.as_tensor(radius, dtype=torch.float32, device=device).reshape(-1, 1, 1, 1)
        near = (dy.square() + dx.square() <= r.square()).float()
        for channel, kind in enumerate((POSITIVE, NEGATIVE)):
            chosen = (labels == kind).float()[:, :, None, None]
            maps[:, channel] = (near * chosen).amax(dim=1)
    if boxes is not None:
        inside_y = (ys >= boxes[:, 1:2]) & (ys <= boxes[:, 3:4] + 1)
        inside_x = (xs >= boxes[:, 0:1]) & (xs <= boxes[:, 2:3] + 1)
        maps[:, 2] = (inside_y[:, :, None] & inside_x[:, None, :]).float()
    return maps


class PromptEncoder(nn.Module):
    """Positions are in units of ``reference`` input pixels (the official models: their 1024-px
    square), so that an input of another size keeps the scale the model learnt; the embedding's
    cells are ``stride`` input pixels apart."""

    def __init__(
        self,
        dim: int,
        stride: int,
        reference: int,
        mask_channels: int,
        click_radius: float = 0.0,
        click_radius_jitter: float = 0.0,
        box_map: bool = False,
        point_features: bool = False,
    ) -> None:
        super().__init__()
        self.dim, self.stride, self.reference, self.click_radius = dim, stride, reference, click_radius
        self.click_radius_jitter = click_radius_jitter
        self.fourier = RandomFourierEncoding(dim // 2)
        self.point_kinds = nn.Embedding(4, dim)  # NEGATIVE, POSITIVE, BOX_TOP_LEFT, BOX_BOTTOM_RIGHT
        self.not_a_point = nn.Embedding(1, dim)
        self.no_mask = nn.Embedding(1, dim)
        self.mask_down = downsampler(1, mask_channels, dim)
        self.click_down = downsampler(3, mask_channels, dim) if click_radius > 0 or box_map else None
        self.point_features = nn.Linear(dim, dim) if point_features else None

    def radius(self, batch: int, device: torch.device) -> float | Tensor:
        """The click disks' radius; in training with a jitter, one per prompt, uniform in
        ``click_radius * [1 - jitter, 1 + jitter]``, so that a disk's size says nothing of the
        object's. (With one size, a model trained for 30 minutes answers a single click with about
        that disk whatever the object's size; the jitter alone did not change that: BENCHMARKS.md.)"""
        if not (self.training and self.click_radius_jitter):
            return self.click_radius
        spread = self.click_radius_jitter * (2 * torch.rand(batch, device=device) - 1)
        return self.click_radius * (1 + spread)

    def dense_positions(self, grid: tuple[int, int]) -> Tensor:
        """``[1, C, h, w]``: the positional encoding of an image embedding of ``grid`` cells."""
        return self.fourier.grid(*grid, self.stride, self.reference)[None]

    def embed_points(self, xy: Tensor, labels: Tensor, pad: bool, embedding: Tensor | None = None) -> Tensor:
        """Points ``[B, N, 2]`` (pixels) with labels ``[B, N]`` (1 positive, 0 negative, -1 padding);
        with ``point_features``, the whole image's ``embedding`` ``[1, C, h, w]`` is read under them."""
        if pad:
            xy = torch.cat([xy, xy.new_zeros(xy.shape[0], 1, 2)], dim=1)
            labels = torch.cat([labels, labels.new_full((labels.shape[0], 1), PADDING)], dim=1)
        tokens = self.fourier.points(xy + 0.5, self.reference)  # + 0.5: the pixel's centre
        if self.point_features is not None:
            assert embedding is not None, "point_features reads the image embedding under each click"
            clicks = ((labels == POSITIVE) | (labels == NEGATIVE)).to(tokens.dtype)[..., None]  # not corners
            tokens = tokens + clicks * self.point_features(self.features_under(embedding, xy.float() + 0.5))
        padding = (labels == PADDING)[..., None]
        kind = self.point_kinds(labels.clamp(min=0).long())
        return torch.where(padding, self.not_a_point.weight, tokens + kind)

    def features_under(self, embedding: Tensor, xy: Tensor) -> Tensor:
        """The embedding ``[1, C, h, w]`` bilinearly sampled at ``xy`` ``[B, N, 2]`` (continuous input
        pixels, 0 at the image's left edge) -> ``[B, N, C]``; clicks beyond the edge read the border."""
        h, w = embedding.shape[-2:]
        extent = torch.stack([torch.full((), w * self.stride), torch.full((), h * self.stride)]).to(xy)
        grid = (2 * xy / extent - 1).reshape(1, -1, 1, 2)
        sampled = F.grid_sample(embedding, grid, mode="bilinear", padding_mode="border", align_corners=False)
        return sampled[0, :, :, 0].transpose(0, 1).reshape(*xy.shape[:2], -1)

    def embed_boxes(self, boxes: Tensor) -> Tensor:
        """Boxes ``[B, 4]`` (x0, y0, x1, y1 pixels) -> two corner tokens each."""
        corners = self.fourier.points(boxes.reshape(-1, 2, 2) + 0.5, self.reference)
        return corners + self.point_kinds.weight[BOX_TOP_LEFT : BOX_BOTTOM_RIGHT + 1]

    def forward(
        self,
        points: tuple[Tensor, Tensor] | None,
        boxes: Tensor | None,
        masks: Tensor | None,
        grid: tuple[int, int],
        origin: Tensor | None = None,
        embedding: Tensor | None = None,
    ) -> tuple[Tensor, Tensor]:
        """(sparse tokens ``[B, N, C]``, dense map ``[B, C, h, w]``) for B prompts on one image whose
        embedding has ``grid`` cells; a mask prompt is ``[B, 1, 4h, 4w]`` logits. ``origin`` ``[B, 2]``:
        where each prompt's grid starts in the whole embedding, in cells of the mask prompt;
        ``embedding``: the whole image's, which ``point_features`` reads."""
        given = [t for t in (points[0] if points else None, boxes, masks) if t is not None]
        batch = given[0].shape[0] if given else 1
        device = self.no_mask.weight.device
        sparse = [torch.empty(batch, 0, self.dim, device=device)]
        if points is not None:
            sparse.append(self.embed_points(points[0], points[1], pad=boxes is None, embedding=embedding))
        if boxes is not None:
            sparse.append(self.embed_boxes(boxes))
        if masks is not None:
            dense = self.mask_down(masks)
        else:
            dense = self.no_mask.weight.reshape(1, -1, 1, 1).expand(batch, -1, *grid)
        if self.click_down is not None and (points is not None or boxes is not None):
            size = (4 * grid[0], 4 * grid[1])
            maps = click_maps(points, boxes, size, self.stride / 4, self.radius(batch, device), origin)
            dense = dense + self.click_down(maps)
        return torch.cat(sparse, dim=1), dense
