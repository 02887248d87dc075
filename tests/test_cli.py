import csv
import json
from pathlib import Path

import cv2
import numpy as np
import pycocotools.mask as mask_utils
import pytest
import yaml

from instseg.cli import main
from tests.conftest import TINY_MODEL


def _model_flags():
    flags = []
    for k, v in TINY_MODEL.items():
        flags.append("--" + k.replace("_", "-"))
        flags += [str(x) for x in v] if isinstance(v, list) else [str(v)]
    return flags


def test_train_eval_predict_from_the_command_line(tiny_coco, tmp_path, capsys):
    config = tmp_path / "train.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "model": "mask_rcnn",
                "steps": 99,
                "batch_size": 2,
                "workers": 0,
                "warmup_steps": 1,
                "crop_size": 48,
            }
        )
    )
    out = tmp_path / "run"
    code = main(
        [
            "train",
            "--model",
            "mask_rcnn",
            "--config",
            str(config),
            "--data",
            str(tiny_coco),
            "--steps",
            "3",
            "--out",
            str(out),
            "--checkpoint-every",
            "0",
            *_model_flags(),
        ]
    )
    assert code == 0
    text = capsys.readouterr().out
    assert f"checkpoint: {out / 'checkpoint'}" in text and "segm" in text
    meta = json.loads((out / "checkpoint" / "meta.json").read_text())
    assert meta["train_config"]["steps"] == 3 and meta["train_config"]["crop_size"] == 48  # flag beats YAML
    assert meta["model_config"]["mask_head_convs"] == 2

    assert (
        main(
            [
                "eval",
                "--checkpoint",
                str(out / "checkpoint"),
                "--data",
                str(tiny_coco),
                "--max-dets",
                "1",
                "10",
                "500",
                "--out",
                str(tmp_path / "ev"),
            ]
        )
        == 0
    )
    assert "AR500" in capsys.readouterr().out
    metrics = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert metrics["images"] == 3 and set(metrics["metrics"]) == {"segm", "bbox", "boundary"}

    pred = tmp_path / "pred"
    assert (
        main(
            [
                "predict",
                "--checkpoint",
                str(out / "checkpoint"),
                str(tiny_coco / "val"),
                str(tiny_coco / "train" / "train_000.png"),
                "--out",
                str(pred),
                "--min-score",
                "0",
                "--set",
                "detections_per_image=2",
            ]
        )
        == 0
    )
    results = json.loads((pred / "predictions.json").read_text())
    per_image = [sum(r["file_name"] == f for r in results) for f in {r["file_name"] for r in results}]
    assert max(per_image) <= 2  # the inference override reached the model
    assert {r["file_name"].rsplit("/", 1)[-1] for r in results} <= {
        "val_000.png",
        "val_001.png",
        "val_002.png",
        "train_000.png",
    }
    assert results and all(r["category_id"] in (3, 7) for r in results)
    rle = results[0]["segmentation"]
    assert (
        rle["size"] == [64, 64]
        and mask_utils.area({"size": rle["size"], "counts": rle["counts"].encode()}) > 0
    )
    assert len(list((pred / "overlays").glob("*.png"))) == 4
    with (pred / "objects.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert 0 < len(rows) <= len(results)  # objects hidden behind better-scored ones leave the label image
    for path in sorted((pred / "labels").glob("*_labels.png")):
        labels = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        assert labels.dtype == np.uint16 and labels.shape == (64, 64)
        mine = [r for r in rows if Path(r["image"]).stem + "_labels" == path.stem]
        assert labels.max() == len(mine) and [int(r["id"]) for r in mine] == list(range(1, len(mine) + 1))
        assert all(int(r["area"]) == int((labels == int(r["id"])).sum()) for r in mine)
    assert len(list((pred / "labels").glob("*_labels.png"))) == 4


def test_errors_are_one_line_and_exit_2(trained, tiny_coco, tmp_path, capsys):
    assert main(["eval", "--checkpoint", str(tmp_path / "nope"), "--data", str(tiny_coco)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("instseg: error:") and "checkpoint not found" in err and "\n" not in err
    assert main(["train", "--data", str(tmp_path / "missing.json"), "--out", str(tmp_path / "r")]) == 2
    assert "missing.json: no such annotations file" in capsys.readouterr().err
    typo = ["eval", "--checkpoint", str(trained.checkpoint), "--data", str(tiny_coco), "--set", "nms_tresh=1"]
    assert main(typo) == 2
    assert "unknown field(s) nms_tresh" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:  # argparse rejects the value before anything runs
        main(["train", "--data", str(tiny_coco), "--norm", "ln"])
    assert exit_info.value.code == 2 and "invalid choice: 'ln'" in capsys.readouterr().err


def test_train_help_lists_model_flags(capsys):
    assert main(["train", "--model", "mask_rcnn", "--help"]) == 0
    text = capsys.readouterr().out
    assert "--roi-pooler" in text and "--time-budget-s" in text
