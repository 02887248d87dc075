"""Mask2Former: the matcher, the losses on sampled points, deformable attention, the three inferences,
and the family checks every model passes."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F

from instseg.models.losses import pairwise_dice_loss, pairwise_sigmoid_bce, point_dice_loss
from instseg.models.mask2former.criterion import SetCriterion, set_targets
from instseg.models.mask2former.decoder import QueryPredictions
from instseg.models.mask2former.deformable_attention import deformable_sample
from instseg.models.mask2former.postprocess import instance_inference, panoptic_inference, semantic_inference
from instseg.models.matcher import HungarianMatcher, hungarian_match
from instseg.models.point_sampling import box_points, point_sample, uncertain_points
from tests.models.family_checks import assert_output_contract, assert_overfits_scene

TINY = {
    "min_size": 96,
    "max_size": 96,
    "hidden_dim": 64,
    "heads": 4,
    "encoder_layers": 1,
    "encoder_ffn": 128,
    "decoder_layers": 3,
    "decoder_ffn": 128,
    "num_queries": 12,
    "num_points": 1024,
}


def _brute_force(cost: torch.Tensor) -> float:
    q, g = cost.shape
    if q >= g:
        return min(
            sum(cost[r, c] for c, r in enumerate(rows)) for rows in itertools.permutations(range(q), g)
        )
    return min(sum(cost[r, c] for r, c in enumerate(cols)) for cols in itertools.permutations(range(g), q))


def test_hungarian_match_is_the_least_cost_pairing():
    g = torch.Generator().manual_seed(0)
    for shape in [(1, 1), (3, 3), (6, 2), (2, 5), (7, 4)]:
        for _ in range(5):
            cost = torch.rand(shape, generator=g)
            rows, cols = hungarian_match(cost)
            assert len(rows) == min(shape) and len(set(rows.tolist())) == len(rows)
            assert len(set(cols.tolist())) == len(cols)
            assert abs(cost[rows, cols].sum().item() - float(_brute_force(cost))) < 1e-6


def test_hungarian_match_survives_nan_costs():
    cost = torch.tensor([[float("nan"), 1.0], [0.5, float("inf")]])
    rows, cols = hungarian_match(cost)
    assert rows.tolist() == [0, 1] and cols.tolist() == [1, 0]


def test_pairwise_costs_agree_with_the_per_pair_losses():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(4, 50, generator=g) * 3
    targets = (torch.rand(3, 50, generator=g) > 0.5).float()
    dice = pairwise_dice_loss(logits, targets)
    bce = pairwise_sigmoid_bce(logits, targets)
    for i, j in itertools.product(range(4), range(3)):
        assert torch.isclose(dice[i, j], point_dice_loss(logits[i : i + 1], targets[j : j + 1])[0], atol=1e-6)
        ref = F.binary_cross_entropy_with_logits(logits[i], targets[j])
        assert torch.isclose(bce[i, j], ref, atol=1e-5)


def _masks() -> torch.Tensor:
    masks = torch.zeros(3, 32, 32)
    masks[0, 2:12, 2:12] = 1
    masks[1, 16:30, 4:10] = 1
    masks[2, 5:25, 18:30] = 1
    return masks


def test_matcher_recovers_a_permutation_of_the_targets():
    masks, labels = _masks(), torch.tensor([0, 1, 1])
    order = torch.tensor([4, 0, 2])  # target j is predicted by query order[j]
    features = (F.interpolate(masks[None], size=(16, 16), mode="area") - 0.5) * 16  # one channel a mask
    embed = torch.zeros(1, 5, 3)
    class_logits = torch.zeros(1, 5, 3)
    for j, q in enumerate(order.tolist()):
        embed[0, q, j] = 1.0
        class_logits[0, q, labels[j]] = 6.0
    matcher = HungarianMatcher(num_points=2048)
    rows, cols = matcher(class_logits, embed, features, [{"labels": labels, "masks": masks}])[0]
    assert dict(zip(cols.tolist(), rows.tolist(), strict=True)) == dict(enumerate(order.tolist()))


def test_uncertain_points_concentrate_on_the_boundary():
    torch.manual_seed(0)
    x = torch.linspace(-8, 8, 64)
    logits = x[None, None, :].expand(1, 64, 64)  # boundary at the middle column
    points = uncertain_points(logits, 400, oversample=3.0, importance=0.75)
    values = point_sample(logits[:, None], points)[0, 0].abs()
    assert values[:300].mean() < 0.5 * values[300:].mean()


def test_criterion_on_images_with_and_without_objects():
    torch.manual_seed(0)
    crit = SetCriterion(2, HungarianMatcher(num_points=256), num_points=256)
    features = torch.randn(2, 4, 8, 8)
    outputs = [
        QueryPredictions(
            torch.randn(2, 5, 3, requires_grad=True), torch.randn(2, 5, 4, requires_grad=True), features
        )
        for _ in range(2)
    ]
    targets = [
        {"labels": torch.tensor([0, 1, 1]), "masks": _masks()},
        {"labels": torch.zeros(0, dtype=torch.int64), "masks": torch.zeros(0, 32, 32)},
    ]
    losses = crit.layer_sum(outputs, targets)
    assert set(losses) == {"loss_class", "loss_mask", "loss_dice"}
    assert all(torch.isfinite(v) and v > 0 for v in losses.values())
    empty = crit.layer_sum(outputs, [targets[1], targets[1]])
    assert empty["loss_mask"] == 0 and empty["loss_dice"] == 0 and empty["loss_class"] > 0
    empty["loss_class"].backward()  # "no object" is still learnt on an image without objects


def test_deformable_sampling_reads_the_pixel_it_points_at():
    g = torch.Generator().manual_seed(0)
    shapes = [(3, 4), (5, 6)]
    heads, d = 2, 3
    value = torch.randn(1, 12 + 30, heads, d, generator=g)
    locations = torch.zeros(1, 1, heads, 2, 1, 2)
    weights = torch.zeros(1, 1, heads, 2, 1)
    # head 0 reads level 0 at (x=2, y=1); head 1 reads level 1 at (x=5, y=4)
    locations[0, 0, 0, 0, 0] = torch.tensor([(2 + 0.5) / 4, (1 + 0.5) / 3])
    locations[0, 0, 1, 1, 0] = torch.tensor([(5 + 0.5) / 6, (4 + 0.5) / 5])
    weights[0, 0, 0, 0, 0] = 1.0
    weights[0, 0, 1, 1, 0] = 1.0
    out = deformable_sample(value, shapes, locations, weights)[0, 0]
    torch.testing.assert_close(out[:d], value[0, 1 * 4 + 2, 0])
    torch.testing.assert_close(out[d:], value[0, 12 + 4 * 6 + 5, 1])


def _pairs() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Query 0: class 0 on the left half; 1 and 2: class 1 (stuff) on the right, split; 3: no object.
    Query q's mask is feature channel q."""
    class_logits = torch.full((4, 3), -10.0)
    class_logits[0, 0] = class_logits[1, 1] = class_logits[2, 1] = class_logits[3, 2] = 10.0
    class_logits[1, 1] = class_logits[2, 1] = 2.0  # less sure than query 0: no score tie decides the order
    mask_logits = torch.full((4, 8, 8), -10.0)
    mask_logits[0, :, :4] = 10.0
    mask_logits[1, :4, 4:] = 10.0
    mask_logits[2, 4:, 4:] = 10.0
    mask_logits[3] = 10.0
    return class_logits, torch.eye(4), mask_logits


