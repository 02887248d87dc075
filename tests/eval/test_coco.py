import copy
import json

import numpy as np
import pycocotools.mask as mask_utils
import pytest
from pycocotools.coco import COCO as PyCOCO
from pycocotools.cocoeval import COCOeval as PyCOCOeval

from instseg.data.coco import to_rle
from instseg.errors import DataError
from instseg.eval.coco import coco_evaluate, stat_names
from tests.conftest import shared_data


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


def _perturbed(gt: dict, seed: int = 0) -> list[dict]:
    """Shifted, dilated, dropped and duplicated detections with random scores, some on crowd regions."""
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


def _pycocotools_stats(gt: dict, results: list[dict], iou_type: str) -> list[float]:
    coco = PyCOCO()
    coco.dataset = copy.deepcopy(gt)
    coco.createIndex()
    drop = "segmentation" if iou_type == "bbox" else "bbox"
    dt = coco.loadRes([{k: v for k, v in r.items() if k != drop} for r in copy.deepcopy(results)])
    ev = PyCOCOeval(coco, dt, iou_type)
    ev.evaluate()
    ev.accumulate()
    ev.summarize()
    return list(ev.stats)


@pytest.mark.parametrize("iou_type", ["segm", "bbox"])
def test_matches_pycocotools_on_real_coco_with_crowd(iou_type):
    root = shared_data("coco_tiny")
    gt = json.loads((root / "annotations" / "instances_val2017.json").read_text())
    assert any(a["iscrowd"] for a in gt["annotations"])
    results = _perturbed(gt)
    ours = coco_evaluate(gt, results, (iou_type,))[iou_type]
    theirs = _pycocotools_stats(gt, results, iou_type)
    assert len(ours) == len(theirs) == 12
    np.testing.assert_allclose(list(ours.values()), theirs, atol=1e-9)
    assert 0.2 < ours["AP"] < 0.95  # a real, non-trivial operating point


@pytest.mark.parametrize("iou_type", ["segm", "bbox"])
def test_matches_pycocotools_on_synthetic_with_crowd(tiny_coco, iou_type):
    gt = json.loads((tiny_coco / "annotations" / "instances_val.json").read_text())
    results = _perturbed(gt, seed=3)
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
    ours = coco_evaluate(gt, results, (iou_type,))[iou_type]
    np.testing.assert_allclose(list(ours.values()), _pycocotools_stats(gt, results, iou_type), atol=1e-9)
