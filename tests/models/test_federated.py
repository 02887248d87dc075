"""LVIS's federated rules for sigmoid classifiers: verified classes only, and the federated loss's sample."""

from __future__ import annotations

import json
import math

import torch

import instseg
from instseg.data.synthetic import generate, preset
from instseg.engine.checkpoint import load_meta
from instseg.models.federated import federated_weights, negative_weights
from instseg.models.losses import focal_loss_sum
from tests.conftest import tiny_train_options


def _target(labels, neg=None, not_exhaustive=()):
    t = {"labels": torch.tensor(labels, dtype=torch.int64)}
    if neg is not None:
        t["neg_labels"] = torch.tensor(neg, dtype=torch.int64)
        t["not_exhaustive_labels"] = torch.tensor(not_exhaustive, dtype=torch.int64)
    return t


def test_only_verified_classes_are_learnt_as_absent():
    targets = [
        _target([1], neg=[2]),  # class 1 present and exhaustive, 2 verified absent, 3 and 4 unknown
        _target([2]),  # not an LVIS-style record: every class as usual
        _target([3], neg=[1], not_exhaustive=[3]),  # 3 present but not exhaustively annotated
    ]
    weights = negative_weights(targets, 4)
    assert weights.tolist() == [[1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0]]
    assert federated_weights([_target([1])], 4) is None  # nothing to weigh: the plain loss


def test_the_federated_loss_keeps_the_batch_classes_and_samples_the_rest_by_frequency():
    frequencies = [100.0] * 10 + [1.0] * 30 + [0.0] * 10
    g = torch.Generator().manual_seed(0)
    picks = torch.zeros(50)
    for _ in range(300):
        w = negative_weights(
            [_target([45, 3]), _target([3])], 50, sampled=8, frequencies=frequencies, generator=g
        )
        assert torch.equal(w[0], w[1]) and int(w[0].sum()) == 8
        assert w[0, 44] == 1 and w[0, 2] == 1  # the batch's own classes always
        picks += w[0]
    assert picks[40:].sum() == picks[44]  # classes of no training image are never drawn
    # sqrt(100) : sqrt(1) = 10 : 1 per class, less the sampling without replacement's flattening
    assert picks[:10].mean() > 4 * picks[10:40].mean()


def test_a_zero_weight_removes_a_class_from_the_focal_loss():
    logits = torch.randn(2, 5, 3, requires_grad=True)
    onehot = torch.zeros(2, 5, 3)
    onehot[0, 1, 2] = 1
    weight = torch.maximum(onehot, torch.tensor([[1.0, 0, 0], [1, 1, 1]])[:, None])
    focal_loss_sum(logits, onehot, weight=weight).backward()
    grad = logits.grad
    assert (grad[0, :, 1] == 0).all() and (grad[0, torch.arange(5) != 1, 2] == 0).all()
    assert grad[0, 1, 2] != 0 and (grad[1] != 0).all()  # the positive and the verified image train


def test_sigmoid_families_train_federated_on_lvis_style_data(tmp_path):
    generate(preset("tiny", lvis_fields=True), tmp_path / "data")
    for family in ("yolact", "solov2"):
        result = instseg.train(
            family,
            tmp_path / "data",
            model_options={"fpn_channels": 32, "head_channels": 32, "scale": 1.0, "federated_classes": 1},
            progress=False,
            **tiny_train_options(tmp_path / family, steps=2, checkpoint_every=0),
        )
        frequencies = load_meta(result.checkpoint)["model_config"]["class_frequencies"]
        assert len(frequencies) == 2 and all(f >= 1 for f in frequencies)  # counted from the data
        losses = [json.loads(line) for line in result.log_file.read_text().splitlines()]
        assert all(math.isfinite(r["loss_class"]) for r in losses if "loss_class" in r)
