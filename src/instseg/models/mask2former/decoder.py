"""Mask2Former's transformer decoder: queries refined by masked cross-attention, round-robin over scales.

Masked attention is the paper's key change to DETR: a query attends only to
the pixels its previous prediction puts inside its mask (sigmoid >= 0.5), so
it converges on its own object instead of the whole image. Every layer
predicts classes and masks, and all of them are supervised (deep supervision).

The queries start either as learned embeddings (the paper) or, with
``selected_queries``, as the pixel decoder's best-scoring tokens at their own
positions (Mask DINO's query selection): each query then begins at a place
the image itself proposes, rather than at a position learned once for every
image.

In training, ``denoising`` queries built from the ground truth may follow the
others (``denoising.py``); the decoder returns their predictions apart.

With ``box_prior``, every query also predicts a box that keeps its mask near
its object (``box_prior.py``). With ``box_queries`` as well, that box is the
query's position, as in DAB-DETR and DINO: each layer predicts a change to the
box before it (in logits), and the box's sine encoding is the query's position
in attention, so queries, and the self-attention that tells duplicates apart,
know where each other's objects are. Learned queries start from learned boxes;
selected ones from their token's cell.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from instseg.models.mask2former.box_prior import prior_embedding, with_coordinates
from instseg.models.mask2former.denoising import DenoisingQueries, box_attention_mask
from instseg.models.mask2former.pixel_decoder import STRIDES, cell_centres
from instseg.models.mask2former.position_encoding import sine_box_encoding, sine_position_encoding
from instseg.models.mlp import MLP
from instseg.models.postprocess import MASK_STRIDE
from instseg.models.seesaw import NormedLinear


@dataclass
class QueryPredictions:
    """One decoder layer's predictions for a batch: a class and a mask per query (see ``mask_logits``)."""

    class_logits: Tensor  # [B, Q, K+1], the last class is "no object"
    mask_embed: Tensor  # [B, Q, C]
    mask_features: Tensor  # [B, C, h, w] per-pixel embeddings at 1/4 of the padded batch, shared by layers
    boxes: Tensor | None = None  # [B, Q, 4] (cx, cy, w, h) as fractions of the padded batch, with a box prior

    def image(self, b: int) -> tuple[Tensor, Tensor, Tensor]:
        """Image ``b``'s ``(class_logits [Q, K+1], mask_embed [Q, C], mask_features [C, h, w])``, as the
        readings in ``postprocess.py`` take them."""
        return self.class_logits[b], self.mask_embed[b], self.mask_features[b]

    def split(self, count: int) -> tuple[QueryPredictions, QueryPredictions]:
        """The first ``count`` queries' predictions and the rest's."""
        boxes = (None, None) if self.boxes is None else (self.boxes[:, :count], self.boxes[:, count:])
        head = QueryPredictions(
            self.class_logits[:, :count], self.mask_embed[:, :count], self.mask_features, boxes[0]
        )
        tail = QueryPredictions(
            self.class_logits[:, count:], self.mask_embed[:, count:], self.mask_features, boxes[1]
        )
        return head, tail

    def join(self, other: QueryPredictions) -> QueryPredictions:
        """These queries' predictions followed by ``other``'s (same batch and mask features)."""
        boxes = None if self.boxes is None else torch.cat([self.boxes, other.boxes], 1)
        return QueryPredictions(
            torch.cat([self.class_logits, other.class_logits], 1),
            torch.cat([self.mask_embed, other.mask_embed], 1),
            self.mask_features,
            boxes,
        )


