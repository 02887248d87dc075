"""Cell-biology matching metrics: optimal one-to-one matching and the ratios built on it."""

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from instseg.eval.matching_metrics import match_pairs, matching_report
from tests.eval.test_coco import _dataset, _det


def _brute_force(iou: np.ndarray, threshold: float) -> tuple[int, float]:
    """Best (pairs, summed IoU) over every one-to-one assignment."""
    n, m = iou.shape
    best = (0, 0.0)
    for k in range(min(n, m) + 1):
        for rows in itertools.combinations(range(n), k):
            for cols in itertools.permutations(range(m), k):
                vals = [iou[r, c] for r, c in zip(rows, cols, strict=True)]
                if all(v >= threshold for v in vals):
                    best = max(best, (k, sum(vals)), key=lambda b: (b[0], round(b[1], 9)))
    return best


@settings(max_examples=120, deadline=None)
@given(
    st.integers(0, 4),
    st.integers(0, 4),
    st.integers(0, 2**32 - 1),
    st.sampled_from([0.3, 0.5, 0.7]),
)
def test_match_pairs_equals_brute_force(n, m, seed, threshold):
    rng = np.random.default_rng(seed)
    iou = np.round(rng.random((n, m)), 2) * (rng.random((n, m)) < 0.7)
    rows, cols = match_pairs(iou, threshold)
    assert len(set(rows.tolist())) == len(rows) and len(set(cols.tolist())) == len(cols)
    assert (iou[rows, cols] >= threshold).all()
    count, total = _brute_force(iou, threshold)
    assert len(rows) == count
    assert iou[rows, cols].sum() == pytest.approx(total)


def test_prefers_more_matches_over_higher_iou():
    # Greedy by IoU would take (0, 0) = 0.9 and leave one pair; the optimum takes two.
    iou = np.array([[0.9, 0.6], [0.8, 0.0]])
    rows, cols = match_pairs(iou, 0.5)
    assert sorted(zip(rows.tolist(), cols.tolist(), strict=True)) == [(0, 1), (1, 0)]


def test_metrics_by_hand():
    gt = _dataset([{"box": (0, 0, 10, 10)}, {"box": (20, 20, 30, 30)}, {"box": (40, 40, 50, 50)}])
    results = [
        _det((0, 0, 10, 10), 0.9),  # IoU 1
        _det((20, 20, 30, 28), 0.8),  # IoU 0.8
        _det((50, 0, 60, 10), 0.7),  # nothing there: FP
        _det((40, 40, 50, 50), 0.2),  # below the score threshold: dropped
    ]
    report = matching_report(gt, results, score_threshold=0.5)
    assert report.n_true == 3 and report.n_pred == 3
    r = report.row(0.5)
    assert (r["tp"], r["fp"], r["fn"]) == (2, 1, 1)
    assert r["precision"] == pytest.approx(2 / 3) and r["recall"] == pytest.approx(2 / 3)
    assert r["f1"] == pytest.approx(2 / 3) and r["accuracy"] == pytest.approx(0.5)
    assert r["mean_matched_iou"] == pytest.approx(0.9)
    assert r["panoptic_quality"] == pytest.approx(1.8 / 3)
    assert report.row(0.85)["tp"] == 1  # the 0.8 match drops out
    assert report.row(0.85)["accuracy"] == pytest.approx(1 / 5)


def test_crowd_regions_hide_predictions_inside_them():
    gt = _dataset([{"box": (0, 0, 30, 30), "iscrowd": 1}, {"box": (40, 40, 50, 50)}])
    results = [_det((2, 2, 12, 12), 0.9), _det((40, 40, 50, 50), 0.9), _det((50, 50, 60, 60), 0.9)]
    r = matching_report(gt, results).row(0.5)
    assert (r["tp"], r["fp"], r["fn"]) == (1, 1, 0)


def test_class_aware_matching_and_confusion():
    gt = _dataset([{"box": (0, 0, 10, 10)}, {"box": (20, 20, 30, 30), "category_id": 2}])
    results = [
        _det((0, 0, 10, 10), 0.9, category_id=2),  # right place, wrong class
        _det((20, 20, 30, 30), 0.9, category_id=2),
        _det((40, 40, 50, 50), 0.9, category_id=1),  # a false alarm
    ]
    agnostic = matching_report(gt, results).row(0.5)
    aware = matching_report(gt, results, class_aware=True).row(0.5)
    assert agnostic["tp"] == 2 and aware["tp"] == 1
    report = matching_report(gt, results)
    assert report.confusion_labels == ["c1", "c2", "background"]
    assert report.confusion == [[0, 1, 0], [0, 1, 0], [1, 0, 0]]
