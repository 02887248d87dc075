import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import instseg
from instseg.engine import checkpoint as ckpt
from instseg.errors import CheckpointError
from instseg.structures import Category


def test_checkpoint_rebuilds_the_same_model(trained, tiny_coco):
    meta = ckpt.load_meta(trained.checkpoint)
    assert meta["family"] == "mask_rcnn" and meta["format_version"] == 1
    assert [c["id"] for c in meta["categories"]] == [3, 7]
    assert meta["model_config"]["fpn_channels"] == 32 and meta["train_config"]["steps"] == 6
    assert json.loads((trained.checkpoint / "meta.json").read_text()) == meta
    a, b = instseg.load(trained.checkpoint, "cpu"), instseg.load(trained.checkpoint, "cpu")
    image = tiny_coco / "val" / "val_000.png"
    ra, rb = a.predict(image), b.predict(str(image))
    assert torch.equal(ra.masks, rb.masks) and torch.equal(ra.scores, rb.scores)


def test_single_safetensors_file_loads_alone(trained, tmp_path):
    lone = tmp_path / "model.safetensors"
    shutil.copyfile(trained.checkpoint / "model.safetensors", lone)
    predictor = instseg.load(lone, "cpu")
    assert predictor.family == "mask_rcnn" and [c.name for c in predictor.categories] == ["square", "disk"]


def test_interrupted_swap_falls_back_to_previous(trained, tmp_path):
    path = tmp_path / "ck"
    shutil.copytree(trained.checkpoint, tmp_path / "ck.old")
    assert ckpt.resolve(path) == tmp_path / "ck.old"
    ckpt.save_checkpoint(path, {"w": torch.ones(2)}, {"family": "x"})
    assert path.is_dir() and not (tmp_path / "ck.old").exists() and not (tmp_path / "ck.tmp").exists()


def test_bad_checkpoints_are_clear_errors(tmp_path):
    with pytest.raises(CheckpointError, match="checkpoint not found"):
        instseg.load(tmp_path / "missing")
    save_file({"w": torch.zeros(1)}, str(tmp_path / "plain.safetensors"))
    with pytest.raises(CheckpointError, match="no instseg metadata"):
        instseg.load(tmp_path / "plain.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file at all")
    with pytest.raises(CheckpointError, match="not a readable safetensors file"):
        instseg.load(tmp_path / "junk.safetensors")


class _Payload:
    def __reduce__(self):
        return (print, ("pickle code ran",))


def test_training_state_is_never_unpickled(tmp_path, capsys):
    path = tmp_path / "ck"
    ckpt.save_checkpoint(path, {"w": torch.ones(1)}, {"family": "x"}, train_state={"step": 3})
    assert ckpt.load_train_state(path)["step"] == 3
    torch.save({"step": _Payload()}, path / "train_state.pt")
    with pytest.raises(CheckpointError, match="cannot read training state"):
        ckpt.load_train_state(path)
    assert "pickle code ran" not in capsys.readouterr().out


FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "condinst_v1"


def test_checkpoint_of_config_version_1_loads_renamed_and_predicts_as_it_did():
    """Written by the code before loss weights got one name each (``tools/make_v1_checkpoint.py``):
    version 1's ``mask_weight`` (Dice) and ``mask_bce_weight`` (BCE) load as ``dice_weight`` and
    ``mask_weight``, and the predictions are those that code made."""
    predictor = instseg.load(FIXTURE / "checkpoint", device="cpu")
    assert "config_version" not in predictor.meta
    assert (predictor.config.dice_weight, predictor.config.mask_weight) == (1.0, 0.5)
    image = torch.rand(3, 72, 88, generator=torch.Generator().manual_seed(7))
    out = predictor.predict(image)
    expected = load_file(str(FIXTURE / "expected.safetensors"))
    assert len(out) == len(expected["labels"]) == 20
    assert torch.equal(out.labels, expected["labels"])
    torch.testing.assert_close(out.scores, expected["scores"], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out.boxes, expected["boxes"], rtol=1e-5, atol=1e-4)
    differ = (out.masks != expected["masks"].bool()).float().mean()
    assert differ <= 1e-3  # equal to the bit on the machine that wrote it; a pixel may flip on another CPU


def test_checkpoint_meta_says_its_config_version(tmp_path):
    from instseg.models.build import (
        CONFIG_VERSION,
        build_model,
        checkpoint_config,
        checkpoint_meta,
        model_config,
    )

    cfg = model_config("condinst", "nuclei")
    meta = checkpoint_meta("condinst", cfg, [Category(1, "a")])
    assert meta["config_version"] == CONFIG_VERSION == 2
    assert checkpoint_config(meta) == cfg  # version 2 fields are not renamed again
    ckpt.save_checkpoint(tmp_path / "c", build_model("condinst", cfg, 1).state_dict(), meta)
    assert instseg.load(tmp_path / "c", device="cpu").config == cfg
