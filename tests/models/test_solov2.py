"""SOLOv2: Matrix NMS against a per-pair reference, the output contract, and overfitting one image."""

import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from instseg.models.build import build_model, model_config
from instseg.models.nms import fast_nms, matrix_nms
from instseg.models.solov2_targets import assign_level

SMALL = {
    "fpn_channels": 32,
    "head_channels": 32,
    "head_convs": 2,
    "mask_channels": 32,
    "kernel_dim": 32,
    "scale": 1.0,
    "grid_cells": [4.0, 6.0, 8.0, 16.0, 32.0],
    "scale_ranges": [1, 14, 10, 28, 20, 56, 40, 112, 80, 4096],
    "detections_per_image": 50,
}
# an untrained model scores ~0.01 and masks ~0.5 everywhere: open every gate to see its outputs
UNTRAINED_OPEN = {"score_threshold": 0.0, "mask_threshold": 0.3, "update_threshold": 0.0}


def _reference_matrix_nms(masks, labels, scores, kernel, sigma):
    """The definition, pair by pair: decay_j = min over higher-scored i of the same class."""
    n = len(scores)
    flat = masks.reshape(n, -1).astype(np.float64)
    iou = np.zeros((n, n))
    for i in range(n):
        for j in range(n):
            inter = (flat[i] * flat[j]).sum()
            union = flat[i].sum() + flat[j].sum() - inter
            iou[i, j] = inter / max(union, 1e-6)

    def f(x):
        return np.exp(-sigma * x**2) if kernel == "gaussian" else 1 - x

    out = []
    for j in range(n):
        decay = 1.0
        for i in range(j):
            if labels[i] != labels[j]:
                continue
            compensate = max([iou[k, i] for k in range(i) if labels[k] == labels[i]], default=0.0)
            decay = min(decay, f(iou[i, j]) / max(f(compensate), 1e-6))
        out.append(scores[j] * decay)
    return np.array(out)


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 9), st.integers(0, 2**31 - 1), st.sampled_from(["gaussian", "linear"]))
def test_matrix_nms_matches_the_per_pair_definition(n, seed, kernel):
    rng = np.random.default_rng(seed)
    masks = np.zeros((n, 12, 12), dtype=bool)
    for k in range(n):
        y, x = rng.integers(0, 8, 2)
        masks[k, y : y + rng.integers(2, 6), x : x + rng.integers(2, 6)] = True
    labels = rng.integers(0, 2, n)
    scores = np.sort(rng.random(n))[::-1].copy()
    got = matrix_nms(torch.from_numpy(masks), torch.from_numpy(labels), torch.from_numpy(scores), kernel, 2.0)
    want = _reference_matrix_nms(masks, labels, scores, kernel, 2.0)
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-5, atol=1e-7)


def test_fast_nms_drops_overlapping_lower_scores_of_the_same_class():
    masks = torch.zeros(4, 10, 10, dtype=torch.bool)
    masks[0, :5, :5] = masks[1, :5, :5] = masks[2, :5, :5] = True
    masks[3, 5:, 5:] = True
    keep = fast_nms(masks, torch.tensor([1, 1, 2, 1]), torch.tensor([0.9, 0.8, 0.7, 0.6]))
    assert keep.tolist() == [True, False, True, True]


def test_smaller_objects_win_contested_cells():
    boxes = torch.tensor([[0.0, 0.0, 40.0, 40.0], [16.0, 16.0, 24.0, 24.0]])
    centres = torch.tensor([[20.0, 20.0], [20.0, 20.0]])
    t = assign_level(boxes, torch.tensor([1, 2]), centres, (8, 8), (8.0, 8.0), (1, 100), 0.2)
    assert t.labels[2, 2] == 2 and t.owner[2, 2] == 1
    assert (t.owner >= 0).sum() >= 1 and (t.labels > 0).sum() == (t.owner >= 0).sum()


def _scene():
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


def test_output_contract_in_input_coordinates():
    torch.manual_seed(0)
    model = build_model("solov2", model_config("solov2", "default", {**SMALL, **UNTRAINED_OPEN}), 2).eval()
    out = model([torch.rand(3, 70, 50), torch.rand(3, 33, 61)])
    for o, size in zip(out, [(70, 50), (33, 61)], strict=True):
        assert o["masks"].dtype == torch.bool and o["masks"].shape[1:] == size
        assert o["boxes"].shape == (len(o["scores"]), 4) and o["labels"].dtype == torch.int64
        assert len(o["scores"]) > 0 and (o["labels"] >= 1).all() and (o["labels"] <= 2).all()
        assert torch.all(o["scores"][:-1] >= o["scores"][1:])


def test_overfits_one_image():
    torch.manual_seed(0)
    image, target = _scene()
    model = build_model("solov2", model_config("solov2", "default", SMALL), 2)
    steps = 100
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, foreach=True)
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


def test_cell_windows_follow_each_cells_level_and_position():
    from instseg.models.solov2_targets import cell_windows

    grids = [(4, 4), (2, 2)]  # on a 32x32 input: 8-px cells, then 16-px cells
    cells = torch.tensor([0, 5, 16 + 3])  # level 0 (0,0); level 0 (1,1); level 1 (1,1)
    rows, cols = cell_windows(cells, grids, (8, 8), radii=[6.0, 10.0], stride=4)
    win = rows[:, :, None] & cols[:, None, :]
    ys, xs = torch.nonzero(win[0], as_tuple=True)  # centre (4, 4) px, radius 6 -> feature px 0..2
    assert ys.max() == 2 and xs.max() == 2 and ys.min() == 0
    ys, xs = torch.nonzero(win[1], as_tuple=True)  # centre (12, 12) px -> feature px 1..4 (centres 6..18)
    assert (ys.min(), ys.max(), xs.min(), xs.max()) == (1, 4, 1, 4)
    ys, xs = torch.nonzero(win[2], as_tuple=True)  # centre (24, 24) px, radius 10 -> feature px 3..7
    assert (ys.min(), ys.max(), xs.min(), xs.max()) == (3, 7, 3, 7)
