import json
import shutil

import pytest
import torch
from safetensors.torch import save_file

import instseg
from instseg.engine import checkpoint as ckpt
from instseg.errors import CheckpointError


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
