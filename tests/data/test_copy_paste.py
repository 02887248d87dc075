"""Copy-paste augmentation: pasted pixels, masks and labels, what it covers, class-balanced draws, and the
training stream (LVIS negatives included)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from instseg.config import TrainConfig, config_from_dict
from instseg.data.coco import CocoIndex
from instseg.data.copy_paste import CopyPaste
from instseg.engine.trainer import training_batches
from instseg.errors import InstsegError
from tests.data.long_tailed import BLUE, GREY, long_tailed_index


@pytest.fixture()
def index(tmp_path: Path) -> CocoIndex:
    return long_tailed_index(tmp_path)


def _grey(height: int = 32, width: int = 32) -> torch.Tensor:
    return torch.tensor(GREY, dtype=torch.uint8)[:, None, None].expand(3, height, width).clone()


def test_a_pasted_object_brings_its_pixels_and_label_and_covers_what_is_under_it(index):
    only_rare = CopyPaste(index, probability=1.0, max_objects=1, balance=60.0)  # 9**-60: "common" never drawn
    image = _grey()
    under = np.ones((1, 32, 32), dtype=np.uint8)  # an object filling the window
    torch.manual_seed(0)
    pasted, masks, labels = only_rare(image, under, [1])
    assert torch.equal(image, _grey())  # the input is not written to
    assert labels == [1, 2]
    placed = masks[1].astype(bool)
    assert placed.sum() == 100  # the whole 10x10 square, somewhere in the window
    ys, xs = np.nonzero(placed)
    assert ys.max() - ys.min() == 9 and xs.max() - xs.min() == 9
    assert (pasted[:, torch.from_numpy(placed)] == torch.tensor(BLUE)[:, None]).all()
    assert (pasted[:, ~torch.from_numpy(placed)] == torch.tensor(GREY)[:, None]).all()
    assert not (masks[0].astype(bool) & placed).any() and masks[0].sum() == 32 * 32 - 100


def test_an_object_covered_whole_leaves_the_target_and_a_large_object_gives_a_part(index):
    only_rare = CopyPaste(index, probability=1.0, max_objects=1, balance=60.0)
    under = np.zeros((1, 6, 6), dtype=np.uint8)
    under[0, 2:4, 2:4] = 1
    torch.manual_seed(0)
    pasted, masks, labels = only_rare(_grey(6, 6), under, [1])  # a 6x6 window, smaller than the square
    assert labels == [2] and masks.shape == (1, 6, 6) and masks.all()
    assert (pasted == torch.tensor(BLUE)[:, None, None]).all()


def test_balance_one_draws_every_class_alike_and_zero_draws_objects_as_they_come(index):
    torch.manual_seed(0)
    for balance, share in ((1.0, 0.5), (0.0, 0.1)):  # 9 "common" objects, 1 "rare"
        cp = CopyPaste(index, probability=1.0, max_objects=1, balance=balance)
        drawn = Counter(cp(_grey(), np.zeros((0, 32, 32), np.uint8), [])[2][0] for _ in range(600))
        assert drawn[2] / 600 == pytest.approx(share, abs=0.05)


def test_probability_sets_how_often_an_image_gets_objects(index):
    torch.manual_seed(0)
    empty = np.zeros((0, 32, 32), np.uint8)
    half = CopyPaste(index, probability=0.5, max_objects=3)
    counts = [len(half(_grey(), empty, [])[2]) for _ in range(400)]
    assert sum(c > 0 for c in counts) / 400 == pytest.approx(0.5, abs=0.08)
    assert set(counts) == {0, 1, 2, 3}
    never = CopyPaste(index, probability=0.0)
    image = _grey()
    assert never(image, empty, [])[0] is image


@pytest.mark.parametrize(
    ("options", "field"),
    [({"probability": 1.5}, "copy_paste"), ({"probability": 1.0, "max_objects": 0}, "copy_paste_objects"),
     ({"probability": 1.0, "balance": -1.0}, "copy_paste_balance")],
)  # fmt: skip
def test_bad_settings_are_one_line_naming_the_field(index, options, field):
    with pytest.raises(InstsegError, match=f"^{field} "):
        CopyPaste(index, **options)


def test_the_training_stream_pastes_and_a_pasted_class_is_not_a_verified_negative(index, tmp_path):
    values = {"data": str(tmp_path / "train.json"), "batch_size": 10, "workers": 0, "hflip": False}
    plain = config_from_dict(TrainConfig, values)
    _, targets = next(training_batches(index, plain))
    negatives = [t["neg_labels"].tolist() for t in targets]
    assert sum(n == [2] for n in negatives) == 9  # every image but the one with the rare square
    pasting = config_from_dict(
        TrainConfig, {**values, "copy_paste": 1.0, "copy_paste_objects": 1, "copy_paste_balance": 60.0}
    )
    _, targets = next(training_batches(index, pasting))
    for t in targets:
        assert 2 in t["labels"].tolist()  # the rare square, pasted on every image
        assert t["neg_labels"].tolist() == []
        assert len(t["boxes"]) == len(t["masks"]) == len(t["labels"])