def test_instance_inference_scores_and_boxes():
    out = instance_inference(*_pairs(), (32, 32), (32, 32), detections=3)
    assert out["labels"].tolist() == [1, 2, 2]
    assert torch.all(out["scores"] > 0.99)
    assert out["masks"][0, :, :16].all() and not out["masks"][0, :, 16:].any()
    torch.testing.assert_close(out["boxes"][0], torch.tensor([0.0, 0.0, 16.0, 32.0]))


def test_semantic_and_panoptic_inference():
    semantic = semantic_inference(*_pairs(), (32, 32), (32, 32))
    assert semantic.shape == (2, 32, 32)
    assert (semantic.argmax(0)[:, :16] == 0).all() and (semantic.argmax(0)[:, 16:] == 1).all()
    segments, info = panoptic_inference(*_pairs(), (32, 32), (32, 32), torch.tensor([True, False]))
    assert [(s["label"], s["isthing"]) for s in info] == [(1, True), (2, False)]  # stuff halves merged
    right = segments[:, 16:]
    assert (segments[:, :16] == 1).all() and set(right.unique().tolist()) <= {0, 2}
    assert (right[:14] == 2).all() and (right[18:] == 2).all()  # void only where the halves blur


def test_mask2former_output_contract():
    assert_output_contract("mask2former", TINY)


