"""Scoring an existing results file from the API and the command line, with every output."""

import json

import pytest

import instseg
from instseg.cli import main
from tests.eval.test_coco import perturbed


@pytest.fixture()
def results_file(tiny_coco, tmp_path):
    gt = json.loads((tiny_coco / "annotations" / "instances_val.json").read_text())
    path = tmp_path / "theirs.json"
    path.write_text(json.dumps(perturbed(gt, seed=1)))
    return path


def test_evaluate_results_writes_metrics_and_plots(tiny_coco, results_file, tmp_path):
    out = tmp_path / "ev"
    report = instseg.evaluate_results(results_file, tiny_coco, out=out, matching_score_threshold=0.3)
    assert set(report.metrics) == {"segm", "bbox", "boundary"}
    assert 0.0 < report.metrics["segm"]["AP"] < 1.0
    names = {p.name for p in (tmp_path / "ev").iterdir()}
    assert {"metrics.json", "pr_segm.png", "pr_bbox.png", "pr_boundary.png", "matching.png"} <= names
    assert "confusion.png" in names  # two categories
    saved = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert saved["metrics"]["segm"]["AP"] == pytest.approx(report.metrics["segm"]["AP"])
    assert saved["counts"]["segm"]["0.5"]["tp"] > 0
    thresholds = [r["threshold"] for r in saved["matching"]["rows"]]
    assert thresholds == pytest.approx([0.5 + 0.05 * i for i in range(9)])
    assert {row["name"] for row in saved["per_class"]["segm"]} == {"square", "disk"}
    text = report.format()
    assert "TP/FP/FN" in text and "per class" in text and "PQ" in text


def test_box_only_results_get_box_ap_only(tiny_coco, results_file):
    results = json.loads(results_file.read_text())
    boxes = [{k: v for k, v in r.items() if k != "segmentation"} for r in results]
    report = instseg.evaluate_results(boxes, tiny_coco)
    assert set(report.metrics) == {"bbox"} and report.matching is None


def test_eval_results_from_the_command_line(tiny_coco, results_file, tmp_path, capsys):
    code = main(["eval", "--results", str(results_file), "--data", str(tiny_coco), "--class-agnostic"])
    assert code == 0
    out = capsys.readouterr().out
    assert "segm" in out and "boundary" in out and "IoU     TP" in out


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "malformed JSON at line 1"),
        ('{"a": 1}', "expected a list of COCO results"),
        ('[{"image_id": 1}]', "result 0 has image id 1, which is not in the ground truth"),
    ],
)
def test_bad_results_files_name_the_file(tmp_path, content, message, tiny_coco, capsys):
    path = tmp_path / "bad.json"
    path.write_text(content)
    assert main(["eval", "--results", str(path), "--data", str(tiny_coco)]) == 2
    err = capsys.readouterr().err
    assert "bad.json" in err and message in err
