"""SAM's simulated interaction (clicks from the error region) and automatic mask generation's filters."""

import dataclasses

import numpy as np
import pytest
import torch

from instseg.masks import boundary_distance
from instseg.models.build import build_model, model_config
from instseg.models.sam.automatic import point_grid
from instseg.models.sam.criterion import correction_clicks, jittered_boxes, mask_iou, random_pixels
from instseg.models.sam.mask_decoder import MASK_STATISTICS, mask_reads, stability


def square(y0, y1, x0, x1, size=(20, 30)):
    m = torch.zeros(size, dtype=torch.bool)
    m[y0:y1, x0:x1] = True
    return m


def test_a_missed_object_gets_a_positive_click_inside_it():
    torch.manual_seed(0)
    truth = square(5, 10, 5, 10)[None].repeat(50, 1, 1)
    xy, positive = correction_clicks(torch.zeros_like(truth), truth)
    assert positive.eq(1).all()
    assert truth[0, xy[:, 1].long(), xy[:, 0].long()].all()


def test_spill_gets_a_negative_click_outside_the_object():
    torch.manual_seed(0)
    truth = square(5, 10, 5, 10)[None].repeat(50, 1, 1)
    predicted = truth | square(0, 20, 15, 30)[None]  # the whole object, and a slab of background
    xy, positive = correction_clicks(predicted, truth)
    assert positive.eq(0).all() and (xy[:, 0] >= 15).all()


def test_a_perfect_prediction_gets_a_positive_click_inside():
    truth = square(2, 4, 3, 9)[None]
    xy, positive = correction_clicks(truth.clone(), truth)
    assert positive.item() == 1 and truth[0, int(xy[0, 1]), int(xy[0, 0])]


def test_boundary_distance_counts_the_image_edge_and_equals_scipy_on_the_whole_image():
    from scipy import ndimage

    d = boundary_distance(square(0, 5, 2, 7, size=(7, 9))[None])[0]
    assert d[2, 4] == 3 and d[1, 3] == 2 and d[0, 4] == 1 and d[2, 2] == 1 and d[6, 4] == 0
    torch.manual_seed(0)
    masks = torch.rand(6, 40, 50) > 0.4  # ragged masks with holes, reaching the image's edges
    masks[5] = False  # an empty one
    whole = [ndimage.distance_transform_edt(np.pad(m.numpy(), 1))[1:-1, 1:-1] for m in masks]
    torch.testing.assert_close(boundary_distance(masks), torch.tensor(np.stack(whole), dtype=torch.float32))


def test_interior_clicks_fall_in_the_wide_error_not_on_the_rim():
    """The prediction misses a one-pixel rim around the object and a 10 x 10 block in its corner:
    uniform clicks land in the block as often as its share of the error pixels (100 of 176), interior
    clicks mostly there, deep in the error, where the evaluation would click."""
    torch.manual_seed(0)
    truth = square(2, 22, 2, 22, size=(24, 24))[None].repeat(400, 1, 1)
    block = square(3, 13, 3, 13, size=(24, 24))
    predicted = (square(3, 21, 3, 21, size=(24, 24)) & ~block)[None].expand_as(truth)
    for interior, low, high in ((False, 0.45, 0.68), (True, 0.86, 1.0)):
        xy, positive = correction_clicks(predicted, truth, interior)
        inside = block[xy[:, 1].long(), xy[:, 0].long()].float().mean().item()
        assert positive.eq(1).all() and low <= inside <= high, (interior, inside)


def test_jittered_boxes_stay_in_the_image_and_near_the_object():
    torch.manual_seed(0)
    truth = square(5, 15, 10, 20)[None].repeat(100, 1, 1)
    boxes = jittered_boxes(truth, 0.1)
    assert (boxes[:, :2] >= 0).all() and (boxes[:, 2] <= 30).all() and (boxes[:, 3] <= 20).all()
    assert (boxes[:, 2:] > boxes[:, :2]).all()
    assert (boxes - torch.tensor([10.0, 5, 20, 15])).abs().max() <= 1.0 + 1e-5  # 10% of a 10-px side
    assert mask_iou(truth[:2], truth[:2]).eq(1).all()


