"""SOLOv2: Matrix NMS against a per-pair reference, the output contract, and overfitting one image."""

import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from instseg.models.build import build_model, model_config
from instseg.models.conv_tower import LevelNorms
from instseg.models.nms import matrix_nms
from instseg.models.solov2.cells import cell_windows, relative_position_logits
from instseg.models.solov2.criterion import assign_level
from tests.models.family_checks import (
    POINT_REFINE,
    assert_output_contract,
    assert_overfits_scene,
    assert_point_head_trains,
)

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


def test_smaller_objects_win_contested_cells():
    boxes = torch.tensor([[0.0, 0.0, 40.0, 40.0], [16.0, 16.0, 24.0, 24.0]])
    centres = torch.tensor([[20.0, 20.0], [20.0, 20.0]])
    t = assign_level(boxes, torch.tensor([1, 2]), centres, (8, 8), (8.0, 8.0), (1, 100), 0.2)
    assert t.labels[2, 2] == 2 and t.owner[2, 2] == 1
    assert (t.owner >= 0).sum() >= 1 and (t.labels > 0).sum() == (t.owner >= 0).sum()


def test_output_contract_in_input_coordinates():
    assert_output_contract("solov2", {**SMALL, **UNTRAINED_OPEN})


def test_overfits_one_image():
    assert_overfits_scene("solov2", SMALL)


def test_overfits_one_image_with_relative_coordinates():
    assert_overfits_scene("solov2", {**SMALL, "coordinates": "relative"}, steps=150)


def test_relative_prior_is_one_quadratic_around_every_cell_and_bounded():
    grids = [(8, 8), (4, 4)]  # on a 64x64 input: 8-px cells, then 16-px cells; mask map 16x16 at stride 4
    cells = torch.tensor([8 * 2 + 2, 8 * 4 + 5, 64 + 4 + 1])  # level 0 (2,2) and (4,5); level 1 (1,1)
    bowl = torch.tensor([[0.0, 0.0, -1.0, -1.0, 0.0]]).repeat(3, 1)  # -(dx^2 + dy^2)
    prior = relative_position_logits(bowl, cells, grids, (16, 16), scales=[8.0, 16.0], reach=1.5)
    # a level-0 cell centre (20 px) sits on a mask-pixel corner: the four pixels around it are the peak
    assert set(map(tuple, torch.nonzero(prior[0] == prior[0].max()).tolist())) == {
        (4, 4),
        (4, 5),
        (5, 4),
        (5, 5),
    }
    # the second cell's map is the first's, moved by its offset (2, 3 cells = 16, 24 px = 4, 6 map pixels)
    assert torch.allclose(prior[1][8:14, 10:16], prior[0][4:10, 4:10])
    # clamped at reach: far pixels all take the same bounded value, -(1.5^2 + 1.5^2)
    assert torch.isclose(prior[0].min(), torch.tensor(-4.5)) and prior[0][15, 15] == -4.5
    # pixel (5, 9) is at (22, 38) px: from the level-1 cell at (24, 24) in 16-px units, (-0.125, 0.875);
    # from the level-0 cell at (20, 20) in 8-px units, (0.25, 2.25), clamped to (0.25, 1.5)
    assert torch.isclose(prior[2][5, 9], torch.tensor(-(0.125**2 + 0.875**2)))
    assert torch.isclose(prior[0][5, 9], torch.tensor(-(0.25**2 + 1.5**2)))
    # the linear and cross terms move and tilt the envelope: weight on dx shifts its peak
    shifted = relative_position_logits(
        torch.tensor([[0.5, 0.0, -1.0, -1.0, 0.0]]), cells[:1], grids, (16, 16), [8.0, 16.0], 4.0
    )
    assert shifted[0, 4].argmax() > prior[0, 4].argmax()


def test_relative_coordinates_drop_every_image_coordinate_channel():
    image = build_model("solov2", model_config("solov2", "default", SMALL), 2)
    relative = build_model(
        "solov2", model_config("solov2", "default", {**SMALL, "coordinates": "relative"}), 2
    )
    convs = [m for m in relative.modules() if isinstance(m, torch.nn.Conv2d)]
    assert image.head.kernel_convs[0].in_channels == 32 + 2
    assert relative.head.kernel_convs[0].in_channels == 32
    assert relative.head.kernel_out.out_channels == 32 + 5
    assert not any(m.in_channels == 32 + 2 for m in convs)  # nor in the mask features' P5
    # the prior enters the logits: with zero features, a kernel's dx^2 weight alone shapes its mask
    kernels = torch.zeros(1, 32 + 5)
    kernels[0, 32 + 2] = -1.0
    grids = [(4, 4), (2, 2), (1, 1), (1, 1), (1, 1)]  # a 32x32 input, 8x8 mask map
    logits = relative.postprocessor.masks.logits(kernels, torch.tensor([3]), grids, torch.zeros(32, 8, 8))[0]
    assert (logits[:, 0].std() == 0) and (logits[0].std() > 0)  # varies along x only
    assert set(torch.nonzero(logits[0] == logits[0].max()).flatten().tolist()) == {
        6,
        7,
    }  # cell (0, 3): x 28 px


def test_cell_windows_follow_each_cells_level_and_position():
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


def test_batchnorm_grid_head_keeps_statistics_per_level():
    model = build_model("solov2", model_config("solov2", "default", {**SMALL, "norm": "bn"}), 2)
    norms = [m for m in model.head.modules() if isinstance(m, LevelNorms)]
    assert len(norms) == 4 and all(len(n) == 5 for n in norms)  # 2 branches x 2 convs, P2..P6
    model.eval()
    with torch.no_grad():
        out = model([torch.rand(3, 64, 80)])
    assert out[0]["masks"].shape[-2:] == (64, 80)


def test_point_refinement_keeps_the_output_contract():
    assert_output_contract("solov2", {**SMALL, **UNTRAINED_OPEN, **POINT_REFINE})


def test_overfits_one_image_with_point_refinement():
    """The point head trains beside the masks (``loss_point``) and its refined masks still fit."""
    assert_point_head_trains("solov2", SMALL)
    assert_overfits_scene("solov2", {**SMALL, **POINT_REFINE})
