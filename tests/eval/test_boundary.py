"""Boundary AP on box crops gives faster-coco-eval's boundary numbers exactly."""

import copy
import json

import cv2
import faster_coco_eval.mask_api_new_cpp as mask_api_cpp
import numpy as np
import pycocotools.mask as mask_utils
import pytest
from faster_coco_eval import COCO, COCOeval_faster
from hypothesis import given, settings
from hypothesis import strategies as st

from instseg.eval.boundary import boundary_band, decode_crop, dilation_pixels
from instseg.eval.coco import coco_report
from tests.conftest import shared_data
from tests.eval.test_coco import perturbed


def _reference_band(mask: np.ndarray, ratio: float) -> np.ndarray:
    """The Boundary IoU paper's definition at full image size (image border counts as background)."""
    h, w = mask.shape
    d = dilation_pixels(h, w, ratio)
    padded = cv2.copyMakeBorder(mask, 1, 1, 1, 1, cv2.BORDER_CONSTANT, value=0)
    eroded = cv2.erode(padded, np.ones((3, 3), np.uint8), iterations=d)[1:-1, 1:-1]
    return (mask - eroded).astype(bool)


masks = st.tuples(st.integers(1, 40), st.integers(1, 40), st.integers(0, 2**32 - 1), st.floats(0.05, 0.9))


def _random_mask(h: int, w: int, seed: int, density: float) -> np.ndarray:
    rng = np.random.default_rng(seed)
    m = (rng.random((h, w)) < density).astype(np.uint8)
    return cv2.dilate(m, np.ones((2, 2), np.uint8)) if seed % 2 else m  # blobs and speckle


@settings(max_examples=150, deadline=None)
@given(masks, st.data())
def test_decode_crop_equals_full_decode(spec, data):
    h, w, seed, density = spec
    m = _random_mask(h, w, seed, density)
    rle = mask_utils.encode(np.asfortranarray(m))
    counts = mask_api_cpp.toUncompressedRLE([{"size": [h, w], "counts": rle["counts"]}])[0]["counts"]
    x0 = data.draw(st.integers(0, w - 1))
    x1 = data.draw(st.integers(x0 + 1, w))
    y0 = data.draw(st.integers(0, h - 1))
    y1 = data.draw(st.integers(y0 + 1, h))
    np.testing.assert_array_equal(decode_crop(counts, h, (x0, y0, x1, y1)).T, m[y0:y1, x0:x1].astype(bool))


@settings(max_examples=150, deadline=None)
@given(masks, st.sampled_from([0.005, 0.02, 0.08]))
def test_band_on_the_box_crop_equals_the_full_image_band(spec, ratio):
    h, w, seed, density = spec
    m = _random_mask(h, w, seed, density)
    rle = mask_utils.encode(np.asfortranarray(m))
    band = boundary_band(rle, dilation_pixels(h, w, ratio))
    full = np.zeros((w, h), dtype=bool)
    bw, bh = band.pixels.shape
    full[band.x0 : band.x0 + bw, band.y0 : band.y0 + bh] = band.pixels
    np.testing.assert_array_equal(full.T, _reference_band(m, ratio))
    assert band.area == int(_reference_band(m, ratio).sum())


def _engine_boundary(gt: dict, results: list[dict], ratio: float) -> np.ndarray:
    coco = COCO(copy.deepcopy(gt))
    dt = coco.loadRes([{k: v for k, v in r.items() if k != "bbox"} for r in copy.deepcopy(results)])
    ev = COCOeval_faster(coco, dt, iouType="boundary", boundary_dilation_ratio=ratio, print_function=print)
    ev.evaluate()
    ev.accumulate()
    ev.summarize()
    return np.asarray(ev.stats[:12])


@pytest.mark.parametrize("ratio", [0.02, 0.05])
def test_boundary_ap_equals_faster_coco_eval_on_real_coco(ratio):
    root = shared_data("coco_tiny")
    gt = json.loads((root / "annotations" / "instances_val2017.json").read_text())
    results = perturbed(gt, seed=5)
    ours = coco_report(gt, results, ("boundary",), boundary_dilation_ratio=ratio)["boundary"]
    np.testing.assert_array_equal(list(ours.stats.values())[:12], _engine_boundary(gt, results, ratio))
    segm = coco_report(gt, results, ("segm",))["segm"]
    assert ours.stats["AP"] < segm.stats["AP"]  # boundary quality is the stricter test


def test_boundary_ap_equals_faster_coco_eval_on_synthetic(tiny_coco):
    gt = json.loads((tiny_coco / "annotations" / "instances_val.json").read_text())
    results = perturbed(gt, seed=2)
    ours = coco_report(gt, results, ("boundary",))["boundary"]
    np.testing.assert_array_equal(list(ours.stats.values())[:12], _engine_boundary(gt, results, 0.02))
