"""SAM as two graphs, the way segment-anything's browser demo runs it: the image encoder once per image,
then the prompt encoder and mask decoder once per click on the cached embedding.

``EmbeddingGraph``: RGB bytes ``[H, W, 3]`` of any size -> the image embedding ``[1, C, h, w]``, with
the model's own resize, normalisation and padding inside.

``PromptGraph``: the embedding and B prompts -> masks at the image's size. A prompt is a list of N
points in the original image's pixels (x, y) with labels: 1 positive, 0 negative, 2 and 3 a box's
top-left and bottom-right corners, -1 padding. As in the eager model, clicks come first, then the
box's corners; a prompt without a box ends with one padding point (0, 0), and prompts of one call
are padded to the same N. ``mask_input`` is a previous call's ``low_res_logits`` (one reading,
``[B, 1, 4h, 4w]``), used where ``has_mask_input`` is 1. The graph returns every output of the
decoder, the single-mask reading first and the three readings of an ambiguous prompt after it, so
that the caller chooses without a second graph: ``masks`` bool ``[B, 4, H, W]``,
``iou_predictions`` ``[B, 4]`` and ``low_res_logits`` ``[B, 4, 4h, 4w]``.

The box enters as its two corner points with their kinds' embeddings, which is how the eager prompt
encoder embeds it; its presence, and the mask prompt's, are values rather than branches, so one
graph serves every kind of prompt.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from instseg.export.graph import NetworkInput
from instseg.export.onnx import MAX_SIDE
from instseg.models.sam.mask_decoder import logit_threshold, upsample_logits
from instseg.models.sam.model import SAM, logit_pixels
from instseg.models.sam.prompt_encoder import BOX_BOTTOM_RIGHT, BOX_TOP_LEFT, PADDING, click_maps

EMBEDDING_INPUTS = ("image",)
EMBEDDING_OUTPUTS = ("image_embeddings",)
PROMPT_INPUTS = (
    "image_embeddings",
    "point_coords",
    "point_labels",
    "mask_input",
    "has_mask_input",
    "orig_im_size",
)
PROMPT_OUTPUTS = ("masks", "iou_predictions", "low_res_logits")


class EmbeddingGraph(nn.Module):
    def __init__(self, model: SAM) -> None:
        super().__init__()
        self.model = model.eval()
        # SAM's longest-side resize is antialiased; a fixed scale (the nuclei preset) is not
        self.input = NetworkInput(model.transform, antialias=model.transform.scale is None)

    def forward(self, image: Tensor) -> Tensor:
        return self.model.network(self.input(image)[0])


class PromptGraph(nn.Module):
    def __init__(self, model: SAM) -> None:
        super().__init__()
        self.model = model.eval()
        self.threshold = logit_threshold(model.cfg.mask_threshold)

    def forward(
        self,
        embedding: Tensor,
        point_coords: Tensor,
        point_labels: Tensor,
        mask_input: Tensor,
        has_mask_input: Tensor,
        orig_im_size: Tensor,
    ) -> tuple[Tensor, Tensor, Tensor]:
        model, decode = self.model, self.model.decode
        height, width = orig_im_size[0].item(), orig_im_size[1].item()
        for side in (height, width):
            torch._check(side >= 1)
            torch._check(side <= MAX_SIDE)
        resized = model.transform.output_size(height, width)
        scale = torch.stack([torch.full((), resized[1] / width), torch.full((), resized[0] / height)])
        xy, labels = point_coords * scale.to(point_coords.dtype), point_labels.long()
        corner = [(labels == kind).to(xy.dtype)[..., None] for kind in (BOX_TOP_LEFT, BOX_BOTTOM_RIGHT)]
        box = torch.cat([(xy * corner[0]).sum(1), (xy * corner[1]).sum(1)], dim=1)  # [B, 4]; 0 if none
        has_box = (labels == BOX_TOP_LEFT).any(1)
        grid = (embedding.shape[-2], embedding.shape[-1])
        positions = decode.prompt_encoder.dense_positions(grid)
        centre = torch.where(has_box[:, None], (box[:, :2] + box[:, 2:]) / 2, xy[:, 0])  # decode.centres
        if decode.window:
            crop, crop_positions, mask_crop, corners = decode.window_crops(
                embedding, positions, centre, mask_input
            )
        else:
            crop, crop_positions, mask_crop, corners = embedding, positions, mask_input, None
        sparse, dense = self.prompt(
            xy, labels, box, has_box, mask_crop, has_mask_input, corners, crop.shape[-2:], embedding
        )
        offsets = None
        if model.mask_decoder.dynamic_layers:  # as decode.offsets
            size = (4 * crop.shape[-2], 4 * crop.shape[-1])
            offsets = (logit_pixels(size, decode.stride / 4, corners, xy.device), centre + 0.5)
        logits, iou = model.mask_decoder.predict_all(crop, crop_positions, sparse, dense, offsets)
        if corners is not None:
            logits = decode.paste(logits, corners, grid)
        masks = upsample_logits(logits, decode.stride, resized, (height, width)) > self.threshold
        return masks, iou, logits

    def prompt(
        self,
        xy: Tensor,
        labels: Tensor,
        box: Tensor,
        has_box: Tensor,
        mask_input: Tensor,
        has_mask_input: Tensor,
        corners: Tensor | None,
        grid: tuple[int, int],
        embedding: Tensor,
    ) -> tuple[Tensor, Tensor]:
        """The eager prompt encoder's tokens and dense map, with the box and the mask prompt as values."""
        encoder = self.model.decode.prompt_encoder
        sparse = encoder.embed_points(xy, labels, pad=False, embedding=embedding)
        no_mask = encoder.no_mask.weight.reshape(1, -1, 1, 1)
        dense = torch.where(has_mask_input.reshape(-1, 1, 1, 1) > 0, encoder.mask_down(mask_input), no_mask)
        if encoder.click_down is not None:
            size = (4 * grid[0], 4 * grid[1])
            maps = click_maps((xy, labels), box, size, encoder.stride / 4, encoder.click_radius, corners)
            drawn = torch.stack([torch.ones_like(has_box), torch.ones_like(has_box), has_box], 1)
            maps = maps * drawn[:, :, None, None].to(maps.dtype)  # no box: no box channel
            prompted = (labels >= 0).any(1).to(dense.dtype).reshape(-1, 1, 1, 1)
            dense = dense + prompted * encoder.click_down(maps)
        return sparse, dense


def prompt_arrays(xy: Tensor, labels: Tensor, boxes: Tensor | None) -> tuple[Tensor, Tensor]:
    """Clicks ``[B, N, 2]`` with labels ``[B, N]`` and boxes ``[B, 4]`` (or None) -> the graph's
    ``point_coords`` and ``point_labels``: the box's corners after the clicks, else a padding point."""
    batch = xy.shape[0]
    if boxes is None:
        extra, kinds = xy.new_zeros(batch, 1, 2), [PADDING]
    else:
        extra, kinds = boxes.reshape(batch, 2, 2), [BOX_TOP_LEFT, BOX_BOTTOM_RIGHT]
    extra_labels = torch.tensor(kinds, dtype=torch.float32).expand(batch, -1)
    return torch.cat([xy.float(), extra.float()], 1), torch.cat([labels.float(), extra_labels], 1)