class MaskedAttentionLayer(nn.Module):
    """Masked cross-attention, then self-attention among the queries, then an FFN (post-norm)."""

    def __init__(self, dim: int, heads: int, ffn: int) -> None:
        super().__init__()
        self.cross_attn = nn.MultiheadAttention(dim, heads)
        self.cross_norm = nn.LayerNorm(dim)
        self.self_attn = nn.MultiheadAttention(dim, heads)
        self.self_norm = nn.LayerNorm(dim)
        self.linear1 = nn.Linear(dim, ffn)
        self.linear2 = nn.Linear(ffn, dim)
        self.ffn_norm = nn.LayerNorm(dim)

    def forward(
        self,
        x: Tensor,
        query_pos: Tensor,
        memory: Tensor,
        memory_pos: Tensor,
        mask: Tensor,
        self_mask: Tensor | None = None,
    ) -> Tensor:
        """``x [Q, B, C]``, ``memory [S, B, C]``, ``mask [B * heads, Q, S]`` (True: not attended);
        ``self_mask [Q, Q]``: pairs of queries that do not attend to each other."""
        attended = self.cross_attn(
            x + query_pos, memory + memory_pos, memory, attn_mask=mask, need_weights=False
        )
        x = self.cross_norm(x + attended[0])
        q = x + query_pos
        x = self.self_norm(x + self.self_attn(q, q, x, attn_mask=self_mask, need_weights=False)[0])
        return self.ffn_norm(x + self.linear2(F.relu(self.linear1(x))))


