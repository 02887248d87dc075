"""COCO evaluation pinned against pycocotools, on real annotations and on the classic pitfalls."""

import copy
import json

import numpy as np
import pycocotools.mask as mask_utils
import pytest
from pycocotools.coco import COCO as PyCOCO
from pycocotools.cocoeval import COCOeval as PyCOCOeval

from instseg.data.coco import to_rle
from instseg.errors import DataError
from instseg.eval.coco import coco_evaluate, coco_report, stat_names, top_per_image
from tests.conftest import shared_data
from tests.eval.rectangles import detection, rectangles

PYCOCO_12 = stat_names((1, 10, 100))[:12]
SIZE = 64


def _dataset(objects: list[dict], images=(1,), cats=(1, 2)) -> dict:
    return rectangles(objects, SIZE, images, {c: f"c{c}" for c in cats})


def _det(box, score, image_id=1, category_id=1, bbox=None) -> dict:
    return detection(box, score, SIZE, image_id, category_id, bbox)


def _pycocotools(gt, results, iou_type="segm", max_dets=None, use_cats=1, strip=True):
    coco = PyCOCO()
    coco.dataset = copy.deepcopy(gt)
    coco.createIndex()
    drop = ("segmentation" if iou_type == "bbox" else "bbox") if strip else None
    dt = coco.loadRes([{k: v for k, v in r.items() if k != drop} for r in copy.deepcopy(results)])
    ev = PyCOCOeval(coco, dt, iou_type)
    if max_dets is not None:
        ev.params.maxDets = list(max_dets)
    ev.params.useCats = use_cats
    ev.evaluate()
    ev.accumulate()
    ev.summarize()
    return ev


def _first12(stats: dict) -> list[float]:
    return [stats[n] for n in PYCOCO_12]


def _pycoco_counts(ev) -> dict:
    """TP/FP/FN at 0.5 and 0.75 from pycocotools' per-image matches (area all, largest maxDets)."""
    out = {}
    for t, thr in enumerate(ev.params.iouThrs):
        if not (np.isclose(thr, 0.5) or np.isclose(thr, 0.75)):
            continue
        tp = fp = fn = 0
        for e in ev.evalImgs:
            if e is None or e["aRng"] != ev.params.areaRng[0]:
                continue
            matched, ignored = e["dtMatches"][t] > 0, e["dtIgnore"][t].astype(bool)
            tp += int((matched & ~ignored).sum())
            fp += int((~matched & ~ignored).sum())
            gt_ignored = np.asarray(e["gtIgnore"], dtype=bool)
            fn += int(((e["gtMatches"][t] == 0) & ~gt_ignored).sum())
        out[f"{thr:g}"] = {"tp": tp, "fp": fp, "fn": fn}
    return out


def _gt_as_results(gt: dict) -> list[dict]:
    images = {im["id"]: im for im in gt["images"]}
    out = []
    for a in gt["annotations"]:
        if a.get("iscrowd"):
            continue
        im = images[a["image_id"]]
        rle = to_rle(a["segmentation"], im["height"], im["width"])
        out.append(
            {
                "image_id": a["image_id"],
                "category_id": a["category_id"],
                "score": 1.0,
                "bbox": mask_utils.toBbox(rle).tolist(),
                "segmentation": {"size": rle["size"], "counts": rle["counts"].decode()},
            }
        )
    return out


def perturbed(gt: dict, seed: int = 0) -> list[dict]:
    """Shifted, dropped and duplicated detections with random scores and some wrong classes."""
    rng = np.random.default_rng(seed)
    images = {im["id"]: im for im in gt["images"]}
    cats = [c["id"] for c in gt["categories"]]
    out = []
    for a in gt["annotations"]:
        im = images[a["image_id"]]
        h, w = im["height"], im["width"]
        if rng.random() < 0.15:
            continue
        m = mask_utils.decode(to_rle(a["segmentation"], h, w))
        for _ in range(1 + int(rng.random() < 0.3)):
            dy, dx = rng.integers(-3, 4, 2)
            m2 = np.roll(np.roll(m, dy, 0), dx, 1)
            if m2.sum() == 0:
                continue
            rle = mask_utils.encode(np.asfortranarray(m2))
            category = a["category_id"] if rng.random() > 0.1 else int(rng.choice(cats))
            out.append(
                {
                    "image_id": a["image_id"],
                    "category_id": category,
                    "score": float(rng.random()),
                    "bbox": (mask_utils.toBbox(rle) + rng.normal(0, 2, 4)).clip(0.5).tolist(),
                    "segmentation": {"size": [h, w], "counts": rle["counts"].decode()},
                }
            )
    return out


