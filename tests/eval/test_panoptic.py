"""PQ by panopticapi's rule and semantic mIoU, on cases small enough to count by hand."""

from __future__ import annotations

import numpy as np
import pytest

from instseg.eval.panoptic import PanopticQuality, Segment, SemanticIoU


def row(*ids: int) -> np.ndarray:
    return np.array([ids], dtype=np.int32)


def test_identical_maps_score_one():
    gt = np.array([[1, 1, 2, 2], [1, 1, 2, 2]])
    pq = PanopticQuality({1: True, 2: False})
    pq.update(gt, [Segment(1, 1), Segment(2, 2)], gt * 10, [Segment(10, 1), Segment(20, 2)])
    s = pq.summary()
    assert s["all"] == {"pq": 1.0, "sq": 1.0, "rq": 1.0, "n": 2}
    assert s["things"]["n"] == 1 and s["stuff"]["n"] == 1


def test_predicted_pixels_on_void_leave_the_union():
    # ground truth: 6 pixels of segment 1, then 4 void; prediction covers 2..9: 4 on the object, 4 on void
    pq = PanopticQuality({1: True})
    pq.update(
        row(1, 1, 1, 1, 1, 1, 0, 0, 0, 0), [Segment(1, 1)], row(0, 0, 7, 7, 7, 7, 7, 7, 7, 7), [Segment(7, 1)]
    )
    s = pq.summary()["per_class"][1]
    # union = 8 + 6 - 4 - 4 (on void) = 6: IoU 4/6 matches (4/10 = 0.4 would not)
    assert s["tp"] == 1 and s["fp"] == 0 and s["fn"] == 0
    assert s["pq"] == pytest.approx(4 / 6) and s["sq"] == pytest.approx(4 / 6) and s["rq"] == 1.0


def test_crowd_regions_are_never_matched_and_excuse_predictions_on_them():
    gt = row(1, 1, 1, 1, 1, 2, 2, 2, 2, 2)
    gt_segments = [Segment(1, 1, iscrowd=True), Segment(2, 1)]
    pred = row(3, 3, 3, 3, 0, 4, 4, 4, 5, 5)
    pred_segments = [Segment(3, 1), Segment(4, 1), Segment(5, 2)]
    pq = PanopticQuality({1: True, 2: False})
    pq.update(gt, gt_segments, pred, pred_segments)
    s = pq.summary()
    # segment 3 lies on the crowd region of its class: not a false positive; segment 4: IoU 3/5 with
    # segment 2; segment 5 (class 2) overlaps only class 1: a false positive of class 2
    assert s["per_class"][1] == {"pq": 0.6, "sq": 0.6, "rq": 1.0, "tp": 1, "fp": 0, "fn": 0}
    assert s["per_class"][2] == {"pq": 0.0, "sq": 0.0, "rq": 0.0, "tp": 0, "fp": 1, "fn": 0}
    assert s["all"] == pytest.approx({"pq": 0.3, "sq": 0.3, "rq": 0.5, "n": 2})
    assert s["things"]["pq"] == pytest.approx(0.6) and s["stuff"]["pq"] == 0.0


def test_a_match_needs_iou_above_one_half():
    pq = PanopticQuality({1: True})
    # IoU exactly 0.5: no match, so one false negative and one false positive
    pq.update(row(1, 1, 1, 1), [Segment(1, 1)], row(2, 2, 0, 0), [Segment(2, 1)])
    s = pq.summary()["per_class"][1]
    assert (s["tp"], s["fp"], s["fn"], s["pq"]) == (0, 1, 1, 0.0)


def test_classes_without_segments_are_left_out_of_the_mean():
    pq = PanopticQuality({1: True, 2: True, 3: False})
    pq.update(row(1, 1), [Segment(1, 1)], row(1, 1), [Segment(1, 1)])
    assert pq.summary()["all"]["n"] == 1 and pq.summary()["stuff"] == {
        "pq": 0.0,
        "sq": 0.0,
        "rq": 0.0,
        "n": 0,
    }


def test_a_segment_missing_from_the_list_is_an_error():
    pq = PanopticQuality({1: True})
    with pytest.raises(ValueError, match="not listed"):
        pq.update(row(1, 1), [Segment(1, 1)], row(1, 9), [Segment(1, 1)])


def test_semantic_iou_by_hand():
    miou = SemanticIoU(3)
    miou.update(np.array([1, 1, 2, 2, 0]), np.array([1, 2, 2, 2, 1]))
    s = miou.summary()
    # class 1: TP 1, union 2; class 2: TP 2, union 3; class 3 absent from both; the void pixel ignored
    assert s["per_class"] == pytest.approx({1: 0.5, 2: 2 / 3})
    assert s["miou"] == pytest.approx((0.5 + 2 / 3) / 2)
    assert s["pixel_accuracy"] == pytest.approx(3 / 4)
