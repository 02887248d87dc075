"""Breakdowns by occlusion, thinness, size and class, on hand-made cases whose APs are known."""

import json

import cv2
import numpy as np
import pytest

from instseg.errors import DataError
from instseg.eval.breakdown import attribute_breakdown, thinness
from instseg.eval.coco import coco_report, load_ground_truth
from instseg.eval.report import EvalOptions, evaluate_results
from tests.eval.rectangles import detection, rectangles

SIZE = 256


def _ground_truth(objects: list[dict], images=(1,)) -> dict:
    return rectangles(objects, SIZE, images, {1: "cell", 2: "wire"})


def _det(box, score, image_id=1, category_id=1) -> dict:
    return detection(box, score, SIZE, image_id, category_id)


def _by_bin(rows: list[dict]) -> dict[str, dict]:
    return {r["bin"]: r for r in rows}


def test_thinness_is_width_over_length():
    disc = np.zeros((64, 64), np.uint8)
    cv2.circle(disc, (32, 32), 20, 1, -1)
    assert thinness(disc) > 0.9
    rect = np.zeros((64, 64), np.uint8)
    rect[10:20, 5:35] = 1  # 10 x 30
    assert thinness(rect) == pytest.approx(10 / 30, abs=0.05)
    wire = np.zeros((64, 64), np.uint8)
    cv2.line(wire, (5, 5), (55, 50), 1, 2)  # diagonal, 2 px wide: not axis-aligned on purpose
    assert thinness(wire) < 0.1
    assert thinness(np.zeros((8, 8), np.uint8)) == 0.0


def test_size_rows_equal_coco_s_m_l():
    """The size breakdown is COCO's own S/M/L: the same numbers from the same rules."""
    objects = [
        {"box": (10, 10, 30, 30)},  # small
        {"box": (40, 10, 60, 25)},  # small
        {"box": (10, 60, 60, 110)},  # medium
        {"box": (70, 60, 130, 100)},  # medium
        {"box": (120, 120, 240, 240)},  # large
    ]
    gt = _ground_truth(objects)
    dets = [
        _det((10, 10, 30, 30), 0.9),  # small TP
        _det((41, 12, 58, 25), 0.4),  # small TP, lower
        _det((150, 10, 170, 30), 0.8),  # small FP
        _det((10, 62, 58, 108), 0.7),  # medium TP
        _det((5, 130, 80, 200), 0.95),  # medium FP on nothing
        _det((125, 125, 240, 240), 0.6),  # large TP
        _det((150, 150, 160, 160), 0.99),  # small FP inside the large object
    ]
    coco_gt = load_ground_truth(gt)
    stats = coco_report(coco_gt, dets, ["segm", "boundary"], details=False)
    rows = _by_bin(attribute_breakdown(coco_gt, dets, "size", max_dets=(100,)))
    for iou_type in ("segm", "boundary"):
        for label, name in (("small", "APs"), ("medium", "APm"), ("large", "APl")):
            assert rows[label][iou_type] == pytest.approx(stats[iou_type].stats[name], abs=1e-9)
    assert [rows[k]["gt"] for k in ("small", "medium", "large")] == [2, 2, 1]
    assert 0 < rows["small"]["segm"] < 1  # the case is not trivially all 0 or all 1


def test_occlusion_bins_ignore_other_bins_and_share_background_false_positives():
    objects = [
        {"box": (10, 10, 50, 50), "occluded_fraction": 0.05},
        {"box": (100, 100, 140, 140), "occluded_fraction": 0.5},
        {"box": (10, 150, 50, 190), "occluded_fraction": 0.1, "image_id": 2},
    ]
    gt = load_ground_truth(_ground_truth(objects, images=(1, 2)))
    # both unoccluded objects found; the occluded one missed, with a poor overlap scored high
    dets = [
        _det((10, 10, 50, 50), 0.9),
        _det((10, 150, 50, 190), 0.8, image_id=2),
        _det((120, 120, 160, 160), 0.95),  # IoU 0.14 with the occluded object: its FP only
    ]
    rows = _by_bin(attribute_breakdown(gt, dets, "occlusion", iou_types=("segm",)))
    assert rows["0-0.2"]["segm"] == pytest.approx(1.0)
    assert rows["0.4-1"]["segm"] == pytest.approx(0.0)
    assert rows["0.2-0.4"]["segm"] == -1.0 and rows["0.2-0.4"]["gt"] == 0
    assert [rows[k]["gt"] for k in ("0-0.2", "0.4-1")] == [2, 1]

    # finding the occluded object is ignored in the unoccluded bin, and scores in its own
    found = [*dets, _det((100, 100, 140, 140), 0.99)]
    rows = _by_bin(attribute_breakdown(gt, found, "occlusion", iou_types=("segm",)))
    assert rows["0-0.2"]["segm"] == pytest.approx(1.0)
    assert rows["0.4-1"]["segm"] == pytest.approx(1.0)

    # a false positive that overlaps nothing counts in every bin
    background = [*dets, _det((200, 10, 240, 50), 0.99, image_id=2)]
    rows = _by_bin(attribute_breakdown(gt, background, "occlusion", iou_types=("segm",)))
    assert rows["0-0.2"]["segm"] < 0.99


def test_occlusion_needs_the_field():
    gt = load_ground_truth(_ground_truth([{"box": (10, 10, 50, 50)}]))
    with pytest.raises(DataError, match="annotation 1 has no 'occluded_fraction'"):
        attribute_breakdown(gt, [_det((10, 10, 50, 50), 0.9)], "occlusion")


def test_thin_objects_score_in_the_thin_bin():
    objects = [
        {"box": (10, 10, 60, 60)},  # compact, found
        {"box": (100, 20, 103, 140), "category_id": 2},  # a 3 x 120 wire, missed
    ]
    gt = load_ground_truth(_ground_truth(objects))
    dets = [_det((10, 10, 60, 60), 0.9), _det((150, 20, 153, 140), 0.8, category_id=2)]
    rows = _by_bin(attribute_breakdown(gt, dets, "thinness"))
    assert rows["thin <0.25"]["gt"] == 1 and rows["compact >0.5"]["gt"] == 1
    assert rows["thin <0.25"]["segm"] == pytest.approx(0.0)
    assert rows["compact >0.5"]["segm"] == pytest.approx(1.0)
    assert rows["compact >0.5"]["boundary"] == pytest.approx(1.0)


def test_report_carries_breakdowns_by_class_and_attribute(tmp_path):
    objects = [
        {"box": (10, 10, 60, 60), "occluded_fraction": 0.0},
        {"box": (100, 20, 103, 140), "category_id": 2, "occluded_fraction": 0.3},
    ]
    gt = _ground_truth(objects)
    dets = [_det((10, 10, 60, 60), 0.9), _det((100, 20, 103, 140), 0.8, category_id=2)]
    options = EvalOptions(breakdowns=("class", "occlusion"), matching=False)
    report = evaluate_results(gt, dets, options)
    by_class = _by_bin(report.breakdowns["class"])
    assert by_class["cell"]["segm"] == pytest.approx(1.0) and by_class["wire"]["boundary"] == pytest.approx(
        1.0
    )
    assert _by_bin(report.breakdowns["occlusion"])["0.2-0.4"]["gt"] == 1
    text = report.format()
    assert "by occlusion:" in text and "by class:" in text
    written = report.write(tmp_path)
    assert tmp_path / "breakdown_occlusion.png" in written and tmp_path / "breakdown_class.png" in written
    assert json.loads((tmp_path / "metrics.json").read_text())["breakdowns"]["occlusion"][1]["gt"] == 1