def test_perfect_predictions_score_one(tiny_coco):
    gt = json.loads((tiny_coco / "annotations" / "instances_val.json").read_text())
    metrics = coco_evaluate(gt, _gt_as_results(gt), ("segm", "bbox", "boundary"))
    for iou_type in ("segm", "bbox", "boundary"):
        assert metrics[iou_type]["AP"] == pytest.approx(1.0)
        assert metrics[iou_type]["AP50"] == pytest.approx(1.0)


def test_empty_results_give_zeros_and_unknown_images_fail(tiny_coco):
    gt = tiny_coco / "annotations" / "instances_val.json"
    metrics = coco_evaluate(gt, [], ("segm",), max_dets=(1, 10, 500))
    assert list(metrics["segm"]) == stat_names((1, 10, 500)) and set(metrics["segm"].values()) == {0.0}
    with pytest.raises(DataError, match="not in the ground truth"):
        coco_evaluate(
            gt, [{"image_id": 999, "category_id": 3, "bbox": [0, 0, 1, 1], "score": 1.0}], ("bbox",)
        )
    with pytest.raises(DataError, match="no 'segmentation'"):
        coco_evaluate(
            gt, [{"image_id": 100, "category_id": 3, "bbox": [0, 0, 1, 1], "score": 1.0}], ("segm",)
        )


@pytest.mark.parametrize("iou_type", ["segm", "bbox"])
def test_matches_pycocotools_on_real_coco_with_crowd(iou_type):
    root = shared_data("coco_tiny")
    gt = json.loads((root / "annotations" / "instances_val2017.json").read_text())
    assert any(a["iscrowd"] for a in gt["annotations"])
    results = perturbed(gt) + perturbed(gt, seed=1)
    ours = coco_report(gt, results, (iou_type,))[iou_type]
    ref = _pycocotools(gt, results, iou_type)
    np.testing.assert_allclose(_first12(ours.stats), ref.stats, atol=1e-12)
    assert 0.2 < ours.stats["AP"] < 0.95  # a real, non-trivial operating point
    assert ours.counts == _pycoco_counts(ref)
    per_class_ref = ref.eval["precision"][:, :, :, 0, -1]
    for k, row in enumerate(ours.per_class):
        s = per_class_ref[:, :, k]
        assert row["AP"] == pytest.approx(s[s > -1].mean() if (s > -1).any() else -1.0, abs=1e-12)


@pytest.mark.parametrize("iou_type", ["segm", "bbox"])
def test_matches_pycocotools_on_synthetic_with_crowd(tiny_coco, iou_type):
    gt = json.loads((tiny_coco / "annotations" / "instances_val.json").read_text())
    results = perturbed(gt, seed=3)
    # A detection on the crowd region: matched to the crowd, so neither TP nor FP.
    results.append(
        {
            "image_id": 100,
            "category_id": 3,
            "score": 0.99,
            "bbox": [0, 0, 6, 6],
            "segmentation": {"size": [64, 64], "counts": gt["annotations"][-1]["segmentation"]["counts"]},
        }
    )
    ours = coco_report(gt, results, (iou_type,))[iou_type]
    ref = _pycocotools(gt, results, iou_type)
    np.testing.assert_allclose(_first12(ours.stats), ref.stats, atol=1e-12)
    assert ours.counts == _pycoco_counts(ref)


def test_class_agnostic_matches_pycocotools_use_cats_0():
    gt = _dataset([{"box": (2, 2, 20, 20)}, {"box": (30, 30, 50, 50), "category_id": 2}])
    results = [_det((2, 2, 20, 20), 0.9, category_id=2), _det((30, 30, 50, 50), 0.8, category_id=1)]
    agnostic = coco_report(gt, results, ("segm",), class_agnostic=True)["segm"]
    np.testing.assert_allclose(_first12(agnostic.stats), _pycocotools(gt, results, use_cats=0).stats)
    assert agnostic.stats["AP"] == pytest.approx(1.0)
    assert coco_evaluate(gt, results, ("segm",))["segm"]["AP"] == pytest.approx(0.0)


