"""The probes of an adversarial user, one per test: each bad input ends in one line naming the file,
the record and the problem (exit code 2), and no work is lost."""

from __future__ import annotations

import contextlib
import errno
import io
import json
import re
import shutil
import zlib
from pathlib import Path

import pycocotools.mask as mask_utils
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from instseg.cli import main
from instseg.config import TrainConfig, config_from_dict
from instseg.data.coco import CocoIndex, CocoSource
from instseg.data.images import read_image
from instseg.engine import checkpoint as ckpt
from instseg.engine import trainer as trainer_module
from instseg.errors import CheckpointError, DataError, InstsegError, TrainingDiverged
from instseg.models.build import model_config
from instseg.predictor import Predictor
from tests.conftest import TINY_MODEL, tiny_train_options


def _dataset(tiny_coco: Path, tmp_path: Path, edit) -> Path:
    """A copy of the tiny train annotations with ``edit`` applied to the parsed JSON."""
    doc = json.loads((tiny_coco / "annotations" / "instances_train.json").read_text())
    edit(doc)
    path = tmp_path / "edited.json"
    path.write_text(json.dumps(doc))
    return path


def _one_error_line(capsys) -> str:
    """The error: the last line on stderr (progress bars may come before it), and nothing else."""
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err, err
    last = err.splitlines()[-1]
    assert last.startswith("instseg: error:"), err
    return last


def _polygon_annotation(doc) -> dict:
    return next(a for a in doc["annotations"] if isinstance(a["segmentation"], list))


def _rle_annotation(doc, kind) -> dict:
    return next(
        a
        for a in doc["annotations"]
        if isinstance(a["segmentation"], dict) and isinstance(a["segmentation"]["counts"], kind)
    )


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda d: _polygon_annotation(d)["segmentation"][0].__setitem__(0, 1e30), "lies far outside"),
        (lambda d: _rle_annotation(d, list)["segmentation"]["counts"].append(5), "RLE runs cover"),
        (lambda d: _rle_annotation(d, list)["segmentation"]["counts"].__setitem__(1, -3), "negative run"),
        (lambda d: _rle_annotation(d, str)["segmentation"].__setitem__("counts", "zzzz"), "outside the COCO"),
        (
            lambda d: d["categories"].append(dict(d["categories"][0], name="again")),
            "id 3 appears more than once",
        ),
        (
            lambda d: d["images"][0].__setitem__("file_name", "../../../outside.png"),
            "outside the image folder",
        ),
        (lambda d: d["images"][0].__setitem__("height", 10**7), "more than the limit"),
    ],
)
def test_data_check_and_training_refuse_the_same_bad_record(tiny_coco, tmp_path, capsys, edit, message):
    path = _dataset(tiny_coco, tmp_path, edit)
    assert main(["data", "check", "--data", str(path), "--images", str(tiny_coco / "train")]) == 1
    report = capsys.readouterr().out
    assert "FAILED" in report and message in report
    code = main(
        ["train", "--data", str(path), "--images", str(tiny_coco / "train"), "--out", str(tmp_path / "r")]
    )
    assert code == 2
    err = _one_error_line(capsys)
    assert str(path) in err and message in err


def test_a_dataset_without_annotations_does_not_train(tiny_coco, tmp_path, capsys):
    path = _dataset(tiny_coco, tmp_path, lambda d: d.pop("annotations"))
    code = main(
        ["train", "--data", str(path), "--images", str(tiny_coco / "train"), "--out", str(tmp_path / "r")]
    )
    assert code == 2 and "no 'annotations' list" in _one_error_line(capsys)


def _tiny_flags() -> list[str]:
    flags = ["--model", "mask_rcnn"]
    for k, v in TINY_MODEL.items():
        flags += [f"--{k.replace('_', '-')}", *(map(str, v) if isinstance(v, list) else [str(v)])]
    return flags


def _cfg(tiny_coco, out, **kw):
    return config_from_dict(TrainConfig, {"data": str(tiny_coco), **tiny_train_options(out, **kw)})