def test_random_pixels_fall_inside_each_region_in_proportion_to_the_weights():
    torch.manual_seed(0)
    regions = torch.zeros(2, 6, 8, dtype=torch.bool)
    regions[0, 1, 2] = regions[0, 4, 5] = True  # two pixels, weights 1 and 3
    regions[1, 2:4, 0:8] = True
    weights = torch.ones(2, 6, 8)
    weights[0, 4, 5] = 3.0
    weights[0, 0, 0] = 100.0  # outside the region: never drawn
    draws = torch.stack([random_pixels(regions, weights) for _ in range(4000)])  # [draw, region, xy]
    first = draws[:, 0]
    at_heavy = ((first == torch.tensor([5.0, 4.0])).all(1)).float().mean()
    assert ((first == torch.tensor([2.0, 1.0])).all(1) | (first == torch.tensor([5.0, 4.0])).all(1)).all()
    assert abs(at_heavy - 0.75) < 0.03
    assert draws[:, 1, 1].ge(2).all() and draws[:, 1, 1].le(3).all()
    assert len(set(map(tuple, draws[:, 1].tolist()))) == 16  # every pixel of the band, uniformly drawn


def test_grid_and_stability():
    grid = point_grid(2, (10, 20), torch.device("cpu"))
    assert grid.tolist() == [[5.0, 2.5], [15.0, 2.5], [5.0, 7.5], [15.0, 7.5]]
    sharp = torch.full((1, 8, 8), -10.0)
    sharp[0, 2:6, 2:6] = 10.0
    blurry = torch.linspace(-3, 3, 64).reshape(1, 8, 8)
    assert stability(sharp, 1.0).item() == 1.0 and stability(blurry, 1.0).item() < 0.7


def test_mask_reads_are_the_features_inside_and_outside_each_mask_and_its_statistics():
    features = torch.zeros(1, 2, 8, 8)
    features[0, 0, :4] = 1.0  # channel 0: the top half
    features[0, 1] = 3.0
    logits = torch.full((1, 2, 8, 8), -20.0)
    logits[0, 0, :4] = 20.0  # mask 0: the top half, sharp
    logits[0, 1] = torch.linspace(-3, 3, 64).view(8, 8)  # mask 1: a ramp, half uncertain
    reads = mask_reads(logits.flatten(2), features.flatten(2))
    assert reads.shape == (1, 2, 2 * 2 + MASK_STATISTICS)
    torch.testing.assert_close(reads[0, 0], torch.tensor([1.0, 3.0, 0.0, 3.0, 0.5, 1.0, 0.0]))
    assert reads[0, 1, 4] == pytest.approx(0.5, abs=0.01) and reads[0, 1, 5] < 0.7 and reads[0, 1, 6] > 0.3


def test_the_mask_aware_iou_head_learns_and_is_all_the_decoder_predicts_iou_with():
    """With ``iou_from_masks`` the IoU head reads each output's mask: it gets gradients in training,
    every parameter of the decoder is used (no unused IoU head to trip distributed training), and
    changing its bias changes every predicted IoU by as much."""
    from instseg.models.sam.model import SAM

    torch.manual_seed(0)
    model = SAM(model_config("sam", "nuclei", {"iou_from_masks": True, "prompts_per_image": 2}))
    masks = torch.zeros(2, 64, 64, dtype=torch.uint8)
    masks[0, 8:24, 8:24], masks[1, 30:50, 30:44] = 1, 1
    target = {"boxes": torch.zeros(2, 4), "labels": torch.ones(2, dtype=torch.int64), "masks": masks}
    losses = model.train()([torch.rand(3, 64, 64)], [target])
    sum(losses.values()).backward()
    assert model.mask_decoder.iou_head.layers[0].weight.grad.abs().sum() > 0
    unused = [n for n, p in model.mask_decoder.named_parameters() if p.grad is None]
    assert not unused, unused
    model.eval()
    with torch.no_grad():
        batch, _ = model.transform([torch.rand(3, 64, 64)])
        embedding = model.network(batch.tensors)
        clicks = (torch.tensor([[[20.0, 30.0]]]), torch.ones(1, 1))
        _, before = model.decode(embedding, clicks, None, None, True)
        model.mask_decoder.iou_head.layers[-1].bias += 0.25
        _, after = model.decode(embedding, clicks, None, None, True)
    torch.testing.assert_close(after - before, torch.full_like(before, 0.25))


