"""Mask assembly, written once for every family: low-resolution mask probabilities become the output.

The families differ in how they make a detection's mask probabilities; from
there on the rules are shared: one mask stride, one maskness, box-local
resampling onto the input's pixels, pasting in score order, and empty masks
dropped, so that every family's output obeys the same contract.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from instseg.cropped_masks import CroppedMasks, as_requested
from instseg.masks import boxes_from_extents

MASK_STRIDE = 4  # SOLOv2, CondInst, YOLACT and Mask2Former predict masks at 1/4 of the (padded) input
MASK_CACHE_BYTES = 256 * 2**20  # low-resolution mask probabilities kept between assembly's two passes


@dataclass(frozen=True)
class MaskAssembly:
    """How one family turns its detections' mask probabilities into output masks."""

    threshold: float = 0.5  # probability above which a pixel is in the mask
    stride: int = MASK_STRIDE  # of the probabilities, on the padded batch
    crop_to_boxes: bool = False  # cut each mask to its detection's box (YOLACT)
    rescore: bool = False  # multiply each score by its mask's maskness


def maskness(probs: Tensor, threshold: float, hard: Tensor | None = None) -> Tensor:
    """Mean probability inside each thresholded mask ``[N]`` (SOLOv2's maskness; 0 for an empty mask).

    A score times its maskness ranks confident masks first: the ranking SOLOv2,
    Mask2Former, CondInst and YOLACT use. ``hard``: ``probs > threshold``, when
    the caller has it already.
    """
    inside = (probs > threshold if hard is None else hard).to(probs.dtype)  # float sums: exact counts, and
    # ONNX Runtime sums floats far faster than the int64 that a bool sum exports as
    return (probs * inside).flatten(1).sum(1) / inside.flatten(1).sum(1).clamp(min=1)


def paste_masks(
    mask_probs: Tensor, boxes: Tensor, image_size: tuple[int, int], threshold: float = 0.5
) -> CroppedMasks:
    """Per-box mask probabilities ``[N, (1,) M, M]`` -> each mask at the image's pixels, as the bool crop
    of its box.

    Same arithmetic as torchvision's ``paste_masks_in_image`` (one-pixel padding,
    bilinear resize to the box), but each mask is resized only to its box and
    thresholded straight to bool: torchvision builds ``[N, 1, H, W]`` float,
    2 GB for 500 detections on a 1024x1024 image.
    """
    if mask_probs.dim() == 4:
        mask_probs = mask_probs[:, 0]
    height, width = image_size
    n = mask_probs.shape[0]
    crops = [torch.zeros((0, 0), dtype=torch.bool, device=mask_probs.device)] * n
    origins = torch.zeros((n, 2), dtype=torch.int64)
    if n == 0:
        return CroppedMasks(crops, origins, image_size)
    m = mask_probs.shape[-1]
    scale = (m + 2.0) / m
    padded = F.pad(mask_probs, (1, 1, 1, 1))
    centre_x = (boxes[:, 0] + boxes[:, 2]) * 0.5
    centre_y = (boxes[:, 1] + boxes[:, 3]) * 0.5
    half_w = (boxes[:, 2] - boxes[:, 0]) * 0.5 * scale
    half_h = (boxes[:, 3] - boxes[:, 1]) * 0.5 * scale
    expanded = torch.stack([centre_x - half_w, centre_y - half_h, centre_x + half_w, centre_y + half_h], 1)
    for i, (x0, y0, x1, y1) in enumerate(expanded.to(torch.int64).tolist()):
        w, h = max(x1 - x0 + 1, 1), max(y1 - y0 + 1, 1)
        xa, xb = max(x0, 0), min(x1 + 1, width)
        ya, yb = max(y0, 0), min(y1 + 1, height)
        if xa >= xb or ya >= yb:
            continue
        resized = F.interpolate(padded[i][None, None], size=(h, w), mode="bilinear", align_corners=False)[
            0, 0
        ]
        crops[i] = resized[ya - y0 : yb - y0, xa - x0 : xb - x0] > threshold
        origins[i] = torch.tensor((xa, ya))
    return CroppedMasks(crops, origins, image_size)


