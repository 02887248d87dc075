"""Repeat-factor sampling: the LVIS formula, stochastic rounding per epoch, and its composition with ranks."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import pytest
import torch

from instseg.config import TrainConfig, config_from_dict
from instseg.data.coco import CocoIndex
from instseg.data.datasets import SeededEpochSampler
from instseg.data.repeat_factors import repeat_factors
from instseg.engine.trainer import training_batches
from tests.data.long_tailed import long_tailed_index


@pytest.fixture()
def long_tailed(tmp_path: Path) -> CocoIndex:
    return long_tailed_index(tmp_path)


def test_repeat_factors_follow_the_lvis_formula(long_tailed):
    # f(common) = 0.9, f(rare) = 0.1; r = max over an image's classes of max(1, sqrt(t / f))
    factors = repeat_factors(long_tailed, threshold=0.5)
    rare = math.sqrt(0.5 / 0.1)
    assert factors.tolist() == pytest.approx([1.0] * 8 + [rare, 1.0])
    assert repeat_factors(long_tailed, threshold=0.05).tolist() == [1.0] * 10  # no class below 5%


def test_each_epoch_rounds_stochastically_and_the_mean_is_the_factor():
    factors = torch.tensor([1.0, 2.25, 3.5, 1.0], dtype=torch.float64)
    sampler = SeededEpochSampler(4, 1, seed=7, repeat=factors)
    counts = torch.stack([torch.bincount(torch.tensor(sampler.epoch(e)), minlength=4) for e in range(2000)])
    assert (counts[:, 0] == 1).all() and (counts[:, 3] == 1).all()
    assert set(counts[:, 1].tolist()) == {2, 3} and set(counts[:, 2].tolist()) == {3, 4}
    assert counts.double().mean(0).tolist() == pytest.approx([1.0, 2.25, 3.5, 1.0], abs=0.05)
    assert sampler.epoch(3) == SeededEpochSampler(4, 1, seed=7, repeat=factors).epoch(3)  # from the seed


def test_ranks_split_the_one_process_stream_with_repeats():
    factors = torch.tensor([1.0, 4.6, 1.0, 2.2, 1.0], dtype=torch.float64)
    one = list(itertools.islice(iter(SeededEpochSampler(5, 4, 0, repeat=factors)), 40))
    ranks = [list(itertools.islice(iter(SeededEpochSampler(5, 2, 0, 0, r, 2, factors)), 20)) for r in (0, 1)]
    # step s: rank 0 takes the first half of one process's batch of 4, rank 1 the second
    merged = [d for s in range(10) for r in (0, 1) for d in ranks[r][2 * s : 2 * s + 2]]
    assert merged == one
    resumed = list(itertools.islice(iter(SeededEpochSampler(5, 2, 0, 3, 1, 2, factors)), 4))
    assert resumed == ranks[1][6:10]  # a resumed rank continues where it stopped


def test_training_draws_the_rare_image_more_often(long_tailed, tmp_path):
    def draws_of_rare(threshold: float) -> int:
        cfg = config_from_dict(
            TrainConfig, {"data": str(tmp_path / "train.json"), "images": str(tmp_path / "images"),
                          "batch_size": 5, "workers": 0, "repeat_threshold": threshold}
        )  # fmt: skip
        batches = training_batches(long_tailed, cfg)
        ids = [int(t["image_id"]) for _, targets in itertools.islice(batches, 40) for t in targets]
        return ids.count(8)

    plain, repeated = draws_of_rare(0.0), draws_of_rare(0.9)  # r(rare image) = 3
    assert 15 <= plain <= 25 and repeated >= 2 * plain  # 200 draws: 20 expected, then 3 x its share
