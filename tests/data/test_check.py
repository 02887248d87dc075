"""``instseg data check`` finds every kind of problem, counts it, and fails only on errors."""

import json
import shutil

import numpy as np
from PIL import Image

from instseg.cli import main
from instseg.data.check import check_dataset


def test_clean_dataset_passes(tiny_coco):
    report = check_dataset(tiny_coco, "train")
    assert report.ok and report.counts["images"] == 6 and report.counts["annotations"] > 0


def test_broken_dataset_reports_each_problem(tiny_coco, tmp_path, capsys):
    root = tmp_path / "broken"
    shutil.copytree(tiny_coco, root)
    path = root / "annotations" / "instances_train.json"
    doc = json.loads(path.read_text())
    ims = doc["images"]
    (root / "train" / ims[0]["file_name"]).unlink()  # missing file
    Image.fromarray(np.zeros((10, 12, 3), np.uint8)).save(root / "train" / ims[1]["file_name"])  # wrong size
    first = doc["annotations"][0]
    doc["annotations"] += [
        {**first, "id": 9001, "image_id": 424242},  # orphan
        {**first, "id": first["id"]},  # duplicate id
        {**first, "id": 9002, "segmentation": [[1, 1, 9, 1, 9, 9, 1, 9], [1, 2, 3]]},  # one bad polygon part
        {**first, "id": 9003, "segmentation": [[1, 1, 1, 1, 1, 1]]},  # zero-area polygon: empty mask
        {**first, "id": 9004, "segmentation": [[1, 1, 9, 1, 9, 9, 1, 9]], "bbox": [30, 30, 5, 5]},  # bad bbox
        {**first, "id": 9005, "segmentation": [[1, 1, 9, 1, 9, float("nan"), 1, 9]]},  # NaN
    ]
    doc["categories"].append({"id": 99, "name": "never used"})
    path.write_text(json.dumps(doc))
    report = check_dataset(root, "train")
    kinds = {(p.level, p.kind) for p in report.problems}
    assert {
        ("error", "missing image file"),
        ("error", "image size mismatch"),
        ("error", "unknown image id"),
        ("error", "duplicate annotation id"),
        ("warning", "invalid polygon part"),
        ("warning", "an empty mask"),
        ("warning", "bbox disagrees with mask"),
        ("error", "malformed segmentation"),
        ("warning", "unused category"),
    } <= kinds
    assert not report.ok
    assert main(["data", "check", "--data", str(root)]) == 1
    out = capsys.readouterr().out
    assert "FAILED" in out and "annotation 9001" in out and "missing image file" in out


def test_malformed_json_is_a_report_not_a_traceback(tmp_path):
    path = tmp_path / "instances_train.json"
    path.write_text('{"images": [')
    report = check_dataset(path, check_images=False)
    assert not report.ok and report.errors[0].kind == "unreadable JSON"