# --- the pitfalls, each small enough to reason about, each checked against pycocotools ----------------


def _check(gt, results, max_dets=None, iou_type="segm"):
    ours = coco_report(gt, results, (iou_type,), max_dets or (1, 10, 100))[iou_type]
    ref = _pycocotools(gt, results, iou_type, max_dets)
    np.testing.assert_allclose(_first12(ours.stats), ref.stats, atol=1e-12)
    assert ours.counts == _pycoco_counts(ref)
    return ours


def test_one_crowd_region_absorbs_many_detections():
    gt = _dataset([{"box": (0, 0, 40, 40), "iscrowd": 1}, {"box": (44, 44, 60, 60)}])
    inside = [_det((2 + 4 * i, 2, 10 + 4 * i, 10), 0.9 - 0.01 * i) for i in range(5)]
    results = [*inside, _det((44, 44, 60, 60), 0.5)]
    ours = _check(gt, results)
    # Crowd IoU is intersection over the detection's area: each small box inside counts as matched.
    assert ours.stats["AP"] == pytest.approx(1.0)
    assert ours.counts["0.5"] == {"tp": 1, "fp": 0, "fn": 0}


def test_ignore_flag_is_overridden_by_iscrowd_as_in_pycocotools():
    # pycocotools sets gt["ignore"] = iscrowd, so ignore=1 on a non-crowd object is not honoured.
    gt = _dataset([{"box": (2, 2, 20, 20), "ignore": 1}, {"box": (30, 30, 50, 50)}])
    ours = _check(gt, [_det((30, 30, 50, 50), 0.9)])
    assert ours.counts["0.5"]["fn"] == 1


def test_area_ranges_come_from_the_gt_area_field_with_inclusive_ends():
    # Area exactly 32**2 is both "small" [0, 1024] and "medium" [1024, 9216]; the field wins over the mask.
    gt = _dataset([{"box": (0, 0, 10, 10), "area": 32**2}, {"box": (20, 20, 60, 60), "area": 5.0}])
    results = [_det((0, 0, 10, 10), 0.9), _det((20, 20, 60, 60), 0.8)]
    ours = _check(gt, results)
    assert ours.stats["APs"] == pytest.approx(1.0) and ours.stats["APm"] == pytest.approx(1.0)
    assert ours.stats["APl"] == -1.0  # no ground truth is large by its area field


def test_max_dets_apply_per_image_and_category():
    gt = _dataset([{"box": (2, 2, 20, 20)}, {"box": (30, 30, 50, 50), "category_id": 2}])
    results = [
        _det((40, 2, 60, 20), 0.95),  # an FP that outranks the TP of category 1
        _det((2, 2, 20, 20), 0.9),
        _det((30, 30, 50, 50), 0.8, category_id=2),
    ]
    ours = _check(gt, results, max_dets=(1, 10, 100))
    assert ours.stats["AR1"] == pytest.approx(0.5)  # category 2 keeps its own top-1


def test_101_point_interpolation_is_exact():
    gt = _dataset([{"box": (2, 2, 20, 20)}, {"box": (30, 30, 50, 50)}])
    results = [_det((2, 2, 20, 20), 0.9), _det((40, 2, 60, 20), 0.8), _det((30, 30, 50, 50), 0.7)]
    ours = _check(gt, results)
    # precision 1 up to recall 0.5 (51 points), then 2/3 up to recall 1 (50 points)
    assert ours.stats["AP"] == pytest.approx((51 * 1.0 + 50 * 2 / 3) / 101, abs=1e-12)


@pytest.mark.parametrize(("tp_first", "expected"), [(True, 1.0), (False, 0.5)])
def test_score_ties_keep_the_results_order(tp_first, expected):
    gt = _dataset([{"box": (2, 2, 20, 20)}])
    tp, fp = _det((2, 2, 20, 20), 0.9), _det((40, 40, 60, 60), 0.9)
    ours = _check(gt, [tp, fp] if tp_first else [fp, tp])
    assert ours.stats["AP"] == pytest.approx(expected)


def test_detections_on_images_without_ground_truth_are_false_positives():
    gt = _dataset([{"box": (2, 2, 20, 20)}], images=(1, 2))
    results = [_det((2, 2, 20, 20), 0.9, image_id=2), _det((2, 2, 20, 20), 0.8, image_id=1)]
    ours = _check(gt, results)
    assert ours.stats["AP"] == pytest.approx(0.5)
    assert ours.counts["0.5"] == {"tp": 1, "fp": 1, "fn": 0}