def test_mask2former_overfits_one_image():
    assert_overfits_scene("mask2former", {**TINY, "pixel_decoder": "fpn"}, steps=150, lr=1e-3)


def test_selected_queries_start_at_the_best_scoring_tokens():
    from instseg.models.mask2former.decoder import MaskedAttentionDecoder
    from instseg.models.mask2former.position_encoding import sine_position_encoding

    torch.manual_seed(0)
    decoder = MaskedAttentionDecoder(32, 1, num_queries=3, layers=1, heads=2, ffn=32, selected_queries=True)
    maps = [torch.randn(2, 32, 2, 2), torch.randn(2, 32, 4, 4), torch.randn(2, 32, 8, 8)]
    pos = [sine_position_encoding(*m.shape[-2:], 32).flatten(1).T[:, None] for m in maps]
    x, query_pos, cells = decoder.select_queries(maps, pos)
    assert x.shape == (3, 2, 32) and query_pos.shape == (3, 2, 32) and cells.shape == (2, 3, 4)
    # each query carries the position of a token among the three that score highest for its image
    tokens = torch.cat([m.flatten(2) for m in maps], 2).transpose(1, 2)
    scores = decoder.class_head(decoder.norm(decoder.proposal(tokens))).softmax(-1)[..., 0]
    every_pos = torch.cat(pos)[:, 0]
    for b in range(2):
        best = scores[b].topk(3).indices
        assert torch.equal(query_pos[:, b], every_pos[best])
        assert torch.allclose(x[:, b], decoder.proposal(tokens[b, best]))
        # and its token's cell as a box two cells wide: token 0 is the 2 x 2 map's top left cell,
        # token 4 the 4 x 4 map's, token 20 the 8 x 8 map's
        firsts = {0: [0.25, 0.25, 1.0, 1.0], 4: [0.125, 0.125, 0.5, 0.5], 20: [0.0625, 0.0625, 0.25, 0.25]}
        for q, token in enumerate(best.tolist()):
            if token in firsts:
                assert cells[b, q].tolist() == firsts[token]
    # an image with fewer tokens than queries gets one query per token
    small = [m[..., :1, :1] for m in maps]
    x, _, _ = decoder.select_queries(small, [p[:1] for p in pos])
    assert x.shape[0] == 3 and decoder.select_queries(small[:2], [p[:1] for p in pos[:2]])[0].shape[0] == 2


def test_prediction_selects_its_own_count_of_queries():
    """Selection has no weights per query: eval mode takes ``prediction_queries`` tokens, training
    ``num_queries``, and the same weights serve both."""
    from instseg.models.mask2former.decoder import MaskedAttentionDecoder
    from instseg.models.mask2former.position_encoding import sine_position_encoding

    torch.manual_seed(0)
    decoder = MaskedAttentionDecoder(
        32, 1, num_queries=3, layers=1, heads=2, ffn=32, selected_queries=True, prediction_queries=7
    )
    maps = [torch.randn(1, 32, 2, 2), torch.randn(1, 32, 4, 4)]
    pos = [sine_position_encoding(*m.shape[-2:], 32).flatten(1).T[:, None] for m in maps]
    assert decoder.select_queries(maps, pos)[0].shape[0] == 3
    decoder.eval()
    x, _, cells = decoder.select_queries(maps, pos)
    assert x.shape[0] == 7 and cells.shape == (1, 7, 4)
    with pytest.raises(ValueError, match="query_init=selected"):
        MaskedAttentionDecoder(32, 1, num_queries=3, prediction_queries=7)


def test_selected_queries_output_contract():
    assert_output_contract("mask2former", {**TINY, "query_init": "selected"})


