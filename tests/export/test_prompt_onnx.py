"""SAM's two ONNX graphs: the encoder and the prompt decoder give what the eager predictor gives, for
every kind of prompt, at image sizes they were not traced at, and with the raw arrays a user without
instseg feeds them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import instseg
from instseg.cli import main
from instseg.data.images import read_image
from instseg.engine import checkpoint as ckpt
from instseg.export.onnx import ExportError, export_onnx, session
from instseg.export.prompt_graphs import PROMPT_INPUTS, PROMPT_OUTPUTS
from instseg.export.prompt_onnx import OnnxPromptPredictor, export_prompt_onnx, graph_paths
from instseg.models.build import build_model, checkpoint_meta, model_config
from instseg.models.sam.model import OBJECT
from instseg.prompt_predictor import PromptPredictor
from instseg.structures import Category

pytest.importorskip("onnxruntime")

DEMO_VAL = Path(instseg.__file__).parent / "assets" / "dsb2018_mini" / "val"
# nuclei: the FPN encoder at the input's scale (a symbolic embedding grid), clicks drawn as maps, each
# prompt decoded on a window around it (4 cells, so that the test images are larger than a window),
# each click's token reading the embedding under it (``point_features``; the graph passes box corners
# through the same point path, so parity on box prompts shows that corners do not read it), masks by
# the dynamic head on offsets from each prompt's anchor (``dynamic_layers``: the graph finds the anchor
# from the labels, the eager model from the arguments), the IoU read off each mask too (``iou_from_masks``);
# vit: the longest-side antialiased resize to a padded square, every prompt decoded on the whole image
MODELS = {
    "nuclei": (
        "nuclei",
        {"decode_window": 4, "point_features": True, "dynamic_layers": 3, "iou_from_masks": True},
    ),
    "vit": (
        "vit_b",
        {
            "image_size": 128,
            "vit_dim": 64,
            "vit_depth": 2,
            "vit_heads": 4,
            "global_blocks": (1,),
            "window": 4,
            "prompt_dim": 32,
            "mask_channels": 8,
            "decoder_mlp": 64,
            "decoder_heads": 4,
            "iou_head_hidden": 32,
        },
    ),
}
PROMPTS = [
    {"points": [[20, 30]]},
    {"points": [[20, 30], [45, 12]], "labels": [1, 0], "multimask": False},
    {"box": [8, 10, 50, 55]},
    {"points": [[30, 40]], "box": [8, 10, 50, 55], "multimask": False},
]


def random_sam(root: Path, name: str) -> Path:
    preset, overrides = MODELS[name]
    torch.manual_seed(0)
    cfg = model_config("sam", preset, overrides)
    return ckpt.save_checkpoint(
        root / name, build_model("sam", cfg, 1).state_dict(), checkpoint_meta("sam", cfg, list(OBJECT))
    )


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Path]]:
    """name -> (checkpoint, the ``x.onnx`` both graphs are named from); nuclei through the command line."""
    root = tmp_path_factory.mktemp("prompt_export")
    nuclei = random_sam(root, "nuclei")
    assert main(["export", "--checkpoint", str(nuclei), "--out", str(root / "nuclei.onnx")]) == 0
    vit = random_sam(root, "vit")
    assert export_prompt_onnx(vit, root / "vit.onnx") == graph_paths(root / "vit.onnx")
    assert sorted(p.name for p in root.glob("*.onnx")) == [
        "nuclei.decoder.onnx",
        "nuclei.encoder.onnx",
        "vit.decoder.onnx",
        "vit.encoder.onnx",
    ]
    return {"nuclei": (nuclei, root / "nuclei.onnx"), "vit": (vit, root / "vit.onnx")}


def images() -> list[np.ndarray]:
    real = read_image(sorted(DEMO_VAL.glob("*.png"))[0]).permute(1, 2, 0).numpy()
    noise = np.random.default_rng(2).integers(0, 256, (83, 61, 3), dtype=np.uint8)
    return [np.ascontiguousarray(real[:70, :101]), noise]


def assert_same(a: instseg.Instances, b: instseg.Instances) -> None:
    assert b.masks.shape == a.masks.shape
    assert torch.allclose(b.scores, a.scores, atol=1e-4)
    agree = (a.masks == b.masks).float().mean().item()
    assert agree >= 0.999, agree


@pytest.mark.parametrize("name", list(MODELS))
def test_graphs_give_the_eager_masks_and_iou_for_every_prompt(exported, name: str):
    source, graphs = exported[name]
    eager, onnx = PromptPredictor.from_checkpoint(source, "cpu"), instseg.load_prompts(graphs)
    assert isinstance(onnx, OnnxPromptPredictor)
    for image in images():
        eager.set_image(image)
        onnx.set_image(image)
        assert torch.allclose(onnx.embedding, eager.embedding, atol=1e-3)
        for prompt in PROMPTS:
            assert_same(eager.predict(**prompt), onnx.predict(**prompt))
            assert torch.allclose(onnx.logits, eager.logits, atol=1e-3)
            again = {**prompt, "mask_input": eager.logits[0][:1]}  # a correction of the same object
            assert_same(eager.predict(**again), onnx.predict(**again))
        boxes = [[2, 3, 30, 25], [20, 15, 55, 60], [0, 0, 60, 60]]  # several prompts in one call
        for a, b in zip(eager.predict_batch(box=boxes), onnx.predict_batch(box=boxes), strict=True):
            assert_same(a, b)


def test_the_decoder_graph_alone_takes_the_documented_arrays(exported):
    """What a browser or another language feeds it: clicks, then the box's corners labelled 2 and 3, in
    the original image's pixels; or clicks ended by a (0, 0) point labelled -1."""
    source, graphs = exported["nuclei"]
    encoder_path, decoder_path = graph_paths(graphs)
    image = images()[0]
    encoder, decoder = session(encoder_path), session(decoder_path)
    assert [i.name for i in decoder.get_inputs()] == list(PROMPT_INPUTS)
    assert [o.name for o in decoder.get_outputs()] == list(PROMPT_OUTPUTS)
    assert decoder.get_modelmeta().custom_metadata_map["role"] == "decoder"
    embedding = encoder.run(None, {"image": image})[0]
    eager = PromptPredictor.from_checkpoint(source, "cpu")
    eager.set_image(image)
    feeds = [
        ([[30, 40], [8, 10], [50, 55]], [1, 2, 3], {"points": [[30, 40]], "box": [8, 10, 50, 55]}),
        ([[20, 30], [45, 12], [0, 0]], [1, 0, -1], {"points": [[20, 30], [45, 12]], "labels": [1, 0]}),
    ]
    for coords, labels, prompt in feeds:
        masks, iou, _ = decoder.run(
            None,
            {
                "image_embeddings": embedding,
                "point_coords": np.array([coords], dtype=np.float32),
                "point_labels": np.array([labels], dtype=np.float32),
                "mask_input": np.zeros((1, 1, 4 * embedding.shape[2], 4 * embedding.shape[3]), np.float32),
                "has_mask_input": np.zeros(1, np.float32),
                "orig_im_size": np.array(image.shape[:2], dtype=np.int64),
            },
        )
        expected = eager.predict(**prompt, multimask=False)
        assert masks.shape == (1, 4, *image.shape[:2])
        assert abs(float(iou[0, 0]) - float(expected.scores[0])) <= 1e-4
        assert (masks[0, 0] == expected.masks[0].numpy()).mean() >= 0.999