def test_weights_that_turn_nan_are_never_saved_and_the_good_checkpoint_stays(
    tiny_coco, tmp_path, monkeypatch
):
    make_optimizer = trainer_module._optimizer

    def poisoning(model, cfg):
        optimizer = make_optimizer(model, cfg)
        step = optimizer.step
        calls = {"n": 0}

        def step_then_poison(*args, **kwargs):
            step(*args, **kwargs)
            calls["n"] += 1
            if calls["n"] == 4:  # the loss of step 4 was finite; the weights after it are not
                next(model.parameters()).data.fill_(float("nan"))

        optimizer.step = step_then_poison
        return optimizer

    monkeypatch.setattr(trainer_module, "_optimizer", poisoning)
    cfg = _cfg(tiny_coco, tmp_path / "run", steps=10, checkpoint_every=2, val_data=None)
    with pytest.raises(
        TrainingDiverged, match=r"not finite after step 4.*last good checkpoint: .*\(step 2\)"
    ):
        trainer_module.train(
            cfg, "mask_rcnn", model_config("mask_rcnn", overrides=TINY_MODEL), progress=False
        )
    last = tmp_path / "run" / "last"
    assert ckpt.load_meta(last)["step"] == 2
    assert not ckpt.nonfinite(ckpt.load_weights(last, raw=True))
    assert not (tmp_path / "run" / "last.tmp").exists()


def test_an_existing_run_is_refused_unless_resumed_or_overwritten(trained, tiny_coco, tmp_path, capsys):
    out = tmp_path / "run"
    shutil.copytree(trained.checkpoint.parent, out)
    before = (out / "metrics.jsonl").read_text()
    args = ["train", "--data", str(tiny_coco), "--out", str(out), "--steps", "1", "--workers", "0"]
    assert main(args) == 2
    err = _one_error_line(capsys)
    assert "already holds a training run" in err and "--overwrite" in err
    assert (out / "metrics.jsonl").read_text() == before and (out / "checkpoint").is_dir()
    assert main([*args, "--overwrite", "--checkpoint-every", "0", "--no-boundary-ap", *_tiny_flags()]) == 0
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert rows[0]["step"] == 1  # a new log, not the old one continued


def test_resume_with_another_model_is_one_line(trained, tiny_coco, tmp_path, capsys):
    out = tmp_path / "other"
    args = ["train", "--model", "mask_rcnn", "--data", str(tiny_coco), "--out", str(out), "--workers", "0"]
    assert main([*args, "--resume", str(trained.checkpoint.parent / "last")]) == 2
    assert "does not fit this run's model" in _one_error_line(capsys)
    assert (
        main(["train", "--model", "solov2", *args[3:], "--resume", str(trained.checkpoint.parent / "last")])
        == 2
    )
    assert "is a mask_rcnn checkpoint, this run trains solov2" in _one_error_line(capsys)


def test_an_unwritable_out_is_one_line(tiny_coco, tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    assert main(["train", "--data", str(tiny_coco), "--out", str(blocker / "run")]) == 2
    assert "cannot write the run's folder" in _one_error_line(capsys)
    assert main(["predict", "--model", "nuclei", str(tiny_coco / "val"), "--out", str(blocker / "p")]) == 2
    _one_error_line(capsys)


def test_a_full_disk_keeps_the_previous_checkpoint_and_no_temporary(trained, tmp_path, monkeypatch):
    path = tmp_path / "ck"
    weights = ckpt.load_weights(trained.checkpoint)
    ckpt.save_checkpoint(path, weights, {"step": 1})

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ckpt, "save_file", full)
    with pytest.raises(CheckpointError, match=r"No space left on device.*previous one is kept"):
        ckpt.save_checkpoint(path, weights, {"step": 2})
    assert json.loads((path / "meta.json").read_text())["step"] == 1
    assert not (tmp_path / "ck.tmp").exists()


