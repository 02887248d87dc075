"""Window-by-window prediction: each object once, in image coordinates, whatever window it falls in."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import ndimage
from torch import nn

from instseg.cropped_masks import CroppedMasks, cropped_masks
from instseg.tiled_inference import TiledInference, window_cores, window_starts


class ComponentModel(nn.Module):
    """A stand-in for a trained model: every bright blob of channel 0 is an object; channel 1 holds
    its score, so an object keeps its identity from window to window."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[int, int]] = []

    def forward(self, images: list[torch.Tensor]) -> list[dict]:
        outputs = []
        for image in images:
            self.calls.append(tuple(image.shape[-2:]))
            labels, n = ndimage.label(image[0].numpy() > 0.5)
            masks = torch.from_numpy(
                np.stack([labels == i + 1 for i in range(n)]) if n else np.zeros((0, *labels.shape), bool)
            )
            boxes = torch.zeros((n, 4))
            scores = torch.zeros(n)
            for i, mask in enumerate(masks):
                ys, xs = torch.nonzero(mask, as_tuple=True)
                boxes[i] = torch.tensor([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], dtype=torch.float32)
                scores[i] = image[1][mask].mean()
            order = torch.argsort(scores, descending=True)
            outputs.append(
                {
                    "boxes": boxes[order],
                    "labels": torch.ones(n, dtype=torch.int64),
                    "scores": scores[order],
                    "masks": masks[order],
                }
            )
        return outputs


def scene(height: int, width: int, count: int, seed: int) -> tuple[torch.Tensor, list[np.ndarray]]:
    """Non-touching squares of 6-14 pixels, each with its own score."""
    rng = np.random.default_rng(seed)
    image = torch.zeros((3, height, width))
    taken = np.zeros((height, width), bool)
    objects = []
    while len(objects) < count:
        size = int(rng.integers(6, 15))
        y, x = int(rng.integers(0, height - size)), int(rng.integers(0, width - size))
        if taken[max(y - 2, 0) : y + size + 2, max(x - 2, 0) : x + size + 2].any():
            continue
        taken[y : y + size, x : x + size] = True
        mask = np.zeros((height, width), bool)
        mask[y : y + size, x : x + size] = True
        image[0][torch.from_numpy(mask)] = 1.0
        image[1][torch.from_numpy(mask)] = 0.1 + 0.8 * len(objects) / count
        objects.append(mask)
    return image, objects


def test_windows_cover_the_side_and_cores_split_it_without_gaps():
    for size, tile, overlap in [
        (300, 128, 32),
        (128, 128, 32),
        (129, 128, 32),
        (1000, 256, 64),
        (50, 128, 0),
    ]:
        starts = window_starts(size, tile, overlap)
        assert starts[0] == 0 and starts[-1] + tile >= size
        assert all(b - a <= tile - overlap for a, b in itertools.pairwise(starts))  # every seam is overlapped
        cores = window_cores(size, tile, starts)
        assert cores[0][0] == 0 and cores[-1][1] == size
        assert all(a[1] == b[0] for a, b in itertools.pairwise(cores))
        for start, (lo, hi) in zip(starts, cores, strict=True):  # a core lies inside its window
            assert start <= lo < hi <= start + tile


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_every_object_once_with_its_whole_mask(seed):
    image, objects = scene(300, 410, 60, seed)
    model = ComponentModel()
    tiled = TiledInference(model, tile=96, overlap=32, batch_size=3)
    (out,) = tiled([image])
    assert len(model.calls) == len(window_starts(300, 96, 32)) * len(window_starts(410, 96, 32))
    assert all(shape == (96, 96) for shape in model.calls)
    masks = out["masks"]
    assert isinstance(masks, torch.Tensor) and masks.shape == (
        len(objects),
        300,
        410,
    )  # dense outside cropped_masks()
    found = {m.numpy().tobytes() for m in masks}
    assert found == {o.tobytes() for o in objects}  # each once, none cut by a window's edge
    assert torch.all(out["scores"][:-1] >= out["scores"][1:])
    whole = model([image])[0]
    assert torch.equal(out["boxes"], whole["boxes"])
    assert torch.allclose(out["scores"], whole["scores"])


def test_cropped_masks_when_asked_and_small_images_pass_through():
    image, objects = scene(200, 200, 20, 3)
    model = ComponentModel()
    tiled = TiledInference(model, tile=80, overlap=24)
    with cropped_masks():
        (out,) = tiled([image])
    assert isinstance(out["masks"], CroppedMasks) and out["masks"].image_size == (200, 200)
    assert {m.numpy().tobytes() for m in out["masks"].dense()} == {o.tobytes() for o in objects}
    model.calls.clear()
    small, _ = scene(80, 60, 3, 4)
    (out,) = tiled([small])
    assert model.calls == [(80, 60)] and len(out["scores"]) == 3


def test_an_empty_image_gives_an_empty_output():
    (out,) = TiledInference(ComponentModel(), tile=64, overlap=16)([torch.zeros((3, 150, 100))])
    assert out["boxes"].shape == (0, 4) and out["masks"].shape == (0, 150, 100)


def test_bad_windows_are_refused():
    with pytest.raises(ValueError, match="overlap"):
        TiledInference(ComponentModel(), tile=64, overlap=64)
    with pytest.raises(ValueError, match="tile"):
        TiledInference(ComponentModel(), tile=8, overlap=0)


def test_a_bundled_model_predicts_window_by_window():
    import instseg

    predictor = instseg.load("nuclei", device="cpu")
    image, _ = scene(300, 260, 30, 5)
    instances = predictor.tiled(128, 32).predict(image.permute(1, 2, 0).numpy(), cropped=True)
    assert instances.image_size == (300, 260)
    assert len(instances) > 0
    boxes = instances.boxes
    assert torch.all(boxes[:, :2] >= 0) and torch.all(boxes[:, 2] <= 260) and torch.all(boxes[:, 3] <= 300)
    whole = predictor.predict(image.permute(1, 2, 0).numpy())
    assert abs(len(instances) - len(whole)) <= 0.5 * len(whole) + 2  # the same scene, found either way


def test_predict_and_eval_take_tile_on_the_command_line(tmp_path, capsys):
    import json

    from PIL import Image

    import instseg
    from instseg.cli import main

    val = Path(instseg.__file__).parent / "assets" / "dsb2018_mini" / "val"
    largest = max(val.glob("*.png"), key=lambda p: np.prod(Image.open(p).size))
    assert main(["predict", "--model", "nuclei", str(largest), "--out", str(tmp_path), "--tile", "128"]) == 0
    results = json.loads((tmp_path / "predictions.json").read_text())
    width, height = Image.open(largest).size
    assert results and all(r["segmentation"]["size"] == [height, width] for r in results)
    assert (
        main(["eval", "--model", "nuclei", "--data", str(val.parent), "--tile", "128", "--no-matching"]) == 0
    )
    assert "segm" in capsys.readouterr().out
    assert (
        main(["eval", "--model", "nuclei", "--data", str(val.parent), "--tile", "128", "--task", "semantic"])
        == 2
    )