def test_export_refuses_what_it_cannot_write(exported, tmp_path, capsys):
    nuclei, _ = exported["nuclei"]
    with pytest.raises(ExportError, match="exports as two graphs"):
        export_onnx(nuclei, tmp_path / "one.onnx")
    for graph in graph_paths(exported["nuclei"][1]):  # not an image-in, detections-out graph
        with pytest.raises(ExportError, match="prompt graphs; run them with instseg"):
            instseg.load(graph)
    assert (
        main(["export", "--checkpoint", str(nuclei), "--out", str(tmp_path / "x.onnx"), "--min-score", "0.5"])
        == 2
    )
    assert "no score threshold" in capsys.readouterr().err
    cfg = model_config("yolact", "default", {"backbone": "resnet18_half"})
    other = ckpt.save_checkpoint(
        tmp_path / "yolact",
        build_model("yolact", cfg, 1).state_dict(),
        checkpoint_meta("yolact", cfg, [Category(1, "a")]),
    )
    with pytest.raises(ExportError, match="two graphs are for sam models"):
        export_prompt_onnx(other, tmp_path / "y.onnx")
    assert not list(tmp_path.glob("*.onnx*"))


def test_predict_command_runs_the_graphs(exported, tmp_path, capsys):
    from PIL import Image

    _, graphs = exported["nuclei"]
    Image.fromarray(images()[0]).save(tmp_path / "a.png")
    out = tmp_path / "out"
    assert (
        main(
            [
                "predict",
                "--onnx",
                str(graphs),
                str(tmp_path / "a.png"),
                "--out",
                str(out),
                "--box",
                "8,10,50,55",
            ]
        )
        == 0
    )
    assert "1 images, 1 masks" in capsys.readouterr().out
    assert (out / "labels" / "a_labels.png").is_file()