def test_predict_skips_unreadable_images_and_keeps_the_rest(tiny_coco, tmp_path, capsys):
    images = tmp_path / "in"
    (images / "a").mkdir(parents=True)
    (images / "b").mkdir()
    shutil.copy(tiny_coco / "val" / "val_000.png", images / "a" / "same.png")
    shutil.copy(tiny_coco / "val" / "val_001.png", images / "b" / "same.png")
    (images / "a" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not an image")
    out = tmp_path / "out"
    code = main(["predict", "--model", "nuclei", str(images / "a"), str(images / "b"), "--out", str(out)])
    assert code == 1  # non-zero, but only at the end
    assert "1 images could not be read" in capsys.readouterr().out
    assert (out / "predictions.json").is_file()
    assert "broken.png" in (out / "failures.txt").read_text()
    assert sorted(p.name for p in (out / "overlays").iterdir()) == ["same.png", "same_2.png"]


def png_claiming(width: int, height: int) -> bytes:
    """A small PNG whose header (IHDR, with its CRC) claims ``width`` x ``height`` pixels."""
    buffer = io.BytesIO()
    Image.new("L", (8, 8)).save(buffer, "PNG")
    raw = bytearray(buffer.getvalue())
    raw[16:24] = width.to_bytes(4, "big") + height.to_bytes(4, "big")
    raw[29:33] = zlib.crc32(bytes(raw[12:29])).to_bytes(4, "big")
    return bytes(raw)


@pytest.mark.parametrize(
    ("size", "message"),
    [(12000, "image is 12000x12000, more than the limit of 134217728 pixels"), (60000, "decompression bomb")],
)
def test_a_decompression_bomb_is_refused_before_it_is_decoded(tmp_path, size, message):
    path = tmp_path / "bomb.png"
    path.write_bytes(png_claiming(size, size))
    warned = pytest.warns(Image.DecompressionBombWarning) if size == 12000 else contextlib.nullcontext()
    with warned, pytest.raises(DataError, match=f"bomb.png: .*{message}"):  # PIL warns above 89 Mpx
        read_image(path)


def test_a_dataloader_worker_error_is_one_line(tiny_coco, tmp_path, capsys):
    train = tmp_path / "train"
    shutil.copytree(tiny_coco / "train", train)
    (train / "train_001.png").write_bytes(b"broken")
    ann = tiny_coco / "annotations" / "instances_train.json"
    args = [
        "train",
        "--data",
        str(ann),
        "--images",
        str(train),
        "--out",
        str(tmp_path / "r"),
        "--workers",
        "1",
    ]
    assert main([*args, "--steps", "20", "--batch-size", "3", *_tiny_flags()]) == 2
    err = _one_error_line(capsys)
    assert err.startswith("instseg: error: ") and "train_001.png: cannot read image" in err


@pytest.mark.parametrize(
    ("header", "message"),
    [
        ("{not json", "not JSON"),
        ("[1, 2]", "is a list, not an object"),
        (None, "format_version '1' is not an integer"),
        ("categories", "more than the limit"),
        ("fpn_channels", "more than the limit"),
        ("layers", "beyond any model"),
    ],
)
def test_bad_checkpoint_headers_are_refused_before_allocation(trained, tmp_path, header, message):
    weights = load_file(str(ckpt.weights_file(trained.checkpoint)))
    meta = ckpt.load_meta(trained.checkpoint)
    if header is None:
        meta["format_version"] = "1"
    elif header == "categories":
        meta["categories"] = [{"id": i, "name": str(i)} for i in range(300_000)]
    elif header == "fpn_channels":
        meta["model_config"]["fpn_channels"] = 60_000
    elif header == "layers":
        meta["model_config"]["mask_head_convs"] = 10**6
    text = header if header and header.startswith(("{", "[")) else json.dumps(meta)
    path = tmp_path / "bad.safetensors"
    save_file(weights, str(path), metadata={"instseg": text})
    with pytest.raises(InstsegError, match=re.escape(message)):
        Predictor.from_checkpoint(path, "cpu")


def test_predict_raises_the_model_threshold_to_min_score(trained):
    predictor = Predictor.from_checkpoint(trained.checkpoint, "cpu", min_score=0.5)
    assert predictor.config.score_threshold == 0.5
    kept = Predictor.from_checkpoint(trained.checkpoint, "cpu", {"score_threshold": 0.2}, min_score=0.5)
    assert kept.config.score_threshold == 0.2  # what the user set is kept


def _results(tiny_coco):
    index = CocoIndex(CocoSource(tiny_coco / "annotations" / "instances_val.json", tiny_coco / "val"))
    image_id, objects = next((i, o) for i, o in index.objects.items() if o)
    rle = objects[0]["rle"]
    return [
        {
            "image_id": image_id,
            "category_id": index.categories[objects[0]["label"] - 1].id,
            "segmentation": {"size": rle["size"], "counts": rle["counts"].decode()},
            "score": 0.9,
        }
    ]


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda r: r.__setitem__("score", "0.9"), "result 0 has score '0.9', not a finite number"),
        (lambda r: r.__setitem__("score", float("nan")), "result 0 has score nan"),
        (lambda r: r.__setitem__("category_id", 99), "category id 99, which is not in the ground truth"),
        (
            lambda r: r["segmentation"].__setitem__("counts", r["segmentation"]["counts"][:-1] + "z"),
            "segmentation",
        ),
        (lambda r: r["segmentation"].pop("counts"), "malformed segmentation"),
        (lambda r: r.__setitem__("segmentation", "garbage"), "malformed segmentation"),
    ],
)
def test_bad_results_are_named_by_index_and_never_reach_the_engine(
    tiny_coco, tmp_path, capsys, edit, message
):
    results = _results(tiny_coco)
    edit(results[0])
    path = tmp_path / "results.json"
    path.write_text(json.dumps(results))
    assert main(["eval", "--results", str(path), "--data", str(tiny_coco), "--no-boundary"]) == 2
    err = _one_error_line(capsys)
    assert str(path) in err and message in err


