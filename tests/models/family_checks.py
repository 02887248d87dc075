"""Checks every model family must pass: a small scene it overfits, and the output contract."""

from __future__ import annotations

from typing import Any

import torch

from instseg.models.build import build_model, model_config


def scene() -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Four objects in two classes, one thin and one with a hole, each well above the 1/4 mask resolution."""
    image = torch.full((3, 96, 96), 0.1)
    masks = torch.zeros((4, 96, 96), dtype=torch.uint8)
    masks[0, 6:32, 6:40] = 1
    yy, xx = torch.meshgrid(torch.arange(96), torch.arange(96), indexing="ij")
    masks[1] = ((yy - 64) ** 2 + (xx - 26) ** 2 < 17**2).to(torch.uint8)
    masks[2, 48:92, 56:64] = 1  # a thin bar
    masks[3, 6:40, 52:90] = 1
    masks[3, 16:30, 64:78] = 0  # a hole
    colors = torch.tensor([[0.9, 0.2, 0.2], [0.2, 0.9, 0.2], [0.9, 0.9, 0.2], [0.2, 0.3, 0.9]])
    for m, c in zip(masks, colors, strict=True):
        image[:, m.bool()] = c[:, None]
    boxes = torch.tensor(
        [[6, 6, 40, 32], [9, 47, 43, 81], [56, 48, 64, 92], [52, 6, 90, 40]], dtype=torch.float32
    )
    return image, {"boxes": boxes, "labels": torch.tensor([1, 2, 1, 2]), "masks": masks}


def assert_overfits_scene(family: str, options: dict[str, Any], steps: int = 100, lr: float = 2e-3) -> None:
    """Train on the scene alone; every object must then be found with its class at mask IoU >= 0.9."""
    torch.manual_seed(0)
    image, target = scene()
    model = build_model(family, model_config(family, "default", options), 2)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, foreach=True)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    model.train()
    for _ in range(steps):
        losses = model([image], [dict(target)])
        opt.zero_grad()
        sum(losses.values()).backward()
        opt.step()
        schedule.step()
    model.eval()
    out = model([image])[0]
    for m, label in zip(target["masks"].bool(), target["labels"], strict=True):
        same = out["labels"] == label
        ious = [(p & m).sum().item() / (p | m).sum().item() for p in out["masks"][same]]
        assert max(ious, default=0.0) >= 0.9, ious


def assert_output_contract(family: str, options: dict[str, Any]) -> None:
    """Untrained, gates open: bool masks at input size, boxes inside the image, labels 1..K, sorted scores."""
    torch.manual_seed(0)
    model = build_model(family, model_config(family, "default", options), 2).eval()
    sizes = [(70, 50), (33, 61)]
    out = model([torch.rand(3, *s) for s in sizes])
    for o, size in zip(out, sizes, strict=True):
        assert o["masks"].dtype == torch.bool and o["masks"].shape[1:] == size
        assert o["boxes"].shape == (len(o["scores"]), 4) and o["labels"].dtype == torch.int64
        assert len(o["scores"]) > 0 and (o["labels"] >= 1).all() and (o["labels"] <= 2).all()
        assert torch.all(o["scores"][:-1] >= o["scores"][1:])
        assert (o["boxes"] >= 0).all()
        assert (o["boxes"][:, 2] <= size[1] + 1e-4).all() and (o["boxes"][:, 3] <= size[0] + 1e-4).all()


POINT_REFINE = {"point_refine": True, "point_head_channels": 32, "point_train_points": 64}


def assert_point_head_trains(family: str, options: dict[str, Any]) -> None:
    """With ``point_refine`` the scene gives a finite, positive ``loss_point`` whose gradient reaches every
    parameter of the point head."""
    torch.manual_seed(0)
    model = build_model(family, model_config(family, "default", {**options, **POINT_REFINE}), 2).train()
    image, target = scene()
    losses = model([image], [target])
    assert torch.isfinite(losses["loss_point"]) and losses["loss_point"] > 0
    sum(losses.values()).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.point_head.parameters())
