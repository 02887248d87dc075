"""Seesaw loss and the cosine classifier, alone and inside Mask R-CNN and Mask2Former."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from instseg.engine import checkpoint as ckpt
from instseg.models.build import build_model, model_config
from instseg.models.mask_rcnn import SeesawBoxPredictor
from instseg.models.seesaw import NormedLinear, SeesawLoss, seesaw_logits
from tests.models.test_mask2former import TINY as TINY_MASK2FORMER
from tests.models.test_mask_rcnn import _empty, _targets


def _reference_loss(logits, labels, counts, p, q, eps=0.01):
    """The paper's form, written out: -log(e^z_i / (e^z_i + sum_j M_ij C_ij e^z_j)), one sample at a time."""
    out = []
    probs = logits.softmax(1)
    for z, i, s in zip(logits.tolist(), labels.tolist(), probs.tolist(), strict=True):
        total = math.exp(z[i])
        for j, zj in enumerate(z):
            if j == i:
                continue
            mitigation = min(1.0, max(counts[j], 1) / max(counts[i], 1)) ** p
            compensation = max(1.0, s[j] / max(s[i], eps)) ** q
            total += mitigation * compensation * math.exp(zj)
        out.append(-(z[i] - math.log(total)))
    return torch.tensor(out)


def test_seesaw_equals_the_papers_weighted_softmax():
    torch.manual_seed(0)
    logits = torch.randn(12, 5) * 3
    labels = torch.tensor([0, 1, 2, 3, 4, 0, 0, 1, 4, 4, 2, 3])
    counts = torch.tensor([500.0, 40.0, 3.0, 0.0, 90.0])
    loss = SeesawLoss(5)
    loss.counts.copy_(counts)
    for p, q in ((0.8, 2.0), (0.8, 0.0), (0.0, 2.0)):
        loss.p, loss.q = p, q
        expected = _reference_loss(logits, labels, counts.tolist(), p, q)
        assert torch.allclose(loss(logits, labels), expected, atol=1e-5), (p, q)
    plain = F.cross_entropy(logits, labels, reduction="none")
    loss.p, loss.q = 0.0, 0.0
    assert torch.allclose(loss(logits, labels), plain)


def test_frequent_samples_press_less_on_rare_logits():
    counts = torch.tensor([1000.0, 2.0])
    logits = torch.zeros(2, 2, requires_grad=True)
    labels = torch.tensor([0, 1])  # one frequent-class sample, one rare
    loss = SeesawLoss(2, q=0.0)
    loss.counts.copy_(counts)
    loss(logits, labels).sum().backward()
    seesaw_grad = logits.grad.clone()
    logits.grad = None
    F.cross_entropy(logits, labels, reduction="sum").backward()
    # the frequent sample pushes the rare logit down with weight (2 / 1000) ** 0.8 against 1; the rare
    # sample is left as it was
    w = (2 / 1000) ** 0.8
    assert math.isclose(float(seesaw_grad[0, 1]), w / (1 + w), rel_tol=1e-5)
    assert seesaw_grad[0, 1] < logits.grad[0, 1] / 50
    assert torch.allclose(seesaw_grad[1], logits.grad[1])


def test_columns_and_samples_beyond_the_counted_classes_are_left_alone():
    logits = torch.randn(4, 4)
    labels = torch.tensor([0, 3, 3, 1])  # 3: "no object", after the K = 3 counted classes
    adjusted = seesaw_logits(logits, labels, torch.tensor([100.0, 1.0, 1.0]))
    assert torch.equal(adjusted[1:3], logits[1:3]) and torch.equal(adjusted[:, 3], logits[:, 3])
    assert not torch.equal(adjusted[0], logits[0])


def test_counts_accumulate_the_counted_classes_only():
    loss = SeesawLoss(3)
    loss.count(torch.tensor([0, 0, 2, 3, 3]))
    loss.count(torch.tensor([2]))
    assert loss.counts.tolist() == [2.0, 0.0, 2.0]


def test_the_cosine_classifier_ignores_the_feature_norm():
    layer = NormedLinear(8, 3)
    x = torch.randn(5, 8)
    assert torch.allclose(layer(x), layer(7.0 * x), atol=1e-5)
    assert layer(x).abs().max() <= layer.temperature + 1e-4  # the bias starts at zero


