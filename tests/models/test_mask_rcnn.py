import copy

import pytest
import torch
from torchvision.models import resnet18
from torchvision.ops import roi_pool

from instseg.errors import CheckpointError, InstsegError
from instseg.models.build import build_model, model_config
from instseg.models.mask_rcnn import MultiScaleRoIPool
from instseg.models.point_head import PointFeatures


def _targets():
    masks = torch.zeros((2, 60, 80), dtype=torch.uint8)
    masks[0, 10:30, 10:25] = 1
    masks[1, 35:55, 40:70] = 1
    return {
        "boxes": torch.tensor([[10.0, 10, 25, 30], [40, 35, 70, 55]]),
        "labels": torch.tensor([1, 2]),
        "masks": masks,
    }


def _empty():
    return {
        "boxes": torch.zeros((0, 4)),
        "labels": torch.zeros(0, dtype=torch.int64),
        "masks": torch.zeros((0, 48, 50), dtype=torch.uint8),
    }


@pytest.mark.parametrize("pooler", ["align", "pool"])
def test_training_returns_finite_named_losses(tiny_model, pooler):
    torch.manual_seed(0)
    model = build_model(
        "mask_rcnn", model_config("mask_rcnn", overrides={**tiny_model, "roi_pooler": pooler}), 2
    )
    model.train()
    losses = model([torch.rand(3, 60, 80), torch.rand(3, 48, 50)], [_targets(), _empty()])
    assert set(losses) == {
        "loss_class",
        "loss_box",
        "loss_mask",
        "loss_objectness",
        "loss_rpn_box",
    }
    total = sum(losses.values())
    assert torch.isfinite(total)
    total.backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize("scale", [None, 1.0, 2.0])
def test_eval_output_contract_in_input_coordinates(tiny_model, scale):
    opts = {
        **tiny_model,
        "scale": scale,
        "min_size": 96,
        "max_size": 160,
        "score_threshold": 0.0,
        "detections_per_image": 7,
    }
    model = build_model("mask_rcnn", model_config("mask_rcnn", overrides=opts), 3).eval()
    sizes = [(57, 71), (40, 33)]
    with torch.no_grad():
        outputs = model([torch.rand(3, h, w) for h, w in sizes])
    assert len(outputs) == 2
    for out, (h, w) in zip(outputs, sizes, strict=True):
        n = len(out["labels"])
        assert 0 < n <= 7
        assert out["masks"].dtype == torch.bool and out["masks"].shape == (n, h, w)
        assert out["boxes"].shape == (n, 4) and out["scores"].shape == (n,)
        assert out["labels"].dtype == torch.int64 and out["labels"].min() >= 1 and out["labels"].max() <= 3
        assert (out["boxes"][:, 2] <= w + 1e-3).all() and (out["boxes"][:, 3] <= h + 1e-3).all()


def test_multiscale_roi_pool_is_quantised_pooling_at_the_mapped_level():
    torch.manual_seed(0)
    feats = {"0": torch.rand(1, 4, 32, 32), "1": torch.rand(1, 4, 16, 16)}
    pooler = MultiScaleRoIPool(["0", "1"], output_size=3, sampling_ratio=2)
    small, large = torch.tensor([[4.0, 4, 20, 20]]), torch.tensor([[0.0, 0, 120, 120]])
    out = pooler(feats, [torch.cat([small, large])], [(128, 128)])
    rois = lambda b: torch.cat([torch.zeros(1, 1), b], 1)  # noqa: E731
    assert torch.equal(out[0], roi_pool(feats["0"], rois(small), 3, 0.25)[0])
    assert torch.equal(out[1], roi_pool(feats["1"], rois(large), 3, 0.125)[0])


def test_backbone_weights_load_from_local_files(tmp_path, tiny_model):
    trunk = resnet18()
    torch.save(trunk.state_dict(), tmp_path / "r18.pth")
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in trunk.state_dict().items()}, str(tmp_path / "r18.safetensors"))
    for name in ("r18.pth", "r18.safetensors"):
        cfg = model_config(
            "mask_rcnn",
            overrides={**tiny_model, "norm": "frozen_bn", "backbone_weights": str(tmp_path / name)},
        )
        model = build_model("mask_rcnn", cfg, 1)
        assert torch.equal(model.backbone.body.conv1.weight, trunk.conv1.weight)
        assert torch.equal(model.backbone.body.layer4[1].bn2.running_var, trunk.layer4[1].bn2.running_var)
    with pytest.raises(CheckpointError, match="not a matching backbone"):
        cfg = model_config(
            "mask_rcnn",
            overrides={
                **tiny_model,
                "backbone": "resnet34",
                "norm": "frozen_bn",
                "backbone_weights": str(tmp_path / "r18.pth"),
            },
        )
        build_model("mask_rcnn", cfg, 1)


def test_config_errors_are_clear(tiny_model):
    with pytest.raises(InstsegError, match="one size per pyramid level"):
        build_model(
            "mask_rcnn", model_config("mask_rcnn", overrides={**tiny_model, "anchor_sizes": [8, 16]}), 1
        )
    with pytest.raises(InstsegError, match="unknown field"):
        model_config("mask_rcnn", overrides={"backbon": "resnet18"})
    with pytest.raises(InstsegError, match="not one of"):
        model_config("mask_rcnn", overrides={"norm": "ln"})
    with pytest.raises(InstsegError, match="unknown model"):
        model_config("maskrcnn")


def test_point_refine_trains_the_point_head_and_keeps_the_output_contract(tiny_model):
    torch.manual_seed(0)
    opts = {**tiny_model, "point_refine": True, "point_head_channels": 16, "point_train_points": 32}
    model = build_model("mask_rcnn", model_config("mask_rcnn", overrides=opts), 2)
    model.train()
    losses = model([torch.rand(3, 60, 80), torch.rand(3, 48, 50)], [_targets(), _empty()])
    assert "loss_point" in losses and torch.isfinite(losses["loss_point"])
    sum(losses.values()).backward()
    head_grads = [p.grad for p in model.point_head.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in head_grads)
    assert any(g.abs().sum() > 0 for g in head_grads)
    assert "point_head.predict.weight" in model.state_dict()
    copy.deepcopy(model)  # what evaluation after training does: nothing of the graph is left on it

    model.eval()
    model.roi_heads.score_thresh = 0.0
    sizes = [(57, 71), (40, 33)]
    with torch.no_grad():
        outputs = model([torch.rand(3, h, w) for h, w in sizes])
    for out, (h, w) in zip(outputs, sizes, strict=True):
        n = len(out["labels"])
        assert n > 0 and out["masks"].dtype == torch.bool and out["masks"].shape == (n, h, w)


def test_point_refinement_subdivides_up_to_the_largest_box(tiny_model):
    opts = {**tiny_model, "point_refine": True, "point_head_channels": 8, "point_steps": 3}
    model = build_model("mask_rcnn", model_config("mask_rcnn", overrides=opts), 2).eval()
    fine = [torch.rand(1, model.cfg.fpn_channels, 16, 16), torch.rand(1, 3, 64, 64)]
    points = PointFeatures(model.point_head, fine, (64, 64))
    probs = torch.rand(2, 1, 28, 28)
    small = torch.tensor([[0.0, 0, 20, 20], [10, 10, 40, 30]])  # 30 px: one step, to 56
    assert model._refine(probs, small, points).shape == (2, 1, 56, 56)
    huge = torch.tensor([[0.0, 0, 600, 600], [0, 0, 10, 10]])  # capped at point_steps
    assert model._refine(probs, huge, points).shape == (2, 1, 224, 224)
