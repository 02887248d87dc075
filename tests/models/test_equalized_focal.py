"""The equalized focal loss: the focal loss while classes are balanced, a larger focus for rare ones."""

from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import load_file
from torchvision.ops import sigmoid_focal_loss

import instseg
from instseg.data.synthetic import generate, preset
from instseg.models.equalized_focal import EqualizedFocalLoss, equalized_focal_terms
from tests.conftest import tiny_train_options


def _batch(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(2, 50, 4, generator=g) * 2
    targets = torch.zeros(2, 50, 4)
    targets[0, :6, 0] = 1  # class 0: many positives
    targets[1, 10:12, 1] = 1  # class 1: two; classes 2 and 3: none
    return logits, targets


def test_with_equal_focus_it_is_the_focal_loss():
    logits, targets = _batch()
    terms = equalized_focal_terms(logits, targets, torch.full((4,), 2.0), alpha=0.25, gamma=2.0)
    expected = sigmoid_focal_loss(logits, targets, alpha=0.25, gamma=2.0, reduction="none")
    torch.testing.assert_close(terms, expected)
    fresh = EqualizedFocalLoss(4)
    assert torch.equal(fresh.gammas(2.0), torch.full((4,), 2.0))  # no gradient seen yet: g = 1
    torch.testing.assert_close(fresh(logits, targets, 0.25, 2.0), expected.sum())


def test_the_ratio_is_the_gradient_of_positives_over_negatives_and_sets_each_focus():
    loss = EqualizedFocalLoss(4, scale=8.0)
    loss.train()
    logits, targets = _batch()
    logits.requires_grad_(True)
    loss(logits, targets, 0.25, 2.0).backward()
    assert loss.positive.sum() == 0  # kept aside by the hook until the next step's forward
    grad = logits.grad.abs().reshape(-1, 4)
    flat = targets.reshape(-1, 4)
    loss(*_batch(1), 0.25, 2.0)  # the next forward pass adds them
    torch.testing.assert_close(loss.positive, (grad * flat).sum(0))
    torch.testing.assert_close(loss.negative, (grad * (1 - flat)).sum(0))
    ratio = loss.ratio()
    assert ratio[2] == 0 and ratio[3] == 0  # no positives: the largest focus, 2 + 8
    torch.testing.assert_close(loss.gammas(2.0)[2:], torch.full((2,), 10.0))
    assert 0 < ratio[1] < ratio[0] <= 1  # two positives against six
    g = loss.gammas(2.0)
    assert g[0] < g[1] < g[2]


def test_a_large_focus_mutes_easy_negatives_and_weighs_hard_positives_up():
    logits = torch.tensor([[-3.0, 0.0]])  # an easy negative (p = 0.05) and a hard positive (p = 0.5)
    targets = torch.tensor([[0.0, 1.0]])
    focal = equalized_focal_terms(logits, targets, torch.tensor([2.0, 2.0]))
    rare = equalized_focal_terms(logits, targets, torch.tensor([10.0, 10.0]))
    assert rare[0, 0] < focal[0, 0] / 1000
    # (1 - 0.5) ** 10 * 5 against (1 - 0.5) ** 2: the hard positive keeps a fifth of its focal loss
    assert rare[0, 1].item() == pytest.approx(focal[0, 1].item() * 0.5**8 * 5, rel=1e-5)


def test_condinst_trains_with_it_and_keeps_the_gradient_sums_in_its_checkpoint(tmp_path):
    generate(preset("tiny"), tmp_path / "data")
    result = instseg.train(
        "condinst",
        tmp_path / "data",
        model_options={
            "fpn_channels": 32,
            "head_channels": 32,
            "scale": 1.0,
            "class_loss": "equalized_focal",
        },
        progress=False,
        **tiny_train_options(tmp_path / "run", steps=3, checkpoint_every=0),
    )
    losses = [json.loads(line) for line in result.log_file.read_text().splitlines()]
    assert all(math.isfinite(r["loss_class"]) for r in losses if "loss_class" in r)
    weights = load_file(str(result.checkpoint / "model.safetensors"))
    positive = next(v for k, v in weights.items() if k.endswith("equalized.positive"))
    negative = next(v for k, v in weights.items() if k.endswith("equalized.negative"))
    assert positive.shape == (2,) and (negative > 0).all() and (positive > 0).any()
    loaded = instseg.load(result.checkpoint).model.criterion.equalized  # the sums load back
    assert torch.equal(loaded.positive, positive) and torch.equal(loaded.negative, negative)
