import numpy as np
import pycocotools.mask as mask_utils
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torchvision.models.detection.roi_heads import paste_masks_in_image

from instseg.masks import class_maps, encode_masks, masks_to_boxes
from instseg.models.postprocess import paste_masks, upsample_masks
from instseg.structures import Category, Instances


@pytest.mark.parametrize("resolution", [14, 28])
def test_paste_masks_matches_torchvision(resolution):
    g = torch.Generator().manual_seed(0)
    n, h, w = 12, 57, 73
    probs = torch.rand((n, 1, resolution, resolution), generator=g)
    xy = torch.rand((n, 2), generator=g) * torch.tensor([w - 8, h - 8]) - 4  # some cross the border
    wh = torch.rand((n, 2), generator=g) * 40 + 1
    boxes = torch.cat([xy, xy + wh], 1)
    expected = paste_masks_in_image(probs, boxes, (h, w))[:, 0] > 0.5
    got = paste_masks(probs, boxes, (h, w)).dense()
    assert got.dtype == torch.bool and got.shape == (n, h, w)
    assert torch.equal(got, expected)


def test_paste_masks_box_outside_image_gives_empty_mask():
    # torchvision's paste_masks_in_image raises on this input.
    out = paste_masks(torch.ones((1, 1, 28, 28)), torch.tensor([[-30.0, -30, -10, -10]]), (20, 20))
    assert out.shape == (1, 20, 20) and not out.nonempty().any() and not out.dense().any()


def test_paste_masks_empty():
    out = paste_masks(torch.zeros((0, 1, 28, 28)), torch.zeros((0, 4)), (10, 20))
    assert out.shape == (0, 10, 20) and out.dense().shape == (0, 10, 20)


def test_encode_masks_round_trip():
    masks = torch.rand((5, 31, 17), generator=torch.Generator().manual_seed(1)) > 0.6
    rles = encode_masks(masks, chunk_bytes=2 * 31 * 17)  # two masks a chunk
    assert all(isinstance(r["counts"], str) for r in rles)
    decoded = np.stack([mask_utils.decode({"size": r["size"], "counts": r["counts"].encode()}) for r in rles])
    assert np.array_equal(decoded, masks.numpy())


def test_masks_to_boxes_uses_exclusive_edges_and_handles_empty():
    masks = torch.zeros((3, 10, 12), dtype=torch.bool)
    masks[0, 2:5, 3:9] = True
    masks[1, 7, 11] = True
    boxes = masks_to_boxes(masks)
    assert boxes.tolist() == [[3, 2, 9, 5], [11, 7, 12, 8], [0, 0, 0, 0]]
    # Same convention as pycocotools' toBbox (x, y, w, h).
    rle = mask_utils.encode(np.asfortranarray(masks[0].numpy().astype(np.uint8)))
    assert mask_utils.toBbox(rle).tolist() == [3, 2, 6, 3]


def test_instances_to_coco_maps_labels_back_to_category_ids():
    masks = torch.zeros((2, 8, 8), dtype=torch.bool)
    masks[0, :2, :2] = True
    masks[1, 4:, 4:] = True
    inst = Instances(
        boxes=torch.tensor([[0.0, 0, 2, 2], [4, 4, 8, 8]]),
        labels=torch.tensor([2, 1]),
        scores=torch.tensor([0.9, 0.3]),
        masks=masks,
        image_size=(8, 8),
        categories=(Category(3, "square"), Category(7, "disk")),
    )
    assert len(inst) == 2
    assert inst.category_names == ["disk", "square"]
    res = inst.to_coco(image_id=42)
    assert [r["category_id"] for r in res] == [7, 3]
    assert res[1]["bbox"] == [4, 4, 4, 4]
    assert res[0]["image_id"] == 42 and res[0]["score"] == 0.9
    assert mask_utils.area({"size": [8, 8], "counts": res[0]["segmentation"]["counts"].encode()}) == 4
    assert set(inst.to_numpy()) == {"boxes", "labels", "scores", "masks"}


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 4), st.integers(1, 30), st.integers(1, 30), st.integers(0, 2**31 - 1))
def test_mask_codecs_round_trip(n, h, w, seed):
    """bool masks -> RLE (str counts) -> masks, and every COCO segmentation form -> the same RLE."""
    from instseg.data.coco import to_rle
    from tests.conftest import uncompressed_counts

    rng = np.random.default_rng(seed)
    masks = torch.from_numpy(rng.random((n, h, w)) < rng.random())
    rles = encode_masks(masks)
    assert len(rles) == n
    for m, rle in zip(masks, rles, strict=True):
        compressed = {"size": rle["size"], "counts": rle["counts"].encode()}
        assert np.array_equal(mask_utils.decode(compressed).astype(bool), m.numpy())
        assert to_rle(rle, h, w) == compressed
        uncompressed = {"size": [h, w], "counts": uncompressed_counts(m.numpy())}
        assert np.array_equal(mask_utils.decode(to_rle(uncompressed, h, w)).astype(bool), m.numpy())