def test_batch_norm_makes_the_pixel_decoder_read_a_region_alone():
    """GroupNorm's statistics are the whole image's, so a region's features change with what surrounds it
    (a crop-trained model sees other features on whole images); BatchNorm's, in eval mode, are not."""
    from torch import nn

    from instseg.models.build import build_model, model_config
    from instseg.models.mask2former.pixel_decoder import _conv_norm

    torch.manual_seed(0)
    image = torch.randn(1, 8, 24, 24)
    image[..., 12:, :] += 5.0  # the rest of the image unlike the region
    for batch_norm, alone in ((True, True), (False, False)):
        conv = _conv_norm(8, 32, 1, relu=False, batch_norm=batch_norm).eval()
        conv[1].weight.data.uniform_(0.5, 1.5)
        whole, region = conv(image)[..., :8, :8], conv(image[..., :8, :8])
        assert torch.allclose(whole, region, atol=1e-5) == alone
    cfg = model_config("mask2former", "nuclei", {"norm": "bn", "pixel_decoder_norm": "bn"})
    model = build_model("mask2former", cfg, num_classes=1)
    assert not any(isinstance(m, nn.GroupNorm) for m in model.modules())
    paper = build_model("mask2former", model_config("mask2former", "nuclei"), num_classes=1)
    assert any(isinstance(m, nn.GroupNorm) for m in paper.pixel_decoder.modules())