def test_the_nuclei_preset_learns_a_blob_from_clicks():
    """A few dozen steps on one synthetic image: the loss falls, and a click on the blob then gives a
    mask that overlaps it better than at the start."""
    torch.manual_seed(0)
    cfg = model_config("sam", "nuclei", {"click_rounds": 1, "prompts_per_image": 4})
    model = build_model("sam", cfg, 1).train()
    image = torch.full((3, 64, 64), 0.1)
    masks = torch.zeros((3, 64, 64), dtype=torch.uint8)
    for i, (y, x) in enumerate([(16, 16), (40, 44), (20, 48)]):
        yy, xx = torch.meshgrid(torch.arange(64), torch.arange(64), indexing="ij")
        masks[i] = ((yy - y) ** 2 + (xx - x) ** 2 <= 49).byte()
        image[:, masks[i].bool()] = 0.9
    target = {"boxes": torch.zeros(3, 4), "labels": torch.ones(3, dtype=torch.int64), "masks": masks}
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    history = []
    for _ in range(40):
        losses = model([image], [dict(target)])
        loss = sum(losses.values())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        history.append(loss.item())
    assert sum(history[-5:]) / 5 < 0.6 * sum(history[:5]) / 5, history


@pytest.mark.parametrize("click_radius, dynamic_layers", [(0.0, 0), (6.0, 0), (0.0, 3)])
def test_windowed_decoding_is_decoding_the_window(click_radius, dynamic_layers):
    """A prompt decoded within a 4-cell window of an 8 x 8 embedding gives, inside the window, what
    the decoder gives on that window cut out by hand, and OUTSIDE elsewhere; a mask prompt and the
    click maps are cut the same way, and the dynamic head's offsets are the window's pixels' own."""
    from instseg.models.sam.model import OUTSIDE, SAM, logit_pixels
    from tests.models.test_sam import TINY

    torch.manual_seed(0)
    model = SAM(dataclasses.replace(TINY, click_radius=click_radius, dynamic_layers=dynamic_layers)).eval()
    decode = model.decode
    decode.window = 4
    embedding = torch.randn(1, TINY.prompt_dim, 8, 8)
    points = (torch.tensor([[[100.0, 40.0]]]), torch.ones(1, 1))  # cell (6, 2): window x 4..7, y 0..3
    mask = torch.randn(1, 1, 32, 32)
    with torch.no_grad():
        logits, iou = decode(embedding, points, None, mask, True)
        grid = (4, 4)
        origin = torch.tensor([[0, 16]])  # the window's first row and column of the 32 x 32 logits
        sparse, dense = model.prompt_encoder(points, None, mask[..., 0:16, 16:32], grid, origin)
        positions = model.prompt_encoder.dense_positions((8, 8))[..., 0:4, 4:8]
        offsets = None
        if dynamic_layers:  # logit cells 4 px wide (stride 16), the window's from column 16 on
            offsets = (logit_pixels((16, 16), 4.0, origin), torch.tensor([[100.5, 40.5]]))
        window = embedding[..., 0:4, 4:8]
        expected, expected_iou = model.mask_decoder(window, positions, sparse, dense, True, offsets)
    torch.testing.assert_close(logits[..., 0:16, 16:32], expected)
    torch.testing.assert_close(iou, expected_iou)
    outside = torch.ones_like(logits, dtype=torch.bool)
    outside[..., 0:16, 16:32] = False
    assert (logits[outside] == OUTSIDE).all()


def test_click_maps_draw_disks_and_the_box_where_the_prompt_is():
    from instseg.models.sam.prompt_encoder import click_maps

    xy = torch.tensor([[[10.0, 6.0], [30.0, 20.0], [0.0, 0.0]]])
    labels = torch.tensor([[1.0, 0.0, -1.0]])  # a positive click, a negative one, padding
    box = torch.tensor([[20.0, 2.0, 27.0, 9.0]])
    maps = click_maps((xy, labels), box, (16, 20), 2.0, 3.0)  # cells of 2 px: 32 x 40 px
    assert maps.shape == (1, 3, 16, 20)
    positive, negative, inside = maps[0].bool()
    assert positive[3, 5] and not positive[8, 12] and not positive[0, 0]  # no disk for the padding
    assert negative[10, 15] and not negative[3, 5]
    assert 5 <= int(positive.sum()) <= 9  # a disk of radius 3 px on 2-px cells
    assert inside[1:5, 10:14].all() and int(inside.sum()) == 16
    shifted = click_maps((xy, labels), box, (8, 8), 2.0, 3.0, origin=torch.tensor([[1, 3]]))
    torch.testing.assert_close(shifted, maps[..., 1:9, 3:11])


