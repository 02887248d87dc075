"""Overlays: filled masks with one-pixel contours, small images enlarged, boxes only when asked."""

import torch

from instseg.pictures import contact_sheet, distinct_colors, overlay, side_by_side
from instseg.structures import Instances


def _one_square(size: int = 64) -> tuple[torch.Tensor, Instances]:
    image = torch.full((3, size, size), 0.2)
    masks = torch.zeros((1, size, size), dtype=torch.bool)
    masks[0, 10:20, 30:40] = True
    boxes = torch.tensor([[25.0, 5.0, 45.0, 25.0]])  # larger than the mask, to show whether it is drawn
    return image, Instances(boxes, torch.tensor([1]), torch.tensor([0.9]), masks, (size, size))


def test_overlay_fills_outlines_and_enlarges_small_images():
    image, inst = _one_square()
    picture = overlay(image, inst, min_side=256)
    assert picture.shape == (3, 256, 256) and picture.dtype == torch.uint8  # 64 px enlarged x4
    color = torch.tensor(distinct_colors(1)[0], dtype=torch.uint8)
    background = round(0.2 * 255)
    assert torch.equal(picture[:, 40, 120], color)  # the contour, at the enlarged mask's top edge
    assert not torch.equal(picture[:, 41, 121], color)  # the contour is one pixel thick
    inside = picture[:, 60, 140].float()
    expected = 0.6 * background + 0.4 * color.float()
    assert torch.allclose(inside, expected, atol=1)  # filled, semi-transparent
    assert (picture[:, 0:40, :] == background).all()  # nothing above the mask: no box, no text
    boxed = overlay(image, inst, boxes=True, min_side=256)
    assert not (boxed[:, 0:40, :] == background).all()  # the box edge at y = 5 * 4


def test_overlay_keeps_large_images_at_their_size_and_draws_nothing_without_instances():
    image, inst = _one_square(600)
    assert overlay(image, inst).shape == (3, 600, 600)
    empty = overlay(image, inst[torch.zeros(1, dtype=torch.bool)], min_side=0)
    assert (empty == round(0.2 * 255)).all()


def test_side_by_side_and_contact_sheet_sizes():
    a, b = torch.zeros(3, 40, 50, dtype=torch.uint8), torch.zeros(3, 30, 20, dtype=torch.uint8)
    pair = side_by_side([a, b], ("ground truth", "prediction"))
    assert pair.shape[1] > 40 and pair.shape[2] == 50 + 8 + 20
    sheet = contact_sheet([a, b, a], columns=2, width=100)
    # row 1: 40x50 -> 80x100 and 30x20 -> 150x100, as tall as the taller; row 2: one 80x100
    assert sheet.shape == (3, 150 + 80, 200)
    assert (sheet[:, 150:, 100:] == 255).all()  # the empty fourth cell stays white