def test_truncated_rle_counts_are_refused_not_hung_on(tiny_coco, tmp_path, capsys):
    results = _results(tiny_coco)
    counts = results[0]["segmentation"]["counts"]
    cut = next(i for i in range(len(counts), 0, -1) if (ord(counts[i - 1]) - 48) & 0x20)
    results[0]["segmentation"]["counts"] = counts[:cut]  # ends inside a number
    path = tmp_path / "results.json"
    path.write_text(json.dumps(results))
    assert main(["eval", "--results", str(path), "--data", str(tiny_coco), "--no-boundary"]) == 2
    assert "truncated" in _one_error_line(capsys)


def test_polygon_results_are_scored_like_their_rle(tiny_coco, tmp_path):
    from instseg.eval.report import EvalOptions, evaluate_results

    index = CocoIndex(CocoSource(tiny_coco / "annotations" / "instances_val.json", tiny_coco / "val"))
    results = _results(tiny_coco)
    rle = dict(results[0]["segmentation"], counts=results[0]["segmentation"]["counts"].encode())
    x, y, w, h = mask_utils.toBbox(rle).tolist()
    polygon = [[x, y, x + w, y, x + w, y + h, x, y + h]]  # the object's box as a polygon
    as_rle = mask_utils.merge(mask_utils.frPyObjects(polygon, *rle["size"]))
    options = EvalOptions(iou_types=("segm",), matching=False)
    scores = []
    for segmentation in (polygon, {"size": rle["size"], "counts": as_rle["counts"].decode()}):
        path = tmp_path / "results.json"
        path.write_text(json.dumps([dict(results[0], segmentation=segmentation)]))
        scores.append(evaluate_results(index.dataset, path, options).coco["segm"].stats)
    assert scores[0] == scores[1] and scores[0]["AP50"] > 0


def test_a_corrupt_transformers_checkpoint_is_one_line(tmp_path, capsys):
    source = tmp_path / "hf"
    source.mkdir()
    (source / "config.json").write_text(json.dumps({"backbone_config": "not a dict"}))
    torch.save({"a": torch.zeros(1)}, source / "pytorch_model.bin")
    assert main(["import", "hf-mask2former", str(source), str(tmp_path / "out")]) == 2
    assert "malformed Mask2Former config" in _one_error_line(capsys)
    (source / "config.json").write_text("[]")
    assert main(["import", "hf-mask2former", str(source), str(tmp_path / "out")]) == 2
    assert "expected a config object" in _one_error_line(capsys)
