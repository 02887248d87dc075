"""Masks kept as box crops: the same pixels, RLE, boxes and label images as the dense stack."""

from __future__ import annotations

import torch

from instseg.cropped_masks import CroppedMasks, as_requested, cropped_masks, to_cropped
from instseg.masks import encode_masks, masks_to_boxes
from instseg.measurements import label_image
from instseg.models.postprocess import paste_masks
from instseg.structures import Instances


def _random_masks(seed: int) -> torch.Tensor:
    """Masks of one small image: empty ones, full boxes, ragged blobs, some at the image's edges."""
    g = torch.Generator().manual_seed(seed)
    h, w = torch.randint(1, 24, (2,), generator=g).tolist()
    n = int(torch.randint(0, 6, (1,), generator=g))
    masks = torch.zeros((n, h, w), dtype=torch.bool)
    for i in range(n):
        kind = int(torch.randint(0, 4, (1,), generator=g))
        y0, x0 = int(torch.randint(0, h, (1,), generator=g)), int(torch.randint(0, w, (1,), generator=g))
        y1, x1 = (
            int(torch.randint(y0, h + 1, (1,), generator=g)),
            int(torch.randint(x0, w + 1, (1,), generator=g)),
        )
        if kind == 1:
            masks[i, y0:y1, x0:x1] = True
        elif kind >= 2:
            masks[i, y0:y1, x0:x1] = torch.rand((y1 - y0, x1 - x0), generator=g) > 0.4
    return masks


def test_rle_boxes_and_emptiness_equal_the_dense_masks_ones():
    for seed in range(200):
        masks = _random_masks(seed)
        tight = CroppedMasks.from_dense(masks)
        # crops as models make them: the whole image, so with empty margins
        loose = CroppedMasks(list(masks), torch.zeros((len(masks), 2), dtype=torch.int64), masks.shape[1:])
        for cropped in (tight, loose):
            assert torch.equal(cropped.dense(), masks)
            assert encode_masks(cropped) == encode_masks(masks), seed
            assert torch.equal(cropped.tight_boxes(), masks_to_boxes(masks))
            assert torch.equal(cropped.nonempty(), masks.flatten(1).any(1))
        assert sum(c.numel() for c in tight.crops) <= masks.numel()


def test_indexing_selects_the_same_masks_as_the_dense_stack():
    masks = torch.rand((5, 9, 11), generator=torch.Generator().manual_seed(0)) > 0.5
    cropped = CroppedMasks.from_dense(masks)
    keep = torch.tensor([True, False, True, True, False])
    for index, want in (
        (keep, masks[keep]),
        (torch.tensor([2, 0]), masks[[2, 0]]),
        ([3, 1], masks[[3, 1]]),
        (slice(1, 3), masks[1:3]),
        (-1, masks[-1:]),
        (0, masks[:1]),
    ):
        assert torch.equal(cropped[index].dense(), want)


def test_label_image_from_crops_equals_the_one_from_dense_masks():
    masks = torch.zeros((4, 20, 30), dtype=torch.bool)
    masks[0, 2:12, 3:15] = True
    masks[1, 8:18, 10:25] = True  # overlaps 0 and 2
    masks[2, 5:9, 12:20] = True
    masks[3, 9:11, 11:13] = True  # covered by better-scored masks everywhere: gets no id
    scores = torch.tensor([0.5, 0.9, 0.7, 0.1])
    for masks_as in (masks, CroppedMasks.from_dense(masks)):
        inst = Instances(torch.zeros(4, 4), torch.ones(4, dtype=torch.int64), scores, masks_as, (20, 30))
        labels, kept = label_image(inst)
        assert kept.tolist() == [1, 2, 0]  # by score; mask 3 is hidden
        assert labels[15, 20] == 1 and labels[6, 14] == 2 and labels[3, 4] == 3 and labels[10, 12] == 1
        assert labels[0, 0] == 0 and labels.max() == 3


def test_inside_the_switch_models_return_crops_and_outside_dense():
    probs, boxes = torch.ones((2, 1, 14, 14)), torch.tensor([[2.0, 3, 10, 9], [0, 0, 5, 5]])
    assert isinstance(as_requested(paste_masks(probs, boxes, (12, 16))), torch.Tensor)
    with cropped_masks():
        assert isinstance(as_requested(paste_masks(probs, boxes, (12, 16))), CroppedMasks)
    assert isinstance(as_requested(paste_masks(probs, boxes, (12, 16))), torch.Tensor)
    masks = paste_masks(probs, boxes, (12, 16)).dense()
    assert masks[0, 3:9, 2:10].all() and masks[1, :5, :5].all() and not masks[:, 11:, 12:].any()
    assert torch.equal(to_cropped(masks).dense(), masks)
