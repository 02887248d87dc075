"""The synthetic generator: byte-for-byte reproducible, exact ground truth, knobs that do what they say."""

import hashlib
import json

import cv2
import numpy as np
import pycocotools.mask as mask_utils
import pytest

import instseg
from instseg.data.check import check_dataset
from instseg.data.synthetic import generate, preset
from instseg.eval.coco import is_lvis, load_ground_truth
from tests.conftest import TINY_MODEL, tiny_train_options


def _digest(root):
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file():
            h.update(str(p.relative_to(root)).encode())
            h.update(p.read_bytes())
    return h.hexdigest()


def _masks(doc, image_id):
    return [
        mask_utils.decode({"size": a["segmentation"]["size"], "counts": a["segmentation"]["counts"].encode()})
        for a in doc["annotations"]
        if a["image_id"] == image_id
    ]


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path):
    cfg = preset("hard", train_images=8, val_images=2, size=96)
    generate(cfg, tmp_path / "a", workers=1)
    generate(cfg, tmp_path / "b", workers=2)  # parallel rendering gives the same bytes
    generate(preset("hard", train_images=8, val_images=2, size=96, seed=1), tmp_path / "c")
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b") != _digest(tmp_path / "c")


def test_ground_truth_is_exact_and_passes_the_checker(tmp_path):
    generate(preset("hard", train_images=4, val_images=2, size=128), tmp_path)
    doc = json.loads((tmp_path / "annotations" / "instances_train.json").read_text())
    assert doc["annotations"]
    for im in doc["images"]:
        masks = _masks(doc, im["id"])
        if masks:
            assert np.stack(masks).sum(0).max() <= 1  # visible parts never overlap
    for a in doc["annotations"]:
        rle = {"size": a["segmentation"]["size"], "counts": a["segmentation"]["counts"].encode()}
        assert a["area"] == mask_utils.area(rle) > 0
        assert a["bbox"] == pytest.approx(mask_utils.toBbox(rle).tolist())
        assert 0 <= a["occluded_fraction"] < 1
    report = check_dataset(tmp_path, "train")
    assert report.ok and not report.warnings, report.format()


def test_thin_knob_makes_wires_a_few_pixels_wide(tmp_path):
    generate(preset("easy", train_images=4, val_images=0, thin=1.0, wire_width=(1, 2)), tmp_path)
    doc = json.loads((tmp_path / "annotations" / "instances_train.json").read_text())
    assert {c["supercategory"] for c in doc["categories"]} == {"wire"}
    for im in doc["images"]:
        for m in _masks(doc, im["id"]):
            inscribed = cv2.distanceTransform(np.pad(m, 1), cv2.DIST_L2, 3).max()
            assert inscribed <= 2.5  # at most ~2 px wide everywhere
            assert m.sum() >= 4


def test_occlusion_knob_hides_more(tmp_path):
    def mean_hidden(occlusion):
        out = tmp_path / f"o{occlusion}"
        generate(preset("easy", train_images=10, val_images=0, occlusion=occlusion, objects=(6, 10)), out)
        doc = json.loads((out / "annotations" / "instances_train.json").read_text())
        return np.mean([a["occluded_fraction"] for a in doc["annotations"]])

    assert mean_hidden(0.0) < 0.05 < 0.1 < mean_hidden(0.9)


def test_longtail_frequencies_and_lvis_fields(tmp_path):
    generate(preset("longtail", train_images=120, val_images=40, size=96, radius=(5.0, 12.0)), tmp_path)
    doc = json.loads((tmp_path / "annotations" / "instances_train.json").read_text())
    assert len(doc["categories"]) == 40
    counts = np.bincount([a["category_id"] for a in doc["annotations"]], minlength=41)[1:]
    assert counts[0] > 8 * max(counts[-5:].mean(), 1)  # the head dwarfs the tail
    freqs = [c["frequency"] for c in doc["categories"]]
    assert {"r", "c", "f"} <= set(freqs) and freqs.count("r") >= 10
    assert all(c["image_count"] >= 1 for c in doc["categories"])  # rare, never missing
    kinds = [c["supercategory"] for c in doc["categories"]]
    assert len(set(kinds[:4])) == 4 and kinds[:4] == kinds[-4:]  # frequency is not a kind's difficulty
    val = json.loads((tmp_path / "annotations" / "instances_val.json").read_text())
    assert {a["category_id"] for a in val["annotations"]} == set(range(1, 41))  # every class is scored
    assert is_lvis(load_ground_truth(tmp_path / "annotations" / "instances_val.json"))


def test_mask_rcnn_trains_on_the_tiny_preset(tmp_path):
    generate(preset("tiny"), tmp_path / "data")
    result = instseg.train(
        "mask_rcnn",
        tmp_path / "data",
        model_options=dict(TINY_MODEL),
        progress=False,
        **tiny_train_options(tmp_path / "run", steps=4, checkpoint_every=0),
    )
    assert result.steps == 4
    assert set(result.metrics) >= {"segm", "bbox"}
    losses = [json.loads(line) for line in result.log_file.read_text().splitlines()]
    assert all(np.isfinite(r["loss"]) for r in losses if "loss" in r)