def _seesaw_mask_rcnn(tiny_model):
    cfg = model_config("mask_rcnn", overrides={**tiny_model, "class_loss": "seesaw"})
    return build_model("mask_rcnn", cfg, 2)


def test_mask_rcnn_trains_seesaw_on_the_rois_torchvision_picked(tiny_model):
    torch.manual_seed(0)
    model = _seesaw_mask_rcnn(tiny_model).train()
    heads = model.roi_heads
    assert isinstance(heads.box_predictor, SeesawBoxPredictor)
    picked = {}
    select = heads.select_training_samples

    def spy(proposals, targets):
        out = select(proposals, targets)
        picked["labels"] = torch.cat(out[2])
        return out

    heads.select_training_samples = spy
    losses = model([torch.rand(3, 60, 80), torch.rand(3, 48, 50)], [_targets(), _empty()])
    # the sampler's record of the RoIs is torchvision's own, in its order
    assert torch.equal(torch.cat(heads.fg_bg_sampler.picked_labels), picked["labels"])
    counts = heads.box_predictor.class_loss.counts
    assert counts.sum() == (picked["labels"] > 0).sum() > 0
    assert torch.isfinite(losses["loss_class"])
    sum(losses.values()).backward()
    assert heads.box_predictor.cls_score.weight.grad.abs().sum() > 0


def test_mask_rcnn_seesaw_scores_are_object_times_class_probabilities(tiny_model):
    torch.manual_seed(0)
    model = _seesaw_mask_rcnn(tiny_model).eval()
    features = torch.randn(6, tiny_model["box_head_dim"])
    log_probs, deltas = model.roi_heads.box_predictor(features)
    assert log_probs.shape == (6, 3) and deltas.shape == (6, 12)
    raw = model.roi_heads.box_predictor.cls_score(features)
    objectness, classes = raw[:, :2].softmax(1), raw[:, 2:].softmax(1)
    expected = torch.cat([objectness[:, :1], objectness[:, 1:] * classes], dim=1)
    assert torch.allclose(log_probs.softmax(1), expected, atol=1e-6)
    out = model([torch.rand(3, 60, 80)])[0]
    assert out["scores"].dtype == torch.float32 and (out["labels"] >= 1).all()


def test_seesaw_counts_are_saved_with_the_weights(tiny_model, tmp_path):
    model = _seesaw_mask_rcnn(tiny_model)
    model.roi_heads.box_predictor.class_loss.counts.copy_(torch.tensor([7.0, 3.0]))
    state = model.state_dict()
    assert state["roi_heads.box_predictor.class_loss.counts"].tolist() == [7.0, 3.0]
    path = tmp_path / "ckpt"
    ckpt.save_checkpoint(path, state, {"model": "mask_rcnn"})
    assert ckpt.load_weights(path)["roi_heads.box_predictor.class_loss.counts"].tolist() == [7.0, 3.0]


def test_mask2former_counts_each_object_once_per_batch_and_trains():
    torch.manual_seed(0)
    cfg = model_config("mask2former", overrides={**TINY_MASK2FORMER, "class_loss": "seesaw"})
    model = build_model("mask2former", cfg, 2).train()
    assert isinstance(model.decoder.class_head, NormedLinear)
    image = torch.rand(3, 96, 96)
    masks = torch.zeros((3, 96, 96), dtype=torch.uint8)
    masks[0, 10:40, 10:40] = 1
    masks[1, 50:90, 50:90] = 1
    masks[2, 10:30, 60:90] = 1
    target = {"boxes": torch.tensor([[10.0, 10, 40, 40], [50, 50, 90, 90], [60, 10, 90, 30]])}
    target |= {"labels": torch.tensor([1, 2, 2]), "masks": masks}
    losses = model([image], [target])
    assert model.criterion.seesaw.counts.tolist() == [1.0, 2.0]  # not once per decoder layer
    total = sum(losses.values())
    assert torch.isfinite(total)
    total.backward()
    assert model.decoder.class_head.weight.grad.abs().sum() > 0
