import copy
import json
import math

import pytest
import torch

from instseg.config import TrainConfig, config_from_dict
from instseg.engine import checkpoint as ckpt
from instseg.engine import trainer as trainer_module
from instseg.engine.schedule import lr_factor
from instseg.errors import TrainingDiverged
from instseg.models.build import model_config
from tests.conftest import TINY_MODEL, tiny_train_options


def _cfg(tiny_coco, out, **kw):
    return config_from_dict(TrainConfig, {"data": str(tiny_coco), **tiny_train_options(out, **kw)})


def test_resume_continues_the_same_trajectory(tiny_coco, tmp_path, monkeypatch):
    mcfg = model_config("mask_rcnn", overrides=TINY_MODEL)
    opts = {
        "steps": 6,
        "checkpoint_every": 3,
        "eval_every": 0,
        "scale_range": [0.7, 1.4],
        "crop_size": 48,
        "color_jitter": 0.2,
        "ema": True,
        "val_data": None,
    }
    straight = trainer_module.train(
        _cfg(tiny_coco, tmp_path / "a", **opts), "mask_rcnn", mcfg, progress=False
    )

    save = ckpt.save_checkpoint

    def save_then_die(path, weights, meta, **kw):
        save(path, weights, meta, **kw)
        if meta["step"] == 3:
            raise KeyboardInterrupt  # killed right after the step-3 checkpoint

    cfg = _cfg(tiny_coco, tmp_path / "b", **opts)
    monkeypatch.setattr(trainer_module.ckpt, "save_checkpoint", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        trainer_module.train(cfg, "mask_rcnn", mcfg, progress=False)
    monkeypatch.setattr(trainer_module.ckpt, "save_checkpoint", save)
    assert ckpt.load_train_state(tmp_path / "b" / "last")["step"] == 3
    resumed = trainer_module.train(cfg, "mask_rcnn", mcfg, resume=tmp_path / "b" / "last", progress=False)
    assert resumed.steps == 6
    a = ckpt.load_weights(straight.checkpoint.parent / "last", raw=True)
    b = ckpt.load_weights(resumed.checkpoint.parent / "last", raw=True)
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5, msg=k)
    ema_a = ckpt.load_weights(straight.checkpoint)
    ema_b = ckpt.load_weights(resumed.checkpoint)
    for k in ema_a:
        torch.testing.assert_close(ema_a[k], ema_b[k], rtol=1e-4, atol=1e-5, msg=k)


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tiny_coco, tmp_path, monkeypatch):
    build = trainer_module.build_model
    calls = {"n": 0}

    def poisoned(name, cfg, k):
        model = build(name, cfg, k)
        forward = model.forward

        def forward_with_nan(images, targets=None):
            out = forward(images, targets)
            if model.training:
                calls["n"] += 1
                if calls["n"] >= 4:
                    out["loss_mask"] = out["loss_mask"] * float("nan")
            return out

        model.forward = forward_with_nan
        return model

    monkeypatch.setattr(trainer_module, "build_model", poisoned)
    cfg = _cfg(tiny_coco, tmp_path / "run", steps=10, checkpoint_every=3)
    with pytest.raises(
        TrainingDiverged, match=r"loss is nan at step 4 .*loss_mask=nan.*last good checkpoint"
    ):
        trainer_module.train(
            cfg, "mask_rcnn", model_config("mask_rcnn", overrides=TINY_MODEL), progress=False
        )
    assert ckpt.load_meta(tmp_path / "run" / "last")["step"] == 3
    assert ckpt.load_train_state(tmp_path / "run" / "last")["step"] == 3


