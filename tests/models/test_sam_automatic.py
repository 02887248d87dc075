"""Automatic mask generation's crop layers and small-region clean-up."""

import dataclasses

import torch

from instseg.masks import masks_to_boxes, remove_small_regions
from instseg.models.sam.crops import Crop, crop_layers, cut_by_crop, merge_crops
from instseg.models.sam.model import SAM
from tests.models.test_sam import TINY


def test_crop_layers_tile_the_image_with_overlap():
    crops = crop_layers((300, 500), 2, 0.3)
    assert crops[0] == Crop(0, 0, 0, 500, 300)
    assert [sum(c.layer == i for c in crops) for i in range(3)] == [1, 4, 16]
    for layer in (1, 2):
        covered = torch.zeros(300, 500, dtype=torch.int64)
        for c in crops:
            if c.layer == layer:
                assert 0 <= c.x0 < c.x1 <= 500 and 0 <= c.y0 < c.y1 <= 300
                covered[c.y0 : c.y1, c.x0 : c.x1] += 1
        assert covered.min() >= 1  # every pixel is in a crop of every layer
        assert covered.max() >= 2  # and neighbours overlap
    first = [c for c in crops if c.layer == 1]
    assert first[0].x1 - first[1].x0 == int(0.3 * 300)  # the overlap is a fraction of the shorter side


def test_only_inner_crop_edges_cut_a_mask():
    crop = Crop(1, 0, 0, 100, 80)  # the top-left crop of an image of 200 x 160
    boxes = torch.tensor([[0.0, 0, 10, 10], [40, 30, 60, 50], [85, 30, 99, 50], [40, 70, 50, 80]])
    assert cut_by_crop(boxes, crop, (160, 200)).tolist() == [False, False, True, True]
    assert not cut_by_crop(boxes, Crop(0, 0, 0, 100, 80), (80, 100)).any()  # the whole image


def _result(masks, scores):
    masks = torch.stack(masks)
    return {"boxes": masks_to_boxes(masks), "scores": torch.tensor(scores), "masks": masks}


def test_merging_puts_masks_back_in_place_and_prefers_the_closer_view():
    cfg = dataclasses.replace(TINY, nms_threshold=0.5, detections_per_image=10)
    whole, crop = Crop(0, 0, 0, 120, 100), Crop(1, 50, 40, 120, 100)
    a = torch.zeros(100, 120, dtype=torch.bool)
    a[60:70, 70:85] = True
    b = torch.zeros(100, 120, dtype=torch.bool)
    b[5:15, 5:15] = True
    a_in_crop = torch.zeros(60, 70, dtype=torch.bool)
    a_in_crop[21:30, 21:35] = True  # nearly the same object, seen in the crop
    cut = torch.zeros(60, 70, dtype=torch.bool)
    cut[30:40, 60:70] = True  # touches the crop's right edge, which is the image's: kept
    merged = merge_crops(
        [(whole, _result([a, b], [0.99, 0.9])), (crop, _result([a_in_crop, cut], [0.8, 0.85]))],
        (100, 120),
        cfg,
    )
    assert merged["masks"].shape == (3, 100, 120)
    assert merged["scores"].tolist() == sorted(merged["scores"].tolist(), reverse=True)
    placed = torch.zeros(100, 120, dtype=torch.bool)
    placed[61:70, 71:85] = True
    assert any(torch.equal(m, placed) for m in merged["masks"])  # the crop's copy of a won
    assert not any(torch.equal(m, a) for m in merged["masks"])
    torch.testing.assert_close(merged["boxes"], masks_to_boxes(merged["masks"]))


def test_small_islands_and_holes_are_removed():
    mask = torch.zeros(2, 40, 40, dtype=torch.bool)
    mask[0, 5:25, 5:25] = True
    mask[0, 10:12, 10:12] = False  # a hole of 4 px
    mask[0, 30:32, 30:33] = True  # an island of 6 px
    mask[0, 14:20, 14:20] = False  # a hole of 36 px stays
    mask[1, 2:4, 2:4] = True
    mask[1, 30:33, 30:33] = True  # only small islands: the largest stays
    out = remove_small_regions(mask, 10)
    expected = mask[0].clone()
    expected[10:12, 10:12] = True
    expected[30:32, 30:33] = False
    assert torch.equal(out[0], expected)
    assert int(out[1].sum()) == 9 and bool(out[1, 31, 31])


def test_automatic_masks_with_crop_layers_on_an_untrained_model():
    torch.manual_seed(0)
    cfg = dataclasses.replace(
        TINY,
        points_per_side=4,
        iou_threshold=-100.0,
        stability_threshold=0.0,
        crop_layers=1,
        min_region_area=4,
        detections_per_image=20,
    )
    model = SAM(cfg).eval()
    (out,) = model([torch.rand(3, 70, 90)])
    assert 0 < len(out["scores"]) <= 20
    assert out["masks"].shape[1:] == (70, 90) and out["masks"].dtype == torch.bool
    assert out["masks"].flatten(1).any(1).all()
    torch.testing.assert_close(out["boxes"], masks_to_boxes(out["masks"]))
    assert torch.all(out["scores"][:-1] >= out["scores"][1:])


def test_grid_points_decode_on_their_own_window():
    """``grid_window`` narrows what each grid point decodes; prompts keep ``decode_window``."""
    torch.manual_seed(0)
    cfg = dataclasses.replace(TINY, points_per_side=3, iou_threshold=-100.0, stability_threshold=0.0)
    model = SAM(dataclasses.replace(cfg, grid_window=3)).eval()
    assert model.postprocessor.decode.window == 3 and model.decode.window == 0
    seen = []
    decode = model.postprocessor.decode.decode_windows
    model.postprocessor.decode.decode_windows = lambda *a: seen.append(out := decode(*a)) or out
    (out,) = model([torch.rand(3, 64, 64)])
    assert seen and all(logits.shape[-2:] == (12, 12) for logits, _, _ in seen)  # 3 cells x 4
    assert len(out["scores"]) > 0 and out["masks"].shape[1:] == (64, 64)