def test_object_maps_mark_every_object_and_the_edges_where_touching_objects_meet():
    from instseg.models.sam.object_maps import object_maps

    left, right = square(0, 6, 0, 5, size=(8, 10)), square(0, 6, 5, 10, size=(8, 10))
    maps = object_maps(torch.stack([left, right]), (12, 16))
    assert maps.shape == (2, 12, 16) and maps[:, 8:].eq(0).all() and maps[:, :, 10:].eq(0).all()
    assert maps[0, :8, :10].bool().equal(left | right)
    edges = maps[1, :8, :10].bool()
    assert edges[2, 4] and edges[2, 5]  # both sides of the line where the two squares meet
    assert not edges[0, 2] and not edges[2, 0]  # the image's border is not an edge
    assert edges[5, 2] and not edges[2, 2]  # the bottom edge; the inside
    assert object_maps(torch.zeros(0, 8, 10, dtype=torch.bool), (8, 10)).eq(0).all()


def test_object_map_loss_trains_its_head_and_only_exists_when_weighted():
    torch.manual_seed(0)
    cfg = model_config("sam", "nuclei", {"object_map_weight": 1.0, "prompts_per_image": 2, "click_rounds": 0})
    model = build_model("sam", cfg, 1).train()
    masks = torch.stack([square(8, 20, 8, 20, size=(64, 64)), square(30, 44, 30, 40, size=(64, 64))])
    target = {"boxes": torch.zeros(2, 4), "labels": torch.ones(2, dtype=torch.int64), "masks": masks.byte()}
    losses = model([torch.rand(3, 64, 64)], [target])
    assert set(losses) == {"loss_mask", "loss_dice", "loss_iou", "loss_object_maps"}
    losses["loss_object_maps"].backward()
    assert model.object_map_head.project.weight.grad.abs().sum() > 0
    plain = build_model("sam", model_config("sam", "nuclei", {}), 1)
    assert not any("object_map" in k for k in plain.state_dict())


def test_click_radius_jitter_draws_one_disk_size_per_prompt_in_training_only():
    from instseg.models.sam.prompt_encoder import PromptEncoder, click_maps

    torch.manual_seed(0)
    encoder = PromptEncoder(32, 8, 256, 16, click_radius=5.0, click_radius_jitter=0.8)
    radii = encoder.train().radius(500, torch.device("cpu"))
    assert radii.min() >= 1.0 and radii.max() <= 9.0 and radii.std() > 1.5
    assert encoder.eval().radius(500, torch.device("cpu")) == 5.0
    xy = torch.tensor([[[20.0, 20.0]], [[20.0, 20.0]]])
    maps = click_maps((xy, torch.ones(2, 1)), None, (40, 40), 1.0, torch.tensor([2.0, 6.0]))
    areas = maps[:, 0].sum((1, 2))
    assert 9 <= areas[0] <= 16 and 100 <= areas[1] <= 125  # pi r^2 on a pixel grid: 12.6 and 113


def test_box_map_without_click_disks_draws_the_box_and_never_the_click():
    """``box_map`` with ``click_radius`` 0: the dense prompt follows the box but not where the click
    is, so a click reaches the decoder only as its token; the box alone in the maps."""
    from instseg.models.sam.prompt_encoder import PromptEncoder, click_maps

    torch.manual_seed(0)
    encoder = PromptEncoder(32, 8, 256, 16, click_radius=0.0, box_map=True).eval()
    labels = torch.ones(1, 1)
    with torch.no_grad():
        _, here = encoder((torch.tensor([[[20.0, 20.0]]]), labels), None, None, (8, 8))
        _, there = encoder((torch.tensor([[[50.0, 41.0]]]), labels), None, None, (8, 8))
        _, small = encoder(None, torch.tensor([[8.0, 8.0, 20.0, 20.0]]), None, (8, 8))
        _, large = encoder(None, torch.tensor([[8.0, 8.0, 50.0, 60.0]]), None, (8, 8))
    torch.testing.assert_close(here, there)
    assert (small - large).abs().max() > 1e-3
    xy = torch.tensor([[[4.5, 4.5]]])  # + 0.5: exactly on a cell centre of the 2-px grid: still no disk
    maps = click_maps((xy, labels), torch.tensor([[0.0, 0.0, 9.0, 9.0]]), (16, 16), 2.0, 0.0)
    assert maps[:, :2].sum() == 0 and maps[0, 2].sum() == 25
    assert PromptEncoder(32, 8, 256, 16).click_down is None  # as SAM: no maps at all