class MaskedAttentionDecoder(nn.Module):
    def __init__(
        self,
        dim: int,
        num_classes: int,
        num_queries: int = 100,
        layers: int = 9,
        heads: int = 8,
        ffn: int = 2048,
        levels: int = 3,
        normed_classifier: bool = False,
        selected_queries: bool = False,
        pixel_positions: bool = False,
        query_groups: int = 1,
        denoising: bool = False,
        box_prior: float = 0.0,
        box_queries: bool = False,
        prediction_queries: int = 0,
    ) -> None:
        super().__init__()
        if query_groups < 1 or (query_groups > 1 and selected_queries):
            raise ValueError(f"query_groups = {query_groups}: groups (>= 1) are of learned queries only")
        if prediction_queries > 0 and not selected_queries:
            raise ValueError(
                "prediction_queries counts selected tokens: it needs query_init=selected "
                "(prediction_queries=0 for learned queries)"
            )
        if box_queries and box_prior <= 0:
            raise ValueError("box_queries places queries by their boxes: it needs box_prior > 0")
        self.heads, self.levels, self.num_queries = heads, levels, num_queries
        self.prediction_queries = prediction_queries or num_queries
        self.query_groups = query_groups
        self.strides = STRIDES if pixel_positions else (None,) * levels
        self.pixel_positions = pixel_positions
        if selected_queries:  # each pixel-decoder token projected into a candidate query
            self.proposal: nn.Module | None = nn.Sequential(nn.Linear(dim, dim), nn.LayerNorm(dim))
        else:
            self.proposal = None
            self.query_feat = nn.Embedding(num_queries * query_groups, dim)
            if not box_queries:  # a box query's position is its box's encoding
                self.query_pos = nn.Embedding(num_queries * query_groups, dim)
            else:  # centres spread over the map, sides a tenth of it, as logits
                start = torch.cat(
                    [
                        torch.rand(num_queries * query_groups, 2) * 0.9 + 0.05,
                        torch.full((num_queries * query_groups, 2), 0.1),
                    ],
                    1,
                )
                self.query_box = nn.Parameter(torch.logit(start))
        self.level_embed = nn.Embedding(levels, dim)
        self.layers = nn.ModuleList(MaskedAttentionLayer(dim, heads, ffn) for _ in range(layers))
        self.norm = nn.LayerNorm(dim)
        # the last class is "no object"; the cosine classifier goes with the Seesaw loss
        self.class_head = (NormedLinear if normed_classifier else nn.Linear)(dim, num_classes + 1)
        self.mask_embed = MLP(dim, dim, dim)
        self.box_prior = box_prior  # the prior's sharpness; 0: no boxes, the paper
        self.box_head = MLP(dim, dim, 4) if box_prior > 0 else None
        self.box_queries = box_queries
        # a denoising query's content is its label's embedding ("no object" for padding); its position, and
        # a box query's, is its box's sine encoding read by an MLP
        self.label_embed = nn.Embedding(num_classes + 1, dim) if denoising else None
        if denoising or box_queries:
            self.box_embed = MLP(2 * dim, dim, dim, layers=2)

    def predict(
        self, x: Tensor, attn_features: Tensor, mask_features: Tensor, reference: Tensor | None = None
    ) -> tuple[QueryPredictions, Tensor]:
        """Class logits ``[B, Q, K+1]``, mask embeddings ``[B, Q, C]`` (and boxes), and the next layer's
        attention mask. ``reference [B, Q, 4]``: the boxes (as logits) that box queries' boxes change.

        The attention mask needs the mask logits at the next level's size only:
        bilinear resizing commutes with the per-pixel dot product, so they are
        computed from mask features resized once, not from full 1/4 masks.
        """
        y = self.norm(x).transpose(0, 1)
        embed = self.mask_embed(y)
        boxes = None
        if self.box_head is not None:
            change = self.box_head(y)
            boxes = (change if reference is None else change + reference).sigmoid()
            embed = torch.cat([embed, prior_embedding(boxes, self.box_prior)], -1)
        small = torch.einsum("bqc,bchw->bqhw", embed.detach(), attn_features)
        blocked = small.sigmoid().flatten(2) < 0.5
        blocked &= ~blocked.all(-1, keepdim=True)  # a query whose mask is empty attends everywhere
        predictions = QueryPredictions(self.class_head(y), embed, mask_features, boxes)
        return predictions, blocked.repeat_interleave(self.heads, dim=0)

    def forward(
        self, maps: list[Tensor], mask_features: Tensor, denoising: DenoisingQueries | None = None
    ) -> tuple[list[QueryPredictions], list[QueryPredictions]]:
        """``maps``: the pixel decoder's levels, coarsest first. One prediction per layer, plus one before:
        ``QueryPredictions``, the last one final; then the same for the ``denoising`` queries (empty
        without them)."""
        b = mask_features.shape[0]
        memory, memory_pos, small_features = [], [], []
        for i, m in enumerate(maps):
            h, w = m.shape[-2:]
            small = F.interpolate(mask_features, (h, w), mode="bilinear", align_corners=False)
            small_features.append(small if self.box_head is None else with_coordinates(small))
            memory.append((m.flatten(2) + self.level_embed.weight[i][None, :, None]).permute(2, 0, 1))
            pos = sine_position_encoding(h, w, m.shape[1], m.device, m.dtype, self.strides[i])
            memory_pos.append(pos.flatten(1).T[:, None])
        # the padded batch's (H, W) in input pixels, for box encodings in pixels
        extent = tuple(MASK_STRIDE * n for n in mask_features.shape[-2:]) if self.pixel_positions else None
        if self.box_head is not None:  # the coordinates the box prior's embeddings are dotted with
            mask_features = with_coordinates(mask_features)
        self_mask = None
        if self.proposal is None:
            groups = self.query_groups if self.training else 1  # prediction reads the first group
            count = self.num_queries * groups
            x = self.query_feat.weight[:count, None].expand(-1, b, -1)
            # box queries take their positions from their boxes before each layer
            query_pos = (
                torch.zeros_like(x)
                if self.box_queries
                else self.query_pos.weight[:count, None].expand(-1, b, -1)
            )
            if groups > 1:
                group = torch.arange(count, device=x.device) // self.num_queries
                self_mask = group[:, None] != group[None, :]
            reference = self.query_box[:count][None].expand(b, -1, -1) if self.box_queries else None
            first, blocked = self.predict(x, small_features[0], mask_features, reference)
        else:
            x, query_pos, cells = self.select_queries(maps, memory_pos)
            reference = box_logits(cells) if self.box_queries else None
            # the selected tokens' own predictions are supervised, which trains the selection; the
            # decoder refines a detached copy (Mask DINO)
            first, blocked = self.predict(x, small_features[0], mask_features, reference)
            x = x.detach()
        count = x.shape[0]  # the queries that predict; denoising queries follow them
        if denoising is not None:
            x, query_pos, self_mask = self.add_denoising(x, query_pos, self_mask, denoising)
            noised = box_logits(denoising.normalised_boxes()) if self.box_queries else None
            first = first.join(self.predict(x[count:], small_features[0], mask_features, noised)[0])
            inside = box_attention_mask(denoising.boxes, denoising.padded, maps[0].shape[-2:])
            blocked = torch.cat(
                [blocked.view(b, self.heads, count, -1), inside[:, None].expand(-1, self.heads, -1, -1)], 2
            ).flatten(0, 1)
        outputs = [first]
        for i, layer in enumerate(self.layers):
            level = i % self.levels
            reference = None
            if self.box_queries:  # the layer before's boxes place the queries, and are what this one changes
                boxes = outputs[-1].boxes.detach()
                query_pos = self.box_embed(sine_box_encoding(boxes, x.shape[-1], extent)).transpose(0, 1)
                reference = box_logits(boxes)
            x = layer(x, query_pos, memory[level], memory_pos[level], blocked, self_mask)
            predictions, blocked = self.predict(
                x, small_features[(i + 1) % self.levels], mask_features, reference
            )
            outputs.append(predictions)
        if denoising is None:
            return outputs, []
        parts = [out.split(count) for out in outputs]
        return [p[0] for p in parts], [p[1] for p in parts]

    def add_denoising(
        self, x: Tensor, query_pos: Tensor, self_mask: Tensor | None, denoising: DenoisingQueries
    ) -> tuple[Tensor, Tensor, Tensor]:
        """The queries ``[Q, B, C]`` and their positions with the denoising queries appended, and the
        self-attention mask that keeps the first Q from reading them."""
        if self.label_embed is None:
            raise ValueError("this decoder was built without denoising queries (denoising=True)")
        content = self.label_embed(denoising.labels).transpose(0, 1)  # [D, B, C]
        extent = denoising.padded if self.pixel_positions else None
        encoded = sine_box_encoding(denoising.normalised_boxes(), x.shape[-1], extent)
        position = self.box_embed(encoded).transpose(0, 1)
        count, total = x.shape[0], x.shape[0] + content.shape[0]
        blocked = torch.zeros((total, total), dtype=torch.bool, device=x.device)
        if self_mask is not None:
            blocked[:count, :count] = self_mask
        blocked[:count, count:] = True
        return torch.cat([x, content]), torch.cat([query_pos, position]), blocked

    def select_queries(self, maps: list[Tensor], memory_pos: list[Tensor]) -> tuple[Tensor, Tensor, Tensor]:
        """The top-scoring candidate tokens of all levels and their position encodings, ``[Q, B, C]``
        each, and their cells as boxes ``[B, Q, 4]`` (cx, cy, w, h; two cells of their level wide).
        ``num_queries`` of them in training, ``prediction_queries`` in eval mode; an image with fewer
        tokens gets one query per token."""
        tokens = torch.cat([m.flatten(2) for m in maps], 2).transpose(1, 2)  # [B, S, C]
        candidates = self.proposal(tokens)
        scores = self.class_head(self.norm(candidates)).softmax(-1)[..., :-1].amax(-1)  # [B, S]
        wanted = self.num_queries if self.training else self.prediction_queries
        top = scores.topk(torch.sym_min(wanted, scores.shape[1]), dim=1).indices  # [B, Q]
        x = candidates.gather(1, top[..., None].expand(-1, -1, candidates.shape[-1]))
        pos = torch.cat(memory_pos)[:, 0][top]  # [B, Q, C]
        cells = torch.cat([cell_boxes(*m.shape[-2:], m.device, m.dtype) for m in maps])[top]  # [B, Q, 4]
        return x.transpose(0, 1), pos.transpose(0, 1), cells


def cell_boxes(height: int, width: int, device: torch.device, dtype: torch.dtype) -> Tensor:
    """``[height * width, 4]``: each cell of a map as a box (cx, cy, w, h as fractions of the map) centred
    on it and two cells wide, in the order of ``flatten``."""
    centres = cell_centres(height, width, device, dtype)
    # sides from the cells themselves, so an exported graph keeps them symbolic in the map's size
    one = torch.ones_like(centres[:, :1])
    return torch.cat([centres, one * (2 / width), one * (2 / height)], 1)


def box_logits(boxes: Tensor) -> Tensor:
    """Boxes as fractions -> the logits a box query's change is added to (kept finite at 0 and 1)."""
    return torch.logit(boxes, eps=1e-4)


def mask_logits(embed: Tensor, features: Tensor) -> Tensor:
    """Masks as the dot product of each query's embedding with every pixel's: ``[..., Q, C] x [..., C, h,
    w]`` -> ``[..., Q, h, w]``. Computed only where needed (matched queries, kept detections)."""
    return torch.einsum("...qc,...chw->...qhw", embed, features)