def test_upsample_masks_equals_full_interpolation():
    torch.manual_seed(0)
    probs = torch.nn.functional.avg_pool2d(torch.rand(1, 6, 20, 30), 5, 1, 2)[0]
    for scale, size in [((4.0, 4.0), (80, 120)), ((2.6, 3.3), (52, 99)), ((1.0, 1.0), (20, 30))]:
        full = torch.nn.functional.interpolate(probs[None], size=size, mode="bilinear", align_corners=False)[
            0
        ]
        assert torch.equal(upsample_masks(probs, scale, size).dense(), full > 0.5)


def test_upsample_masks_clipped_while_resampling_equals_cutting_afterwards():
    torch.manual_seed(0)
    probs = torch.nn.functional.avg_pool2d(torch.rand(1, 6, 20, 30), 5, 1, 2)[0]
    size = (52, 99)
    full = torch.nn.functional.interpolate(probs[None], size=size, mode="bilinear", align_corners=False)[0]
    # boxes with fractional edges, one past the image, one empty; a pixel counts when its centre is inside
    clip = torch.tensor([[3.4, 2.5, 60.6, 40.5], [-5, -5, 200, 200], [10, 10, 10, 30], [0.2, 0.7, 2.2, 3.1]])
    clip = torch.cat([clip, clip[:2] + 7.3])
    ys, xs = torch.arange(size[0]) + 0.5, torch.arange(size[1]) + 0.5
    inside = ((ys >= clip[:, 1:2]) & (ys < clip[:, 3:4]))[:, :, None] & (
        (xs >= clip[:, 0:1]) & (xs < clip[:, 2:3])
    )[:, None]
    expected = (full > 0.5) & inside
    assert expected.flatten(1).any(1).tolist() == [True, True, False, False, True, True]  # the cut matters
    assert not torch.equal(expected, full > 0.5)
    assert torch.equal(upsample_masks(probs, (2.6, 3.3), size, clip=clip).dense(), expected)


def test_class_maps_cover_the_union_of_each_class_at_the_stride():
    masks = torch.zeros((3, 8, 8), dtype=torch.bool)
    masks[0, :4, :2] = True  # two halves of the top-left 4x4 cell, from two touching objects
    masks[1, :4, 2:4] = True
    masks[2, 4:, 4:6] = True  # half of the bottom-right cell, class 2
    targets = [
        {"masks": masks, "labels": torch.tensor([1, 1, 2])},
        {"masks": masks[:0], "labels": torch.zeros(0, dtype=torch.int64)},
    ]
    maps = class_maps(targets, num_classes=3, stride=4, size=(3, 2))  # padded past the image
    assert maps.shape == (2, 3, 3, 2)
    expected = torch.zeros((3, 3, 2))
    expected[0, 0, 0] = 1.0  # the union covers the cell, although neither object covers more than half
    expected[1, 1, 1] = 0.5
    torch.testing.assert_close(maps[0], expected)
    assert maps[1].sum() == 0