def test_point_features_give_a_click_token_the_embedding_under_the_click_and_nothing_else():
    """``point_features``: a click's token changes with the embedding cell under it, not with a cell
    far away, and box corners never read the embedding; at a cell's centre it reads that cell."""
    from instseg.models.sam.prompt_encoder import BOX_BOTTOM_RIGHT, BOX_TOP_LEFT, PromptEncoder

    torch.manual_seed(0)
    encoder = PromptEncoder(32, 8, 256, 16, point_features=True).eval()
    embedding = torch.randn(1, 32, 8, 8)
    centre = torch.tensor([[[(2 + 0.5) * 8, (5 + 0.5) * 8]]])  # continuous pixels: row 5, column 2
    torch.testing.assert_close(encoder.features_under(embedding, centre)[0, 0], embedding[0, :, 5, 2])
    click = (torch.tensor([[[20.0, 43.0]]]), torch.ones(1, 1))  # pixel (20, 43): in cell (5, 2)
    # box corners as the exported graph gives them: on the point path, with the corners' labels
    corners = (torch.tensor([[[16.0, 40.0], [30.0, 50.0]]]), torch.tensor([[BOX_TOP_LEFT, BOX_BOTTOM_RIGHT]]))
    far, near = embedding.clone(), embedding.clone()
    far[..., 0, 7] += 5
    near[..., 5, 2] += 5
    with torch.no_grad():
        tokens = {
            n: encoder(click, None, None, (8, 8), embedding=e)[0]
            for n, e in [("e", embedding), ("far", far), ("near", near)]
        }
        boxes = [encoder.embed_points(*corners, pad=False, embedding=e) for e in (embedding, near)]
    torch.testing.assert_close(tokens["e"], tokens["far"])
    assert (tokens["e"][0, 0] - tokens["near"][0, 0]).abs().max() > 0.1
    torch.testing.assert_close(tokens["e"][0, 1], tokens["near"][0, 1])  # the padding token
    torch.testing.assert_close(boxes[0], boxes[1])
    assert PromptEncoder(32, 8, 256, 16).point_features is None


def test_point_features_train_through_the_criterion():
    torch.manual_seed(0)
    cfg = model_config(
        "sam", "nuclei", {"point_features": True, "prompts_per_image": 2, "box_prompt_ratio": 0.0}
    )
    model = build_model("sam", cfg, 1).train()
    masks = torch.stack([square(8, 20, 8, 20, size=(64, 64)), square(30, 44, 30, 40, size=(64, 64))])
    target = {"boxes": torch.zeros(2, 4), "labels": torch.ones(2, dtype=torch.int64), "masks": masks.byte()}
    losses = model([torch.rand(3, 64, 64)], [target])
    sum(losses.values()).backward()
    assert model.prompt_encoder.point_features.weight.grad.abs().sum() > 0


def test_the_dynamic_head_measures_offsets_from_the_box_centre_else_the_first_click():
    """Pixel centres of the logit cells (4 px wide at TINY's stride 16), from a window's corner if
    any; the anchor is the box's centre when there is a box, else the first click, in the same
    half-pixel convention as the prompt tokens; without the head, no offsets are computed."""
    from instseg.models.sam.model import SAM
    from tests.models.test_sam import TINY

    decode = SAM(dataclasses.replace(TINY, dynamic_layers=2)).decode
    points = (torch.tensor([[[10.0, 20.0], [50.0, 60.0]]]), torch.ones(1, 2))
    pixels, anchors = decode.offsets(points, None, 1, (2, 3))
    assert anchors.tolist() == [[10.5, 20.5]]
    assert pixels.tolist() == [[[2, 6, 10, 2, 6, 10], [2, 2, 2, 6, 6, 6]]]
    _, anchors = decode.offsets(points, torch.tensor([[0.0, 10.0, 20.0, 40.0]]), 1, (2, 3))
    assert anchors.tolist() == [[10.5, 25.5]]
    pixels, _ = decode.offsets(points, None, 1, (2, 3), torch.tensor([[1, 2]]))
    assert pixels[0, :, 0].tolist() == [10.0, 6.0]  # column 2, row 1
    _, anchors = decode.offsets(None, None, 2, (2, 3))  # a mask prompt alone: the origin
    assert anchors.tolist() == [[0.5, 0.5], [0.5, 0.5]]
    assert SAM(TINY).decode.offsets(points, None, 1, (2, 3)) is None