def widened_extents(above: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Bool maps ``[N, h, w]`` -> the indices of the non-empty ones, and of each its first row, end row,
    first column and end column holding a True cell, widened by one cell and kept on the map."""
    h, w = above.shape[-2:]
    rows, cols = above.any(dim=2), above.any(dim=1)
    present = torch.nonzero(rows.any(dim=1)).flatten()
    rows, cols = rows[present].int(), cols[present].int()
    y0 = (rows.argmax(1) - 1).clamp(min=0)
    y1 = (h + 1 - rows.flip(1).argmax(1)).clamp(max=h)
    x0 = (cols.argmax(1) - 1).clamp(min=0)
    x1 = (w + 1 - cols.flip(1).argmax(1)).clamp(max=w)
    return present, y0, y1, x0, x1


def upsample_masks(
    probs: Tensor,
    scale: tuple[float, float],
    image_size: tuple[int, int],
    threshold: float = 0.5,
    clip: Tensor | None = None,
) -> CroppedMasks:
    """Mask probabilities ``[N, h, w]`` -> binary masks of ``image_size`` as crops; ``scale`` is output
    px per input px.

    The same values as bilinear ``F.interpolate`` of the whole map (align_corners
    False), but each mask is resampled only around where it exceeds the
    threshold: outside that box, plus one pixel, every bilinear sample mixes
    values below the threshold and stays below it. ``clip``: xyxy boxes in
    output pixels; pixels whose centre lies outside a mask's box stay False
    (cut while resampling, not by a second full-size pass).
    """
    n = probs.shape[0]
    height, width = image_size
    crops = [torch.zeros((0, 0), dtype=torch.bool, device=probs.device)] * n
    origins = torch.zeros((n, 2), dtype=torch.int64)
    if n == 0:
        return CroppedMasks(crops, origins, image_size)
    sy, sx = scale
    present, *extents = widened_extents(probs > threshold)
    y0, y1, x0, x1 = (e.tolist() for e in extents)
    # pixel p is inside [a, b) when its centre p + 0.5 is: p in [ceil(a - 0.5), ceil(b - 0.5))
    limits = None if clip is None else torch.ceil(clip[present] - 0.5).to(torch.int64).tolist()
    # the continuous source coordinate of every output pixel centre
    source_y = (torch.arange(height, device=probs.device) + 0.5) / sy
    source_x = (torch.arange(width, device=probs.device) + 0.5) / sx
    for k, i in enumerate(present.tolist()):
        fy0, fy1, fx0, fx1 = y0[k], y1[k], x0[k], x1[k]
        uy0, uy1 = max(int(fy0 * sy), 0), min(math.ceil(fy1 * sy), height)
        ux0, ux1 = max(int(fx0 * sx), 0), min(math.ceil(fx1 * sx), width)
        if limits is not None:
            bx0, by0, bx1, by1 = limits[k]
            uy0, uy1, ux0, ux1 = max(uy0, by0), min(uy1, by1), max(ux0, bx0), min(ux1, bx1)
        if uy0 >= uy1 or ux0 >= ux1:
            continue
        gy = source_y[uy0:uy1].sub(fy0).div_(fy1 - fy0).mul_(2).sub_(1)  # normalised over the crop
        gx = source_x[ux0:ux1].sub(fx0).div_(fx1 - fx0).mul_(2).sub_(1)
        grid = torch.stack(torch.meshgrid(gx, gy, indexing="xy"), dim=-1)[None].to(probs.dtype)
        crop = probs[i, fy0:fy1, fx0:fx1][None, None]
        sampled = F.grid_sample(crop, grid, mode="bilinear", padding_mode="border", align_corners=False)
        crops[i] = sampled[0, 0] > threshold
        origins[i] = torch.tensor((ux0, uy0))
    return CroppedMasks(crops, origins, image_size)


def masks_at_input(
    probs: Tensor,
    resized: tuple[int, int],
    original: tuple[int, int],
    threshold: float = 0.5,
    stride: int = MASK_STRIDE,
    clip: Tensor | None = None,
) -> CroppedMasks:
    """1/``stride`` mask probabilities on a padded batch ``[N, h, w]`` -> binary masks of the input image:
    the padding is cut off and the rest resampled onto the original pixels (``clip`` as in
    ``upsample_masks``)."""
    valid = (math.ceil(resized[0] / stride), math.ceil(resized[1] / stride))
    scale = (stride * original[0] / resized[0], stride * original[1] / resized[1])
    return upsample_masks(probs[:, : valid[0], : valid[1]], scale, original, threshold, clip)


def detections_from_masks(
    probs: Tensor,
    labels: Tensor,
    scores: Tensor,
    resized: tuple[int, int],
    original: tuple[int, int],
    threshold: float = 0.5,
    refine: Callable[[Tensor], Tensor] | None = None,
) -> dict[str, Tensor | CroppedMasks]:
    """The output dict of a family whose detections are masks (SOLOv2, Mask2Former): ``masks_at_input``,
    empty masks dropped, boxes taken from the masks, 0-based ``labels`` made 1-based.

    ``refine`` (point refinement) turns a chunk of the 1/``MASK_STRIDE`` probabilities into
    probabilities at the input's resolution; chunks are sized to ``MASK_CACHE_BYTES``.
    """
    if torch.compiler.is_exporting():
        if refine is not None:
            raise NotImplementedError("point refinement is not exported; export with point_refine=false")
        return _windowed_detections_from_masks(probs, labels, scores, resized, original, threshold)
    if refine is None:
        masks = masks_at_input(probs, resized, original, threshold)
    else:
        per_mask = probs.shape[-2] * probs.shape[-1] * MASK_STRIDE**2 * probs.element_size()
        chunk = max(1, MASK_CACHE_BYTES // max(per_mask, 1))
        parts = [masks_at_input(refine(p), resized, original, threshold, 1) for p in probs.split(chunk)]
        masks = (
            CroppedMasks.cat(parts, original)
            if parts
            else masks_at_input(probs, resized, original, threshold)
        )
    nonempty = masks.nonempty()
    if not bool(nonempty.all()):  # the usual case copies nothing
        masks = masks[nonempty]
        labels, scores = labels[nonempty.to(labels.device)], scores[nonempty.to(scores.device)]
    return {
        "boxes": masks.tight_boxes().to(scores.device),
        "labels": labels + 1,
        "scores": scores,
        "masks": as_requested(masks),
    }


def boxes_at_input(boxes: Tensor, resized: tuple[int, int], original: tuple[int, int]) -> Tensor:
    """xyxy boxes on the resized image, clipped to it and scaled to the input's pixels; written with
    the sizes as plain numbers, so that an exported graph computes it from symbolic ones."""
    xs = boxes[:, 0::2].clamp(min=0).clamp(max=resized[1]) * (original[1] / resized[1])
    ys = boxes[:, 1::2].clamp(min=0).clamp(max=resized[0]) * (original[0] / resized[0])
    return torch.stack([xs[:, 0], ys[:, 0], xs[:, 1], ys[:, 1]], 1)


def assemble_detections(
    mask_probs: Callable[[Tensor], Tensor],
    boxes: Tensor,
    labels: Tensor,
    scores: Tensor,
    resized: tuple[int, int],
    original: tuple[int, int],
    assembly: MaskAssembly,
    chunk: int = 64,
    refine: Callable[[Tensor], Tensor] | None = None,
) -> dict[str, Tensor | CroppedMasks]:
    """The output dict of one image.

    Masks come from ``mask_probs(detection indices)`` (probabilities at
    ``assembly.stride`` on the padded batch), a chunk at a time to bound memory,
    and are pasted at the input resolution into one output, best score first,
    cut to their boxes where ``assembly.crop_to_boxes``; boxes are clipped and
    rescaled; empty masks are dropped. ``assembly.rescore`` multiplies each
    score by its ``maskness``, read at the low resolution in a first pass so
    that full-size masks are written once, already in order (the first pass's
    probabilities are kept for the second up to ``MASK_CACHE_BYTES``). ``refine`` (point refinement)
    turns a chunk of those probabilities into probabilities at the input's resolution in the second
    pass; ranking still reads the coarse ones.
    """
    if torch.compiler.is_exporting():
        if refine is not None:
            raise NotImplementedError("point refinement is not exported; export with point_refine=false")
        return _windowed_assembly(mask_probs, boxes, labels, scores, resized, original, assembly)
    boxes = boxes_at_input(boxes, resized, original)
    kept: list[Tensor] = []  # the rescoring pass's probabilities, reused while they fit the budget
    if assembly.rescore and len(boxes):
        quality, fits = [], True
        for idx in torch.arange(len(boxes), device=boxes.device).split(chunk):
            probs = mask_probs(idx)
            quality.append(maskness(probs, assembly.threshold))
            fits = fits and sum(p.nbytes for p in kept) + probs.nbytes <= MASK_CACHE_BYTES
            kept = [*kept, probs] if fits else []
        scores = scores * torch.cat(quality).to(scores.device)
    probs_all = torch.cat(kept) if kept else None  # else computed again, a chunk at a time
    order = torch.argsort(scores, descending=True, stable=True)
    parts = []
    for idx in order.split(chunk):
        probs = probs_all[idx] if probs_all is not None else mask_probs(idx)
        clip = boxes[idx] if assembly.crop_to_boxes else None
        if refine is None:
            parts.append(masks_at_input(probs, resized, original, assembly.threshold, assembly.stride, clip))
            continue
        # refined masks are stride**2 times larger: as many at a time as MASK_CACHE_BYTES holds
        step = max(1, MASK_CACHE_BYTES // max(probs[:1].nbytes * assembly.stride**2, 1))
        for sub in range(0, len(idx), step):
            part = refine(probs[sub : sub + step])
            sub_clip = None if clip is None else clip[sub : sub + step]
            parts.append(masks_at_input(part, resized, original, assembly.threshold, 1, sub_clip))
    masks = CroppedMasks.cat(parts, original)
    boxes, labels, scores = boxes[order], labels[order], scores[order]
    nonempty = masks.nonempty().to(boxes.device)
    if not bool(nonempty.all()):
        masks, boxes, labels, scores = masks[nonempty], boxes[nonempty], labels[nonempty], scores[nonempty]
    return {"boxes": boxes, "labels": labels + 1, "scores": scores, "masks": as_requested(masks)}


# The same assembly for exported graphs. A graph cannot size its Python loops by the number of
# detections, so every mask is resampled at once; each on a window of the image as large as the
# largest detection's extent, so the peak is N x window floats, not N x H x W, and the graph returns
# each mask as a crop (``masks [N, h, w]``) placed at ``mask_origins [N, 2]`` (x, y) in the image.


def bilinear_weights(source: Tensor, in_size: int) -> Tensor:
    """Source coordinates ``[..., P]`` -> bilinear weights ``[..., P, in_size]`` over ``in_size`` cells, edges
    clamped (``F.interpolate`` with align_corners False, or ``grid_sample`` with border padding): the tent
    ``max(0, 1 - |cell - source|)``, which is ``1 - frac`` at the cell below and ``frac`` above, in four
    vectorised ops (no comparisons or casts, which ONNX Runtime runs slowly)."""
    source = source.clamp(min=0).clamp(max=in_size - 1)
    cells = torch.arange(in_size, device=source.device, dtype=source.dtype)
    return torch.relu(1 - (cells - source[..., None]).abs())


def windows(start: Tensor, end: Tensor, size: int) -> Tensor:
    """Each detection's window along one side of the image, ``[N, S]`` pixel indices: S consecutive
    pixels from ``start``, moved back where they would pass the far edge; S is the longest extent
    ``end - start`` (at least 1, at most ``size``). S depends on the data: the graph gets it from a
    NonZero, the op it already uses to drop empty masks."""
    extent = (end - start).clamp(min=0)
    side = _size(size, start)
    longest = torch.minimum(torch.cat([extent, extent.new_ones(1)]).amax(0), side)
    steps = torch.nonzero(torch.arange(size, device=start.device) < longest).flatten()
    first = torch.minimum(start.clamp(min=0), side - longest)
    return first[:, None] + steps[None]


def _size(size: int, like: Tensor) -> Tensor:
    """A size, symbolic in a graph, as a 0-d tensor of ``like``'s dtype: arithmetic between tensors
    exports where arithmetic with a symbolic number may not."""
    return torch.full((), size, dtype=like.dtype, device=like.device)


def _origins(ys: Tensor, xs: Tensor) -> Tensor:
    """The (x, y) image position of each window's top-left pixel, int64 ``[N, 2]``."""
    return torch.stack([xs[:, 0], ys[:, 0]], 1).to(torch.int64)


def windowed_paste_masks(
    mask_probs: Tensor, boxes: Tensor, image_size: tuple[int, int]
) -> tuple[Tensor, Tensor]:
    """``paste_masks`` before its threshold, every box at once, on windows: float ``[N, h, w]`` (0 outside
    each mask's expanded box) and their origins ``[N, 2]``. Each box gets its own pair of resampling
    matrices (the same one-pixel padding, expansion, truncation and bilinear resize to the box as
    ``paste_masks``), so that a graph needs no loop over boxes."""
    if mask_probs.dim() == 4:
        mask_probs = mask_probs[:, 0]
    m = mask_probs.shape[-1]
    scale = (m + 2.0) / m
    centre_x = (boxes[:, 0] + boxes[:, 2]) * 0.5
    centre_y = (boxes[:, 1] + boxes[:, 3]) * 0.5
    half_w = (boxes[:, 2] - boxes[:, 0]) * 0.5 * scale
    half_h = (boxes[:, 3] - boxes[:, 1]) * 0.5 * scale
    first_y, last_y = (
        (centre_y - half_h).to(torch.int64),
        (centre_y + half_h).to(torch.int64),
    )  # as paste_masks
    first_x, last_x = (centre_x - half_w).to(torch.int64), (centre_x + half_w).to(torch.int64)
    ys = windows(first_y, last_y + 1, image_size[0])
    xs = windows(first_x, last_x + 1, image_size[1])
    rows = _box_weights(first_y, last_y, ys, m + 2)
    cols = _box_weights(first_x, last_x, xs, m + 2)
    return rows @ F.pad(mask_probs, (1, 1, 1, 1)) @ cols.transpose(1, 2), _origins(ys, xs)


def _box_weights(first: Tensor, last: Tensor, pixels: Tensor, in_size: int) -> Tensor:
    """``[N, S, in_size]``: window pixel ``pixels[n, s]`` samples its box's ``in_size`` cells as
    ``F.interpolate`` to the box's integer extent [first, last] does; pixels outside it get 0."""
    length = (last - first + 1).clamp(min=1)
    offset = pixels - first[:, None]
    source = (offset + 0.5) * (in_size / length)[:, None] - 0.5
    inside = (offset >= 0) & (offset < length[:, None])
    return bilinear_weights(source, in_size) * inside[..., None].to(source.dtype)


def windowed_probs_at_input(
    probs: Tensor,
    resized: tuple[int, int],
    original: tuple[int, int],
    threshold: float,
    stride: int = MASK_STRIDE,
    clip: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """``masks_at_input`` before its threshold, every mask at once, on windows: float ``[N, h, w]`` (0
    outside ``clip``) and their origins ``[N, 2]``; thresholded, the same pixels as ``masks_at_input``
    up to float rounding.

    Each window spans the pixels ``upsample_masks`` resamples: where the mask's cells exceed
    ``threshold``, widened by one cell (outside it every bilinear sample mixes cells below the
    threshold), within ``clip``. The resampling is two products with bilinear weight matrices over the
    valid map, for the window's rows and columns only."""
    valid_h = (resized[0] + stride - 1) // stride
    valid_w = (resized[1] + stride - 1) // stride
    ratio = probs.new_ones(())
    scale_y = _size(original[0], ratio) * stride / _size(resized[0], ratio)
    scale_x = _size(original[1], ratio) * stride / _size(resized[1], ratio)
    valid = probs[:, :valid_h, :valid_w]
    # rows and columns holding a cell above the threshold, from float maxima (a bool ``any`` exports as a
    # cast to int64 and an integer reduction)
    y0, y1 = _widened_span(valid.amax(dim=2) > threshold, scale_y, original[0])
    x0, x1 = _widened_span(valid.amax(dim=1) > threshold, scale_x, original[1])
    if clip is not None:  # pixels whose centre lies in the box, p in [ceil(a - 0.5), ceil(b - 0.5))
        limits = torch.ceil(clip - 0.5).to(torch.int64)
        y0, y1 = torch.maximum(y0, limits[:, 1]), torch.minimum(y1, limits[:, 3])
        x0, x1 = torch.maximum(x0, limits[:, 0]), torch.minimum(x1, limits[:, 2])
    ys, xs = windows(y0, y1, original[0]), windows(x0, x1, original[1])
    rows = bilinear_weights((ys + 0.5) / scale_y - 0.5, valid_h)
    cols = bilinear_weights((xs + 0.5) / scale_x - 0.5, valid_w)
    values = rows @ valid @ cols.transpose(-1, -2)
    if clip is not None:  # the window's pixels outside the detection's own span (and box) are cut
        inside_y = ((ys >= y0[:, None]) & (ys < y1[:, None])).to(values.dtype)
        inside_x = ((xs >= x0[:, None]) & (xs < x1[:, None])).to(values.dtype)
        values = values * inside_y[:, :, None] * inside_x[:, None, :]
    return values, _origins(ys, xs)


def _widened_span(present: Tensor, scale: Tensor, size: int) -> tuple[Tensor, Tensor]:
    """Cells holding the mask along one side ``[N, n]`` -> the pixel span ``[start, end)`` that
    ``upsample_masks`` resamples (the cells' span widened by one, times ``scale``); empty for an empty
    mask. No branch, so graphs export it."""
    hits = present.to(torch.int64)
    cells = _size(present.shape[1], hits)
    first = (hits.argmax(1) - 1).clamp(min=0)
    end = torch.minimum(cells + 1 - hits.flip(1).argmax(1), cells)
    start = (first.to(scale.dtype) * scale).floor().to(torch.int64).clamp(min=0)
    stop = torch.minimum((end.to(scale.dtype) * scale).ceil().to(torch.int64), _size(size, hits))
    return start, torch.where(present.any(1), stop, start)


def _windowed_detections_from_masks(
    probs: Tensor,
    labels: Tensor,
    scores: Tensor,
    resized: tuple[int, int],
    original: tuple[int, int],
    threshold: float,
) -> dict[str, Tensor]:
    values, origins = windowed_probs_at_input(probs, resized, original, threshold)
    keep = torch.nonzero(values.flatten(1).amax(1) > threshold).flatten()
    masks = (values > threshold).index_select(0, keep)  # bytes copied, not floats; Gather, not GatherND
    # extents from float maxima: ONNX Runtime reduces floats far faster than it casts bools to reduce them
    rows, cols = values.amax(dim=2) > threshold, values.amax(dim=1) > threshold
    origins = origins.index_select(0, keep)
    boxes = boxes_from_extents(rows.index_select(0, keep), cols.index_select(0, keep))
    boxes = boxes + origins.repeat(1, 2).to(boxes.dtype)
    return {
        "boxes": boxes,
        "labels": labels[keep] + 1,
        "scores": scores[keep],
        "masks": masks,
        "mask_origins": origins,
    }


def _windowed_assembly(
    mask_probs: Callable[[Tensor], Tensor],
    boxes: Tensor,
    labels: Tensor,
    scores: Tensor,
    resized: tuple[int, int],
    original: tuple[int, int],
    assembly: MaskAssembly,
) -> dict[str, Tensor]:
    boxes = boxes_at_input(boxes, resized, original)
    probs = mask_probs(torch.arange(boxes.shape[0], device=boxes.device))
    if assembly.rescore:
        scores = scores * maskness(probs, assembly.threshold)
    order = scores.topk(scores.shape[0]).indices  # ONNX has no stable sort; its TopK keeps ties in order
    boxes, labels, scores = boxes[order], labels[order], scores[order]
    clip = boxes if assembly.crop_to_boxes else None
    values, origins = windowed_probs_at_input(
        probs[order], resized, original, assembly.threshold, assembly.stride, clip
    )
    keep = torch.nonzero(values.flatten(1).amax(1) > assembly.threshold).flatten()
    return {
        "boxes": boxes[keep],
        "labels": labels[keep] + 1,
        "scores": scores[keep],
        "masks": (values > assembly.threshold).index_select(0, keep),  # bytes copied; Gather, not GatherND
        "mask_origins": origins.index_select(0, keep),
    }
