"""ONNX export: the graph returns what the eager model returns, for every exportable family, at any size."""

from __future__ import annotations

import json
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

pytest.importorskip("onnxruntime")

DEMO_VAL = Path(instseg.__file__).parent / "assets" / "dsb2018_mini" / "val"
MIN_SCORE = 0.3  # the trained model's export threshold: a black image has no detection above it

# random weights; thresholds opened so that an untrained model still returns detections
M2F = {"num_queries": 30, "detections_per_image": 30, "decoder_layers": 2}
RANDOM_MODELS = {  # name -> (family, preset, overrides)
    # shorter-side resize (torchvision's rule), Matrix NMS
    "solov2": ("solov2", "light", {"score_threshold": 0.0, "update_threshold": 0.0, "pre_nms_top": 40}),
    # x1.5 fixed scale (rounding ties), windows of the dynamic head, sequential NMS
    "condinst": ("condinst", "nuclei", {"score_threshold": 0.0, "pre_nms_top": 40, "nms": "standard"}),
    # the query readout, the paper's and with coordinate channels built at the traced size (box prior)
    "mask2former": ("mask2former", "nuclei_paper", M2F),
    "mask2former_box_prior": ("mask2former", "nuclei", M2F),
}


def random_checkpoint(root: Path, name: str) -> Path:
    family, preset, overrides = RANDOM_MODELS[name]
    torch.manual_seed(0)
    cfg = model_config(family, preset, overrides)
    path = root / name
    meta = checkpoint_meta(family, cfg, [Category(1, "a"), Category(2, "b")])
    ckpt.save_checkpoint(path, build_model(family, cfg, 2).state_dict(), meta)
    return path


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory):
    """name -> (eager predictor, ONNX predictor), each graph exported once; the trained model through
    the command line, with ``--min-score`` raising its candidate threshold as the eager model's is."""
    root = tmp_path_factory.mktemp("export")
    graph = root / "yolact.onnx"
    assert main(["export", "--model", "nuclei", "--out", str(graph), "--min-score", str(MIN_SCORE)]) == 0
    assert not list(root.glob("*.tmp"))
    out = {"yolact": (instseg.load("nuclei", device="cpu", min_score=MIN_SCORE), instseg.load(graph))}
    for name in RANDOM_MODELS:
        source = random_checkpoint(root, name)
        out[name] = (
            instseg.load(source, device="cpu"),
            instseg.load(export_onnx(source, root / f"{name}.onnx")),
        )
    return out


@pytest.mark.parametrize("name", ["yolact", *RANDOM_MODELS])
def test_graph_returns_the_eager_detections_at_sizes_it_was_not_traced_at(exported, name: str):
    eager, graph = exported[name]
    rng = np.random.default_rng(1)
    real = read_image(sorted(DEMO_VAL.glob("*.png"))[0]).permute(1, 2, 0).numpy()
    images = [real[:61, :83], rng.integers(0, 256, (90, 47, 3), dtype=np.uint8)]
    for image in images:
        a, b = eager.predict(image), graph.predict(image)
        assert b.masks.shape[1:] == image.shape[:2]
        assert len(a) > 0
        parity = compare_instances(a, b)
        assert parity.same_count and parity.labels_agree
        # untrained masks sit near the threshold, where float rounding flips pixels of small masks
        # and, through maskness and Matrix NMS, scores; the trained model is held to the bar
        iou, score = (0.99, 1e-3) if name == "yolact" else (0.95, 1e-2)
        assert parity.worst_iou >= iou and parity.worst_score_difference <= score
        torch.testing.assert_close(b.boxes.sort(0).values, a.boxes.sort(0).values, atol=1e-2, rtol=0)
        assert bool((b.scores[:-1] >= b.scores[1:]).all())  # the contract: scores descending, no empty mask
        assert bool(b.masks.flatten(1).any(1).all())


def test_metadata_carries_categories_preprocessing_and_version(exported):
    _, graph = exported["yolact"]
    meta = graph.inference.metadata
    assert json.loads(meta["categories"])[0]["name"] == "nucleus"
    assert meta["family"] == "yolact" and meta["instseg_version"] == instseg.__version__
    assert json.loads(meta["preprocessing"])["input"].startswith("uint8")
    assert [c.name for c in graph.categories] == ["nucleus"]


def test_predict_with_onnx_writes_what_eager_writes_and_an_empty_result_is_empty(exported, tmp_path: Path):
    eager, graph = exported["yolact"]
    image = sorted(DEMO_VAL.glob("*.png"))[1]
    for source, out in ((["--onnx", str(graph.inference.path)], "o"), (["--model", "nuclei"], "e")):
        command = [
            "predict",
            *source,
            str(image),
            "--out",
            str(tmp_path / out),
            "--min-score",
            str(MIN_SCORE),
        ]
        assert main(command) == 0
    onnx_results = json.loads((tmp_path / "o" / "predictions.json").read_text())
    eager_results = json.loads((tmp_path / "e" / "predictions.json").read_text())
    assert len(onnx_results) == len(eager_results) > 0
    assert (tmp_path / "o" / "labels").is_dir() and (tmp_path / "o" / "objects.csv").is_file()
    black = np.zeros((40, 50, 3), dtype=np.uint8)
    empty = graph.predict(black)
    assert len(eager.predict(black)) == len(empty) == 0
    assert empty.masks.shape == (0, 40, 50) and empty.boxes.shape == (0, 4)


def test_foreign_files_are_one_line_errors(tmp_path: Path):
    (tmp_path / "junk.onnx").write_bytes(b"not a model")
    with pytest.raises(ExportError, match=r"junk\.onnx: not an ONNX model"):
        instseg.load(tmp_path / "junk.onnx")
    with pytest.raises(ExportError, match="takes no config overrides"):
        instseg.load(tmp_path / "junk.onnx", score_threshold=0.1)