def test_the_dynamic_head_learns_which_of_three_blobs_was_clicked():
    """Three equal disks on one image: only the click's position says which one is meant. After a
    short training a click at each centre gives that disk's mask, not its neighbours'."""
    torch.manual_seed(0)
    overrides = {"dynamic_layers": 3, "click_radius": 0.0, "prompts_per_image": 3, "box_prompt_ratio": 0.0}
    # a prior blob wider than the image: the untrained head answers every click with everything
    cfg = model_config("sam", "nuclei", {**overrides, "click_rounds": 0, "dynamic_prior": 96.0})
    model = build_model("sam", cfg, 1)
    centres = [(16, 16), (44, 40), (18, 46)]
    image = torch.full((3, 64, 64), 0.1)
    masks = torch.zeros((3, 64, 64), dtype=torch.uint8)
    yy, xx = torch.meshgrid(torch.arange(64), torch.arange(64), indexing="ij")
    for i, (y, x) in enumerate(centres):
        masks[i] = ((yy - y) ** 2 + (xx - x) ** 2 <= 64).byte()
        image[:, masks[i].bool()] = 0.9
    target = {"boxes": torch.zeros(3, 4), "labels": torch.ones(3, dtype=torch.int64), "masks": masks}

    def click_iou() -> torch.Tensor:  # [click, disk]
        model.eval()
        with torch.no_grad():
            batch, _ = model.transform([image])
            embedding = model.network(batch.tensors)
            clicks = torch.tensor([[[x, y]] for y, x in centres], dtype=torch.float32)
            logits, iou = model.decode(embedding, (clicks, torch.ones(3, 1)), None, None, True)
            logits = logits[torch.arange(3), iou.argmax(1)][:, None]  # a click's round trains multimask
        predicted = torch.nn.functional.interpolate(logits, size=(64, 64), mode="bilinear")[:, 0] > 0
        return mask_iou(predicted[:, None], masks.bool()[None])

    assert (click_iou() < 0.5).all()
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    for _ in range(60):
        losses = model([image], [dict(target)])
        optimizer.zero_grad()
        sum(losses.values()).backward()
        optimizer.step()
    iou = click_iou()
    assert ((iou > 0.5) == torch.eye(3, dtype=torch.bool)).all(), iou


def test_an_untrained_dynamic_head_answers_a_click_with_a_blob_around_it():
    """Each hypernetwork starts from ``blob_parameters``: before any training a click gets a diamond
    ``dynamic_prior`` px wide around it (the multimask outputs half, once and twice that), not a
    constant mask, and the IoU head answers one half, so automatic masks pass a zero threshold."""
    from instseg.models.sam.model import SAM

    torch.manual_seed(0)
    cfg = model_config("sam", "nuclei", {"dynamic_layers": 3, "dynamic_prior": 16.0})
    model = SAM(cfg).eval()
    with torch.no_grad():
        batch, _ = model.transform([torch.rand(3, 96, 96)])
        embedding = model.network(batch.tensors)
        logits, iou = model.decode(
            embedding, (torch.tensor([[[40.0, 50.0]]]), torch.ones(1, 1)), None, None, None
        )
    masks = torch.nn.functional.interpolate(logits, size=(96, 96), mode="bilinear")[0] > 0
    areas = masks.flatten(1).sum(1).float() / (2 * 16.0**2)  # a diamond of radius r: 2 r^2
    assert masks[:, 50, 40].all()
    assert 0.7 < areas[0] < 1.3 and 0.7 < areas[2] < 1.3, areas
    assert areas[1] < 0.5 * areas[2] < areas[3] / 3, areas
    torch.testing.assert_close(iou, torch.full_like(iou, 0.5), atol=0.2, rtol=0)
