"""``instseg eval --task panoptic|semantic``: ground truth painted from the annotations, scored end to end."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from instseg.cli import main
from instseg.data.coco import CocoIndex, resolve_source
from instseg.data.synthetic import generate, preset
from instseg.engine.checkpoint import save_checkpoint
from instseg.engine.dense_evaluation import evaluate_dense, ground_truth_segments, thing_labels
from instseg.models.build import build_model, checkpoint_meta, model_config


@pytest.fixture(scope="module")
def panoptic_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("panoptic")
    generate(preset("panoptic", train_images=2, val_images=3, size=64, radius=(5.0, 10.0)), out, workers=1)
    return out


class Oracle:
    """A model that reads the ground truth back, less the first ``drop`` things of each image."""

    def __init__(self, index: CocoIndex, drop: int = 0) -> None:
        self.index, self.drop = index, drop

    def _image(self, pixels: torch.Tensor) -> dict:
        for image in self.index.images:  # the val images differ: find this one by its pixels' sum
            if image["_sum"] == float(pixels.sum()):
                return image
        raise AssertionError("unknown image")

    def panoptic(self, images, is_thing):
        segment_map, segments, _ = ground_truth_segments(self.index, self._image(images[0]))
        things = [s for s in segments if is_thing[s.category_id - 1]]
        for s in things[: self.drop]:  # missed: its pixels become void
            segment_map[segment_map == s.id] = 0
        kept = [s for s in segments if s not in things[: self.drop]]
        info = [{"id": s.id, "label": s.category_id} for s in kept]
        return [(torch.from_numpy(segment_map), info)]

    def semantic(self, images):
        _, _, labels = ground_truth_segments(self.index, self._image(images[0]))
        labels = np.where(labels == 0, 1, labels)  # void: any class, it is not scored
        return [torch.nn.functional.one_hot(torch.from_numpy(labels).long() - 1, 6).permute(2, 0, 1).float()]


def _oracle(data: Path, drop: int = 0) -> tuple[Oracle, CocoIndex]:
    from instseg.data.images import read_image

    index = CocoIndex(resolve_source(data, "val"), keep_crowd=True)
    for image in index.images:
        image["_sum"] = float(read_image(index.image_path(image)).float().div_(255.0).sum())
    return Oracle(index, drop), index


def test_ground_truth_is_the_visible_partition(panoptic_data: Path):
    index = CocoIndex(resolve_source(panoptic_data, "val"), keep_crowd=True)
    things = thing_labels(index)
    assert things == {1: True, 2: True, 3: True, 4: False, 5: False, 6: False}
    segment_map, segments, labels = ground_truth_segments(index, index.images[0])
    # stuff regions and things tile the image: no void, and every segment keeps pixels
    assert (segment_map > 0).all() and (labels > 0).all()
    assert all((segment_map == s.id).any() for s in segments)
    assert {s.category_id for s in segments} & {4, 5, 6} and {s.category_id for s in segments} & {1, 2, 3}


def test_an_oracle_scores_one_and_a_missed_thing_costs_recall(panoptic_data: Path):
    oracle, index = _oracle(panoptic_data)
    perfect = evaluate_dense(oracle, index.categories, index, "panoptic", progress=False)
    assert perfect["all"]["pq"] == pytest.approx(1.0) and perfect["stuff"]["n"] >= 1
    semantic = evaluate_dense(oracle, index.categories, index, "semantic", progress=False)
    assert semantic["miou"] == pytest.approx(1.0)
    oracle, index = _oracle(panoptic_data, drop=1)
    missed = evaluate_dense(oracle, index.categories, index, "panoptic", progress=False)
    fn = sum(r["fn"] for r in missed["per_class"].values())
    assert fn == len(index.images)  # one thing per image missed
    assert missed["things"]["rq"] < 1.0 and missed["stuff"]["pq"] == pytest.approx(1.0)


def test_cli_runs_a_query_model_and_refuses_other_families(panoptic_data: Path, tmp_path: Path, capsys):
    index = CocoIndex(resolve_source(panoptic_data, "train"))
    tiny = dict(min_size=64, max_size=64, hidden_dim=32, heads=2, encoder_layers=1, encoder_ffn=64)
    tiny |= dict(decoder_layers=1, decoder_ffn=64, num_queries=8, num_points=64)
    for family, options in (("mask2former", tiny), ("mask_rcnn", {"min_size": 64, "max_size": 64})):
        cfg = model_config(family, "default", options)
        model = build_model(family, cfg, len(index.categories))
        meta = checkpoint_meta(family, cfg, index.categories)
        save_checkpoint(tmp_path / family, model.state_dict(), meta)
    for task in ("panoptic", "semantic"):
        out = tmp_path / f"out_{task}"
        argv = [
            "eval",
            "--model",
            str(tmp_path / "mask2former"),
            "--data",
            str(panoptic_data),
            "--task",
            task,
        ]
        assert main([*argv, "--out", str(out)]) == 0
        printed = capsys.readouterr().out
        summary = json.loads((out / f"{task}.json").read_text())
        if task == "panoptic":
            assert "things" in printed and "stuff" in printed and set(summary) >= {"all", "things", "stuff"}
        else:
            assert "mIoU" in printed and 0.0 <= summary["miou"] <= 1.0
    code = main(
        ["eval", "--model", str(tmp_path / "mask_rcnn"), "--data", str(panoptic_data), "--task", "panoptic"]
    )
    assert code != 0
    assert "needs a query-based model" in capsys.readouterr().err