def test_training_writes_metrics_and_evaluates(trained):
    rows = [json.loads(x) for x in trained.log_file.read_text().splitlines()]
    losses = [r for r in rows if "loss" in r]
    assert [r["step"] for r in losses] == [1, 2, 3, 4, 5, 6]
    assert all(math.isfinite(r["loss"]) for r in losses)
    evals = [r for r in rows if "eval" in r]
    assert evals and set(evals[-1]["eval"]) == {"segm", "bbox", "boundary"}
    assert set(trained.metrics["segm"]) >= {"AP", "AP50", "AP75", "APs", "APm", "APl", "AR100"}
    snapshots = sorted(p.name for p in (trained.checkpoint.parent / "snapshots").iterdir())
    assert snapshots == ["step_0000003", "step_0000006"]


def test_lr_schedule():
    assert lr_factor(0, 0.0, 10, "cosine", 0.0) == pytest.approx(0.1)
    assert lr_factor(50, 0.5, 10, "cosine", 0.0) == pytest.approx(0.5)
    assert lr_factor(99, 1.0, 10, "cosine", 0.1) == pytest.approx(0.1)
    assert lr_factor(80, 0.8, 0, "step", 0.0) == pytest.approx(0.1)
    assert lr_factor(5, 0.3, 0, "constant", 0.0) == 1.0


def test_channels_last_gives_the_same_losses_and_gradients():
    """NHWC changes the memory layout, not the arithmetic. Compared in float64: in float32 the two
    layouts round differently and train-mode BatchNorm backward amplifies it through a deep net
    (a MobileNetV3's first-layer gradients differ by a few percent); in float64 by ~1e-13."""
    from tests.models.family_checks import scene

    small = {"min_size": 128, "max_size": 128, "size_bounds": [16, 32, 64, 128]}
    torch.manual_seed(0)
    model = trainer_module.build_model("yolact", model_config("yolact", "realtime", small), 3)
    model = model.train().double()
    nhwc = copy.deepcopy(model).to(memory_format=torch.channels_last)
    image, target = scene()
    images = [image.double(), image.double().flip(-1)]  # two different images: no zero-variance channels
    results = []
    for m in (model, nhwc):
        losses = m(images, [target, target])
        sum(losses.values()).backward()
        results.append((losses, [p.grad.flatten() for p in m.parameters() if p.grad is not None]))
    (losses_a, grads_a), (losses_b, grads_b) = results
    for k in losses_a:
        torch.testing.assert_close(losses_b[k], losses_a[k], rtol=1e-9, atol=1e-12)
    a, b = torch.cat(grads_a), torch.cat(grads_b)
    assert len(grads_a) > 10 and float(a.abs().max()) > 0
    assert float((a - b).abs().max() / a.abs().max()) < 1e-9


def test_channels_last_training_saves_a_loadable_checkpoint_with_precise_batch_norm(
    tiny_coco, tmp_path, monkeypatch
):
    import instseg

    built = []
    build = trainer_module.build_model
    monkeypatch.setattr(trainer_module, "build_model", lambda *a: built.append(build(*a)) or built[-1])

    small = {"min_size": 64, "max_size": 64, "size_bounds": [16, 32, 64, 128]}
    mcfg = model_config("yolact", "realtime", small)
    opts = {"steps": 3, "checkpoint_every": 3, "val_data": None, "precise_bn_batches": 2}
    cfg = _cfg(tiny_coco, tmp_path / "nhwc", channels_last=True, **opts)
    result = trainer_module.train(cfg, "yolact", mcfg, progress=False)
    convs = [m for m in built[0].modules() if isinstance(m, torch.nn.Conv2d)]
    assert all(c.weight.is_contiguous(memory_format=torch.channels_last) for c in convs), "trained NHWC"
    weights = ckpt.load_weights(result.checkpoint)  # written contiguous, as safetensors requires
    # the BatchNorm statistics were recomputed over 2 batches once training ended
    assert {int(v) for k, v in weights.items() if k.endswith("num_batches_tracked")} == {2}
    predicted = instseg.load(result.checkpoint, device="cpu").predict(torch.rand(3, 64, 64))
    assert predicted.masks.shape[-2:] == (64, 64)
