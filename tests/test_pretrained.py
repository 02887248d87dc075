"""The bundled ``nuclei`` model: found by name everywhere a checkpoint is taken, small, and good."""

import csv
import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open

import instseg
from instseg.cli import main
from instseg.demo import demo_data
from instseg.engine import checkpoint as ckpt
from instseg.engine.fine_tune import fine_tune_config
from instseg.engine.pretrained import bundled_checkpoint, bundled_models, model_card
from instseg.errors import CheckpointError

# The 10 bundled val images are DSB2018 val images, which the bundled model never saw in training;
# MODEL_CARD.md has its score on them, and this floor sits a little below it.
MINI_VAL_MASK_AP_FLOOR = 0.55


def test_nuclei_is_bundled_small_and_in_half_precision():
    assert "nuclei" in bundled_models()
    file = bundled_checkpoint("nuclei")
    assert file is not None and file.stat().st_size < 10e6  # it ships inside the wheel
    with safe_open(str(file), framework="pt") as f:
        names = f.keys()  # safe_open is not iterable
        dtypes = {f.get_slice(k).get_dtype() for k in names}
    assert "F16" in dtypes
    card = model_card("nuclei").read_text()
    assert "CC0" in card and "benchmarks/nuclei_model.py" in card and "| packed (half), DSB2018 val |" in card


def test_load_by_name_segments_the_bundled_val_images():
    predictor = instseg.load("nuclei", device="cpu")
    assert [c.name for c in predictor.categories] == ["nucleus"]
    assert all(p.dtype == torch.float32 for p in predictor.model.parameters())
    ev = instseg.evaluate(predictor, demo_data(), max_dets=[1, 10, 500], progress=False, boundary=False)
    assert ev.metrics["segm"]["AP"] >= MINI_VAL_MASK_AP_FLOOR, ev.metrics["segm"]


def test_predict_cli_takes_the_bundled_model(tmp_path, capsys):
    image = sorted((demo_data() / "val").glob("*.png"))[0]
    assert main(["predict", "--model", "nuclei", str(image), "--out", str(tmp_path), "--device", "cpu"]) == 0
    labels = np.asarray(Image.open(tmp_path / "labels" / f"{image.stem}_labels.png"))
    with open(tmp_path / "objects.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) >= 5 and labels.max() == len(rows)  # nuclei found, one label each
    assert "s/image" in capsys.readouterr().out


def test_an_unknown_name_lists_the_bundled_models():
    with pytest.raises(CheckpointError, match=r"nucleii: checkpoint not found \(bundled models: .*nuclei"):
        instseg.load("nucleii")


def test_a_checkpoint_on_disk_wins_over_the_name_and_a_data_folder_does_not(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "nuclei").mkdir()  # a user's image folder of the same name is not a checkpoint
    (tmp_path / "nuclei" / "a.png").write_bytes(b"")
    assert ckpt.resolve("nuclei") == bundled_checkpoint("nuclei")
    shutil.copy(bundled_checkpoint("nuclei"), tmp_path / "nuclei" / ckpt.WEIGHTS)
    assert ckpt.resolve("nuclei").resolve() == (tmp_path / "nuclei").resolve()


def test_fine_tuning_starts_from_the_bundled_model():
    family, config = fine_tune_config("nuclei", None, {"score_threshold": 0.1})
    assert family == "yolact" and config.score_threshold == 0.1