def test_boxes_are_stripped_from_segm_results_so_area_comes_from_the_mask():
    gt = _dataset([{"box": (0, 0, 34, 34)}])  # 1156 px: medium
    # An unmatched detection with a medium mask (1200 px) and a wrong, tiny box, ranked above the TP.
    results = [_det((34, 0, 64, 40), 0.95, bbox=[34, 0, 3, 3]), _det((0, 0, 34, 34), 0.9)]
    ours = _check(gt, results)
    assert ours.stats["APm"] == pytest.approx(0.5)  # the FP counts in the medium range
    # pycocotools given the box takes the FP's area from it, calls it small and ignores it for APm:
    naive = _pycocotools(gt, results, strip=False)
    assert naive.stats[4] == pytest.approx(1.0)


def test_the_documented_disagreement_custom_max_dets():
    gt = _dataset([{"box": (2, 2, 20, 20)}])
    results = [_det((2, 2, 20, 20), 0.9)]
    ours = coco_report(gt, results, ("segm",), (1, 10, 500))["segm"]
    ref = _pycocotools(gt, results, max_dets=(1, 10, 500))
    assert ref.stats[0] == -1.0  # pycocotools looks up maxDets=100, which is not there
    assert ours.stats["AP"] == pytest.approx(1.0)  # we report it at the largest maxDets
    np.testing.assert_allclose([ours.stats[k] for k in ("AR1", "AR10", "AR500")], ref.stats[6:9])


# --- LVIS federated evaluation ---------------------------------------------------------------------


def _lvis(neg=(), not_exhaustive=()) -> dict:
    gt = _dataset([{"box": (2, 2, 20, 20)}, {"box": (30, 30, 50, 50), "category_id": 2}], cats=(1, 2, 3))
    for cat, freq in zip(gt["categories"], ("r", "c", "f"), strict=True):
        cat["frequency"] = freq
    gt["images"][0]["neg_category_ids"] = list(neg)
    gt["images"][0]["not_exhaustive_category_ids"] = list(not_exhaustive)
    return gt


def test_lvis_detected_and_reports_frequency_groups():
    results = [_det((2, 2, 20, 20), 0.9), _det((30, 30, 50, 50), 0.8, category_id=2)]
    stats = coco_evaluate(_lvis(), results, ("segm",))["segm"]
    assert list(stats) == stat_names((300,), lvis=True)
    assert stats["APr"] == pytest.approx(1.0) and stats["APc"] == pytest.approx(1.0)
    assert stats["APf"] == -1.0  # category 3 has no ground truth


def test_lvis_federated_rules():
    good = [_det((2, 2, 20, 20), 0.5), _det((30, 30, 50, 50), 0.5, category_id=2)]
    fp_cat1 = _det((40, 2, 60, 20), 0.9)  # higher score than the TP: an FP costs AP of category 1
    fp_cat3 = _det((40, 2, 60, 20), 0.9, category_id=3)
    # A class neither present nor verified absent is not evaluated on this image.
    assert coco_evaluate(_lvis(), [*good, fp_cat3], ("segm",))["segm"]["AP"] == pytest.approx(1.0)
    # Verified absent (neg_category_ids): the detection is a real FP; category 3 has no GT, so AP is -1 there.
    report = coco_report(_lvis(neg=(3,)), [*good, fp_cat3], ("segm",))["segm"]
    assert report.counts["0.5"]["fp"] == 1
    # Not exhaustively labelled: an unmatched detection of that class is not an FP.
    ignored = coco_report(_lvis(not_exhaustive=(1,)), [*good, fp_cat1], ("segm",))["segm"]
    assert ignored.stats["AP"] == pytest.approx(1.0) and ignored.counts["0.5"]["fp"] == 0
    counted = coco_report(_lvis(), [*good, fp_cat1], ("segm",))["segm"]
    assert counted.stats["AP"] < 1.0 and counted.counts["0.5"]["fp"] == 1


def test_lvis_keeps_the_300_best_detections_per_image():
    results = [_det((0, 0, 4, 4), i / 1000, category_id=1 + i % 3) for i in range(400)]
    kept = top_per_image(results, 300)
    assert len(kept) == 300 and min(r["score"] for r in kept) == pytest.approx(0.1)