def test_a_point_density_finds_small_objects_that_a_fixed_count_misses():
    from instseg.models.point_sampling import point_count

    assert point_count(2048, 1.0, (96, 96)) == 9216 and point_count(2048, 1.0, (16, 16)) == 2048
    # 12 tiny objects (2 x 2 feature pixels each) on a 96 x 96 map, each predicted exactly by its own query
    masks = torch.zeros(12, 96, 96)
    for j in range(12):
        y, x = 8 * (j // 4) + 20, 8 * (j % 4) + 30
        masks[j, y : y + 2, x : x + 2] = 1
    features = ((masks - 0.5) * 16)[None]  # channel j: object j
    order = torch.randperm(12, generator=torch.Generator().manual_seed(1))
    embed = torch.eye(12)[order][None]  # query q predicts object order[q]; a tie would pair q with q
    class_logits = torch.zeros(1, 12, 2)
    target = [{"labels": torch.zeros(12, dtype=torch.int64), "masks": masks}]
    wrong = []
    for density, points in ((0.0, 64), (1.0, 64)):
        matcher = HungarianMatcher(num_points=points, points_per_pixel=density)
        torch.manual_seed(0)
        rows, cols = matcher(class_logits, embed, features, target)[0]
        wrong.append(int((order[rows] != cols).sum()))
    # 64 points leave most objects without a point, so they are paired at random; the density does not
    assert wrong[0] > 0 and wrong[1] == 0


def test_pixel_position_encodings_do_not_depend_on_the_image_size():
    from instseg.models.mask2former.position_encoding import sine_position_encoding

    crop, whole = sine_position_encoding(6, 5, 32, stride=8), sine_position_encoding(24, 30, 32, stride=8)
    assert torch.allclose(crop, whole[:, :6, :5])
    # the paper's normalised encodings give the same pixel another code on a larger map
    normed = sine_position_encoding(6, 5, 32), sine_position_encoding(24, 30, 32)
    assert not torch.allclose(normed[0], normed[1][:, :6, :5], atol=1e-2)


def test_box_encodings_in_pixels_do_not_depend_on_the_image_size():
    """A 20 x 10 box at (30, 40) reads the same in a 192-pixel crop and a 960 x 1280 image."""
    from instseg.models.mask2former.position_encoding import sine_box_encoding

    def fractions(h: int, w: int) -> torch.Tensor:
        return torch.tensor([[30 / w, 40 / h, 20 / w, 10 / h]])

    crop = sine_box_encoding(fractions(192, 192), 32, (192, 192))
    whole = sine_box_encoding(fractions(960, 1280), 32, (960, 1280))
    assert crop.shape == (1, 64)
    assert torch.allclose(crop, whole, atol=1e-5)
    assert not torch.allclose(
        sine_box_encoding(fractions(192, 192), 32), sine_box_encoding(fractions(960, 1280), 32), atol=1e-2
    )


def test_query_groups_are_each_matched_one_to_one():
    """Group DETR's assignment: each group of queries pairs every object with one of its own queries."""
    g = torch.Generator().manual_seed(0)
    cost = torch.rand(9, 2, generator=g)
    rows, cols = HungarianMatcher(group_size=3).match_groups(cost)
    assert rows.tolist() == sorted(rows.tolist()) and len(rows) == 6
    for group in range(3):
        inside = (rows >= 3 * group) & (rows < 3 * group + 3)
        assert sorted(cols[inside].tolist()) == [0, 1]  # every object once per group
        r, c = hungarian_match(cost[3 * group : 3 * group + 3])
        assert torch.equal(rows[inside] - 3 * group, r) and torch.equal(cols[inside], c)
    assert torch.equal(torch.stack(HungarianMatcher().match_groups(cost)), torch.stack(hungarian_match(cost)))


def test_query_groups_train_side_by_side_and_predict_with_the_first():
    from instseg.models.mask2former.decoder import MaskedAttentionDecoder

    torch.manual_seed(0)
    decoder = MaskedAttentionDecoder(32, 1, num_queries=4, layers=2, heads=2, ffn=32, query_groups=3)
    maps = [torch.randn(2, 32, 2, 2), torch.randn(2, 32, 4, 4), torch.randn(2, 32, 8, 8)]
    features = torch.randn(2, 32, 16, 16)
    train, _ = decoder.train()(maps, features)
    assert train[-1].class_logits.shape == (2, 12, 2) and train[-1].mask_embed.shape == (2, 12, 32)
    # the groups do not see each other: changing the others' queries leaves the first group's output
    with torch.no_grad():
        decoder.query_feat.weight[4:] += 1.0
    again, _ = decoder(maps, features)
    assert torch.allclose(again[-1].mask_embed[:, :4], train[-1].mask_embed[:, :4], atol=1e-5)
    assert not torch.allclose(again[-1].mask_embed[:, 4:], train[-1].mask_embed[:, 4:], atol=1e-3)
    predicted, _ = decoder.eval()(maps, features)
    assert predicted[-1].class_logits.shape == (2, 4, 2)
    assert torch.allclose(predicted[-1].mask_embed, again[-1].mask_embed[:, :4], atol=1e-5)


def test_query_groups_output_contract_and_a_training_step():
    import pytest

    from instseg.errors import InstsegError
    from instseg.models.build import build_model, model_config

    assert_output_contract("mask2former", {**TINY, "query_groups": 2})
    torch.manual_seed(0)
    model = build_model("mask2former", model_config("mask2former", "default", {**TINY, "query_groups": 2}), 1)
    image = torch.rand(3, 96, 96)
    masks = torch.zeros(2, 96, 96, dtype=torch.bool)
    masks[0, 10:30, 10:30] = masks[1, 50:80, 40:70] = True
    target = {
        "boxes": torch.tensor([[10.0, 10, 30, 30], [40, 50, 70, 80]]),
        "labels": torch.ones(2, dtype=torch.int64),
        "masks": masks,
    }
    losses = model.train()([image], [target])
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    assert model.decoder.query_feat.weight.grad[12:].abs().sum() > 0  # the second group learns too
    with pytest.raises(InstsegError, match="query_groups"):
        build_model(
            "mask2former",
            model_config("mask2former", "default", {**TINY, "query_groups": 2, "query_init": "selected"}),
            1,
        )


def _two_squares() -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    image = torch.rand(3, 96, 96, generator=torch.Generator().manual_seed(0))
    masks = torch.zeros(2, 96, 96, dtype=torch.bool)
    masks[0, 10:30, 10:30] = masks[1, 50:80, 40:70] = True
    boxes = torch.tensor([[10.0, 10, 30, 30], [40, 50, 70, 80]])
    return image, {"boxes": boxes, "labels": torch.tensor([1, 2]), "masks": masks}


def _no_objects() -> dict[str, torch.Tensor]:
    labels = torch.zeros(0, dtype=torch.int64)
    return {"boxes": torch.zeros(0, 4), "labels": labels, "masks": torch.zeros(0, 96, 96)}


def test_denoising_queries_give_back_their_own_objects():
    from instseg.models.mask2former.denoising import denoising_queries

    _, target = _two_squares()
    empty = _no_objects()
    exact = denoising_queries([target, empty], (96, 96), 5, 3, box_noise=0.0, label_noise=0.0)
    assert exact.labels.shape == (2, 2) and exact.labels[1].tolist() == [3, 3]  # padding: "no object"
    order = exact.objects[0]
    assert sorted(order.tolist()) == [0, 1] and exact.objects[1].tolist() == [-1, -1]
    assert torch.equal(exact.labels[0], target["labels"][order] - 1)
    assert torch.allclose(exact.boxes[0], target["boxes"][order])
    (rows, cols), (no_rows, _) = exact.indices()
    assert torch.equal(cols, order) and rows.tolist() == [0, 1] and len(no_rows) == 0
    # noise moves each corner by at most scale x half the side, flips labels, and respects the limit
    g = torch.Generator().manual_seed(0)
    noised = denoising_queries([target], (96, 96), 1, 3, box_noise=0.4, label_noise=1.0, generator=g)
    i = int(noised.objects[0, 0])
    half = (target["boxes"][i, 2:] - target["boxes"][i, :2]).repeat(2) / 2
    moved = (noised.boxes[0, 0] - target["boxes"][i]).abs()
    assert noised.boxes.shape == (1, 1, 4) and bool((moved <= 0.4 * half + 1e-4).all()) and moved.sum() > 0
    assert denoising_queries([empty], (96, 96), 5, 3) is None


def test_a_denoising_query_first_attends_inside_its_box_only():
    from instseg.models.mask2former.denoising import box_attention_mask

    boxes = torch.tensor([[[20.0, 0, 40, 12], [0, 0, 0, 0]]])  # a box, and a padding query
    blocked = box_attention_mask(boxes, (32, 64), (4, 8)).view(2, 4, 8)  # cells of 8 x 8 pixels
    expected = torch.ones(4, 8, dtype=torch.bool)
    expected[0:2, 2:5] = False  # rows 0-15 and columns 16-39 touch the box
    assert torch.equal(blocked[0], expected)
    assert not blocked[1].any()  # no box: attends everywhere, as an empty predicted mask does


def test_denoising_queries_leave_the_learned_queries_unchanged():
    """The learned queries cannot read the denoising queries, so their predictions are the same with or
    without them; the denoising queries get predictions of their own."""
    from instseg.models.build import build_model, model_config
    from instseg.models.mask2former.denoising import denoising_queries

    torch.manual_seed(0)
    cfg = model_config("mask2former", "default", {**TINY, "denoising_queries": 8})
    model = build_model("mask2former", cfg, 2).train()
    image, target = _two_squares()
    batch, targets = model.transform([image], [target])
    pixels = batch.tensors
    queries = denoising_queries(targets, tuple(pixels.shape[-2:]), 8, 2)
    with torch.no_grad():
        plain = model.network(pixels)
        with_dn = model.network(pixels, queries)
    assert plain.denoising_layers == [] and len(with_dn.denoising_layers) == len(with_dn.layers)
    for a, b in zip(plain.layers, with_dn.layers, strict=True):
        assert torch.allclose(a.class_logits, b.class_logits, atol=1e-5)
        assert torch.allclose(a.mask_embed, b.mask_embed, atol=1e-5)
    assert with_dn.final.class_logits.shape == (1, 12, 3)
    assert with_dn.denoising_layers[-1].class_logits.shape == (1, 2, 3)


def test_denoising_queries_train_and_leave_prediction_alone():
    from instseg.models.build import build_model, model_config

    options = {**TINY, "denoising_queries": 8}
    assert_output_contract("mask2former", options)
    torch.manual_seed(0)
    model = build_model("mask2former", model_config("mask2former", "default", options), 2)
    image, target = _two_squares()
    losses = model.train()([image], [target])
    assert {"loss_dn_class", "loss_dn_mask", "loss_dn_dice"} <= set(losses)
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    assert model.decoder.label_embed.weight.grad.abs().sum() > 0
    assert model.decoder.box_embed.layers[0].weight.grad.abs().sum() > 0
    # no object in the batch: no denoising queries, and the step still trains
    assert "loss_dn_class" not in model([image], [_no_objects()])
    # prediction is the model without denoising: the same weights, less the two denoising embeddings
    plain = build_model("mask2former", model_config("mask2former", "default", TINY), 2).eval()
    missing = plain.load_state_dict(model.state_dict(), strict=False)
    assert missing.missing_keys == [] and all(
        "label_embed" in k or "box_embed" in k for k in missing.unexpected_keys
    )
    with torch.no_grad():
        ours, theirs = model.eval()([image])[0], plain([image])[0]
    assert len(ours["scores"]) > 0 and torch.equal(ours["scores"], theirs["scores"])
    assert torch.equal(ours["masks"], theirs["masks"])


def test_box_points_fall_around_their_object():
    masks = torch.zeros(2, 40, 80, dtype=torch.uint8)
    masks[0, 10:20, 20:30] = 1
    masks[1, 0:4, 76:80] = 1  # at a corner: the widened box leaves the map
    t = set_targets([{"labels": torch.tensor([1, 1]), "masks": masks}], (80, 80), boxes=True)[0]
    assert torch.allclose(t["boxes"], torch.tensor([[0.25, 0.125, 0.375, 0.25], [0.95, 0.0, 1.0, 0.05]]))
    points = box_points(t["boxes"], 4000, torch.Generator().manual_seed(0))
    x, y = points[0].unbind(-1)
    assert x.min() >= 0.1875 and x.max() <= 0.4375 and y.min() >= 0.0625 and y.max() <= 0.3125
    inside = ((x > 0.25) & (x < 0.375) & (y > 0.125) & (y < 0.25)).float().mean()
    assert 0.2 < inside < 0.3  # the box is a quarter of its widened area
    assert points[1].min() >= 0 and points[1].max() <= 1
    # the corner object's points spread over what of its widened box is on the map, none piled on its edge
    x, y = points[1].unbind(-1)
    assert (x == 1).sum() == 0 and (y == 0).sum() == 0
    assert x.min() >= 0.925 and y.max() <= 0.075
    assert 0.4 < (y < 0.0375).float().mean() < 0.6  # uniform over [0, 0.075]


def test_box_points_make_an_empty_mask_cost_more_on_a_small_object():
    # one 3 x 3 object on a 96 x 96 map, its query predicting nothing: spread points barely see the object
    masks = torch.zeros(1, 96, 96)
    masks[0, 40:43, 50:53] = 1
    features = torch.full((1, 1, 96, 96), -5.0)
    out = QueryPredictions(torch.zeros(1, 1, 2), torch.ones(1, 1, 1), features)
    targets = set_targets([{"labels": torch.tensor([1]), "masks": masks}], (96, 96), boxes=True)
    losses = []
    for share in (0.0, 1.0):
        crit = SetCriterion(1, HungarianMatcher(num_points=512), num_points=512, box_points=share)
        torch.manual_seed(0)
        losses.append(crit.layer_sum([out], targets)["loss_mask"])
    assert losses[1] > 10 * losses[0]


def test_box_prior_is_a_log_gaussian_around_the_box():
    from instseg.models.mask2former.box_prior import coordinate_channels, prior_embedding

    boxes = torch.tensor([[0.3, 0.6, 0.1, 0.2], [0.8, 0.2, 0.004, 0.5]])  # the second narrower than allowed
    coords = coordinate_channels(40, 50, torch.device("cpu"), torch.float32)
    prior = torch.einsum("qc,chw->qhw", prior_embedding(boxes, 4.0), coords)
    x, y = coords[0] + 0.5, coords[1] + 0.5
    for q, (cx, cy, w, h) in enumerate(boxes.tolist()):
        w = max(w, 0.005)
        expected = -4.0 * ((x - cx) ** 2 / w**2 + (y - cy) ** 2 / h**2)
        torch.testing.assert_close(prior[q], expected, atol=1e-2, rtol=1e-4)
    # the first box's centre cell (x 0.31) loses almost nothing; look-alikes one and three box widths
    # to its right (x 0.41, 0.61) lose about s and 9 s
    row = prior[0, 24]
    assert row[15] > -0.1 and -5.0 < row[20] < -3.5 and row[30] < -35


@pytest.mark.parametrize(
    "fields",
    [{}, {"box_queries": True}, {"box_queries": True, "query_init": "selected"}],
    ids=["prior", "box_queries", "selected_box_queries"],
)
def test_box_prior_trains_boxes_onto_their_objects_and_keeps_the_contract(fields):
    from instseg.models.build import build_model, model_config

    fields = {**TINY, "box_prior": 4.0, **fields}
    assert_output_contract("mask2former", fields)
    torch.manual_seed(0)
    model = build_model("mask2former", model_config("mask2former", "default", fields), 2)
    image, target = _two_squares()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model.train()
    history = []
    for _ in range(40):
        losses = model([image], [target])
        assert {"loss_box", "loss_giou"} <= set(losses) and all(torch.isfinite(v) for v in losses.values())
        optimizer.zero_grad()
        sum(losses.values()).backward()
        optimizer.step()
        history.append(float((losses["loss_box"] + losses["loss_giou"]).detach()))
    assert history[-1] < 0.5 * history[0]
    # the final layer's matched boxes sit on their objects
    batch, targets = model.transform([image], [target])
    final = model.network(batch.tensors).final
    prepared = set_targets(targets, (96, 96), boxes=True)
    rows, cols = model.criterion.matcher(final.class_logits, final.mask_embed, final.mask_features, prepared)[
        0
    ]
    from torchvision.ops import box_convert, box_iou

    pred = box_convert(final.boxes[0, rows], "cxcywh", "xyxy")
    assert box_iou(pred, prepared[0]["boxes"][cols]).diagonal().min() > 0.5


@pytest.mark.parametrize("init", ["learned", "selected"])
def test_box_queries_change_the_box_before_them_layer_by_layer(init):
    """With no change predicted, every layer's boxes are the starting boxes (learned, or the selected
    tokens' cells); a change moves a box by its logits, from the layer before's box."""
    from instseg.models.build import build_model, model_config
    from instseg.models.mask2former.decoder import box_logits

    fields = {**TINY, "box_prior": 4.0, "box_queries": True, "query_init": init}
    torch.manual_seed(0)
    model = build_model("mask2former", model_config("mask2former", "default", fields), 2).eval()
    decoder = model.decoder
    last = decoder.box_head.layers[-1]
    torch.nn.init.zeros_(last.weight)
    torch.nn.init.zeros_(last.bias)
    image, _ = _two_squares()
    batch, _ = model.transform([image], None)
    with torch.no_grad():
        layers = model.network(batch.tensors).layers
        start = layers[0].boxes
        if init == "learned":
            torch.testing.assert_close(start[0], decoder.query_box.sigmoid())
        for out in layers[1:]:
            torch.testing.assert_close(out.boxes, start)
        last.bias.copy_(torch.tensor([0.5, -0.5, 0.0, 0.0]))  # each layer moves every box by these logits
        layers = model.network(batch.tensors).layers
    for before, after in itertools.pairwise(layers):
        torch.testing.assert_close(
            box_logits(after.boxes) - box_logits(before.boxes),
            torch.tensor([0.5, -0.5, 0.0, 0.0]).expand_as(after.boxes),
            atol=2e-3,
            rtol=0,
        )


def test_denoising_box_queries_start_from_their_noised_boxes_and_train():
    from instseg.models.build import build_model, model_config

    fields = {**TINY, "box_prior": 4.0, "box_queries": True, "query_init": "selected", "denoising_queries": 4}
    torch.manual_seed(0)
    model = build_model("mask2former", model_config("mask2former", "default", fields), 2).train()
    last = model.decoder.box_head.layers[-1]
    torch.nn.init.zeros_(last.weight)
    torch.nn.init.zeros_(last.bias)
    image, target = _two_squares()
    batch, targets = model.transform([image], [target])
    with torch.no_grad():
        outputs = model.training_network(batch.tensors, targets)
    noised = outputs.denoising.normalised_boxes()
    for out in outputs.denoising_layers:  # no change predicted: every layer keeps the noised boxes
        torch.testing.assert_close(out.boxes, noised.clamp(1e-4, 1 - 1e-4), atol=1e-5, rtol=0)
    losses = model([image], [target])
    assert "loss_dn_mask" in losses and all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    assert model.decoder.box_embed.layers[0].weight.grad.abs().sum() > 0


def test_box_queries_need_the_box_prior():
    from instseg.models.mask2former.decoder import MaskedAttentionDecoder

    with pytest.raises(ValueError, match="box_prior"):
        MaskedAttentionDecoder(32, 1, num_queries=3, layers=1, heads=2, ffn=32, box_queries=True)


def test_box_costs_match_the_query_whose_box_is_on_a_small_object():
    # two queries with the same (empty) mask: the points cannot tell them apart, their boxes can
    masks = torch.zeros(1, 96, 96)
    masks[0, 60:63, 20:23] = 1
    targets = set_targets([{"labels": torch.tensor([1]), "masks": masks}], (96, 96), boxes=True)
    features = torch.full((1, 1, 24, 24), -5.0)
    embed, logits = torch.ones(1, 2, 1), torch.zeros(1, 2, 2)
    boxes = torch.tensor([[[0.7, 0.2, 0.1, 0.1], [0.22, 0.64, 0.03, 0.03]]])
    matcher = HungarianMatcher(num_points=256)
    ((rows, _),) = matcher(logits, embed, features, targets, boxes=boxes)
    assert rows.tolist() == [1]
    ((rows, _),) = matcher(logits, embed, features, targets, boxes=boxes.flip(1))
    assert rows.tolist() == [0]
