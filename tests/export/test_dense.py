"""The forms that exported graphs take (windowed masks, GroupNorm in steps) give what the eager code gives."""

from __future__ import annotations

import pytest
import torch

from instseg.cropped_masks import CroppedMasks
from instseg.export.graph import PreciseGroupNorm, precise_group_norms
from instseg.export.onnx import image_bytes
from instseg.masks import boxes_from_extents, masks_to_boxes
from instseg.models.postprocess import (
    masks_at_input,
    paste_masks,
    windowed_paste_masks,
    windowed_probs_at_input,
)
from instseg.models.solov2.model import rounded_ratio
from instseg.models.transform import ResizeNormalize


@pytest.mark.parametrize(
    ("resized", "original"), [((96, 128), (64, 85)), ((61, 83), (61, 83)), ((128, 96), (200, 150))]
)
@pytest.mark.parametrize("clip", [False, True])
def test_dense_resampling_thresholds_to_the_eager_masks(resized, original, clip):
    g = torch.Generator().manual_seed(0)
    padded = ((resized[0] + 31) // 32 * 32 // 4, (resized[1] + 31) // 32 * 32 // 4)
    probs = torch.nn.functional.avg_pool2d(torch.rand(6, 1, padded[0] + 2, padded[1] + 2, generator=g), 3, 1)[
        :, 0
    ]
    boxes = None
    if clip:
        corner = torch.rand(6, 2, generator=g) * torch.tensor([original[1], original[0]]) * 0.6
        boxes = torch.cat([corner, corner + torch.tensor([original[1], original[0]]) * 0.4], 1)
    eager = masks_at_input(probs, resized, original, 0.5, 4, boxes).dense()
    values, origins = windowed_probs_at_input(probs, resized, original, 0.5, 4, boxes)
    assert not clip or values.shape[1] < original[0] or values.shape[2] < original[1]  # windows
    dense = placed(values > 0.5, origins, original)
    assert eager.any() and eager.shape == dense.shape
    assert (eager != dense).float().mean() <= 1e-4  # float rounding right at the threshold only


def test_dense_paste_thresholds_to_the_masks_pasted_box_by_box():
    """Boxes inside, across the edges and outside the image, thin and sub-pixel ones among them."""
    g = torch.Generator().manual_seed(0)
    probs = torch.nn.functional.avg_pool2d(torch.rand(40, 1, 16, 16, generator=g), 3, 1)
    probs = (probs - 0.5) * 4 + 0.5
    corner = torch.rand(40, 2, generator=g) * torch.tensor([90.0, 70.0]) - 10
    boxes = torch.cat([corner, corner + torch.rand(40, 2, generator=g) * 40 + 0.3], 1)
    boxes[:2] = torch.tensor([[100.0, 80, 120, 90], [-30, -20, -5, -2]])  # beyond the image: empty masks
    eager = paste_masks(probs, boxes, (70, 90)).dense()
    values, origins = windowed_paste_masks(probs, boxes, (70, 90))
    assert values.shape[1] * values.shape[2] < 70 * 90  # windows as long as the longest expanded box
    dense = placed(values > 0.5, origins, (70, 90))
    assert eager.flatten(1).any(1).sum() > 30 and not eager.flatten(1).any(1).all()
    assert torch.equal(eager, dense)


def placed(crops: torch.Tensor, origins: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Windows at their origins, as the graph's user places them: bool ``[N, H, W]``."""
    assert torch.all(origins >= 0) and torch.all(origins[:, 1] + crops.shape[1] <= size[0])
    assert torch.all(origins[:, 0] + crops.shape[2] <= size[1])
    return CroppedMasks(list(crops), origins, size).dense()


def test_windows_fit_the_longest_extent_and_stay_in_the_image():
    from instseg.models.postprocess import windows

    start, end = torch.tensor([0, 5, 95, -4, 30]), torch.tensor([10, 8, 120, 3, 30])
    pixels = windows(start, end, 100)
    assert pixels.shape == (5, 25)  # the longest extent, 95..120
    assert pixels[:, 0].tolist() == [0, 5, 75, 0, 30]  # moved back from the far edge; clipped at 0
    assert torch.equal(pixels[1], torch.arange(5, 30))
    assert windows(start[:0], end[:0], 100).shape == (0, 1)
    assert windows(torch.tensor([0]), torch.tensor([400]), 100).shape == (1, 100)


def test_rounded_ratio_rounds_as_python_does():
    for b in (8.0, 12.4, 16.0, 22.2, 32.0, 64.0, 66.7, 3):
        assert [rounded_ratio(a, b) for a in range(1, 800)] == [round(a / b) for a in range(1, 800)]


def test_output_size_follows_torchvision_and_the_fixed_scale():
    shorter = ResizeNormalize(448, 768, None)
    assert shorter.output_size(96, 128) == (448, 597)  # floor(128 x 448 / 96)
    assert shorter.output_size(100, 1000) == (76, 768)  # the longer side capped
    fixed = ResizeNormalize(800, 2048, 1.5)
    assert fixed.output_size(61, 83) == (92, 125)  # 91.5 rounds up, 124.5 too
    assert fixed.output_size(4000, 10) == (2048, 5)


def test_boxes_from_extents_are_the_tight_boxes_and_empty_masks_get_zeros():
    masks = torch.zeros(3, 30, 40, dtype=torch.bool)
    masks[0, 2:5, 3:9] = True
    masks[2, 29, 39] = True
    expected = torch.tensor([[3.0, 2, 9, 5], [0, 0, 0, 0], [39, 29, 40, 30]])
    assert torch.equal(masks_to_boxes(masks), expected)
    some = masks[[0, 2]]
    assert torch.equal(boxes_from_extents(some.any(2), some.any(1)), expected[[0, 2]])


def test_precise_group_norm_exports_the_statistics_pytorch_computes(tmp_path):
    """ONNX Runtime's InstanceNormalization sums a group in one float32 pass; the swapped-in form keeps
    a large map's normalised values within PyTorch's own error of a float64 reference."""
    ort = pytest.importorskip("onnxruntime")
    model = torch.nn.Sequential(torch.nn.Conv2d(4, 64, 1), torch.nn.ModuleList([torch.nn.GroupNorm(16, 64)]))
    assert precise_group_norms(model) == 1 and isinstance(model[1][0], PreciseGroupNorm)
    norm = model[1][0]
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 64, 390, 522, generator=g) * 0.1 + 3.0  # a large map, far from zero mean
    grouped = x.double().reshape(1, 16, -1)
    reference = (grouped - grouped.mean(-1, keepdim=True)) / torch.sqrt(
        grouped.var(-1, unbiased=False, keepdim=True) + 1e-5
    )
    reference = reference.reshape_as(x)
    small = x[:, :, :40, :50]
    with torch.no_grad():
        program = torch.onnx.export(
            norm,
            (small,),
            dynamo=True,
            dynamic_shapes=({2: torch.export.Dim("h"), 3: torch.export.Dim("w")},),
        )
    program.save(str(tmp_path / "norm.onnx"))
    session = ort.InferenceSession(str(tmp_path / "norm.onnx"), providers=["CPUExecutionProvider"])
    got = torch.from_numpy(session.run(None, {session.get_inputs()[0].name: x.numpy()})[0])
    with torch.no_grad():
        eager = norm(x)
    assert (eager.double() - reference).abs().max() < 2e-5
    assert (got.double() - reference).abs().max() < 2e-5


def test_image_bytes_round_and_clip_as_pytorch_does():
    g = torch.Generator().manual_seed(0)
    image = torch.rand(3, 61, 83, generator=g)
    image[0, 0, :5] = torch.tensor([0.5 / 255, 1.5 / 255, 2.5 / 255, -0.1, 1.2])  # ties, out of range
    expected = image.mul(255.0).round_().clamp_(0, 255).to(torch.uint8).permute(1, 2, 0)
    got = image_bytes(image)
    assert got.flags["C_CONTIGUOUS"] and torch.equal(torch.from_numpy(got), expected)
