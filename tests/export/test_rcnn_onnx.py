"""Mask R-CNN's graph: RPN, RoI heads, NMS and pasting inside, the eager model's detections out."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import instseg
from instseg.cli import main
from instseg.data.images import read_image
from instseg.engine import checkpoint as ckpt
from instseg.export.onnx import ExportError, export_onnx
from instseg.export.parity import compare_instances
from instseg.models.build import build_model, checkpoint_meta, model_config
from instseg.structures import Category
from tests.conftest import TINY_MODEL

pytest.importorskip("onnxruntime")

DEMO_VAL = Path(instseg.__file__).parent / "assets" / "dsb2018_mini" / "val"


def refining_checkpoint(root: Path) -> Path:
    """Random weights with a point head; thresholds opened so that an untrained model detects."""
    overrides = TINY_MODEL | {"score_threshold": 0.0, "detections_per_image": 40, "point_refine": True}
    torch.manual_seed(0)
    cfg = model_config("mask_rcnn", "default", overrides)
    path = root / "mask_rcnn"
    meta = checkpoint_meta("mask_rcnn", cfg, [Category(1, "a"), Category(2, "b")])
    ckpt.save_checkpoint(path, build_model("mask_rcnn", cfg, 2).state_dict(), meta)
    return path


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory):
    """(eager predictor without the point head, ONNX predictor), exported once through the CLI."""
    root = tmp_path_factory.mktemp("rcnn")
    source = refining_checkpoint(root)
    with pytest.raises(ExportError, match="point refinement does not export; --coarse"):
        export_onnx(source, root / "refined.onnx")
    assert not (root / "refined.onnx").exists()
    graph = root / "mask_rcnn.onnx"
    assert main(["export", "--model", str(source), "--out", str(graph), "--coarse"]) == 0
    return instseg.load(source, device="cpu", point_refine=False), instseg.load(graph)


def test_graph_returns_the_eager_detections_at_sizes_it_was_not_traced_at(exported):
    eager, graph = exported
    assert graph.inference.metadata["family"] == "mask_rcnn"
    rng = np.random.default_rng(1)
    real = read_image(sorted(DEMO_VAL.glob("*.png"))[0]).permute(1, 2, 0).numpy()
    for image in (real[:61, :83], rng.integers(0, 256, (90, 47, 3), dtype=np.uint8), real):
        a, b = eager.predict(image), graph.predict(image)
        assert b.masks.shape[1:] == image.shape[:2]
        assert len(a) > 0
        parity = compare_instances(a, b)
        assert parity.same_count and parity.labels_agree
        assert parity.worst_iou >= 0.99 and parity.worst_score_difference <= 1e-4
        # an untrained model ties scores, which either side may order first
        torch.testing.assert_close(b.boxes.sort(0).values, a.boxes.sort(0).values, atol=1e-3, rtol=0)
        assert bool((b.scores[:-1] >= b.scores[1:]).all()) and bool(b.masks.flatten(1).any(1).all())


def test_an_image_with_fewer_candidates_than_the_top_k_still_runs(exported):
    """Per-level top-k and the RoI levels are sized by the image: a 2x2 image has a handful of anchors."""
    eager, graph = exported
    tiny = np.full((2, 3, 3), 128, dtype=np.uint8)
    a, b = eager.predict(tiny), graph.predict(tiny)
    assert len(a) == len(b) and b.masks.shape[1:] == (2, 3)
