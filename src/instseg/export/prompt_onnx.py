"""A SAM checkpoint as two ONNX files, and the prompt predictor that runs them with ONNX Runtime.

``export_prompt_onnx(ckpt, "sam.onnx")`` writes ``sam.encoder.onnx`` (``EmbeddingGraph``) and
``sam.decoder.onnx`` (``PromptGraph``); the inputs and outputs are described in
``prompt_graphs.py`` and, for users without instseg, in each file's metadata.
``OnnxPromptPredictor`` is :class:`PromptPredictor` (same prompts, same checks, same
``Instances``) with both steps run by ONNX Runtime.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from instseg.export.onnx import (
    OPSET,
    ExportError,
    config_fields,
    image_bytes,
    image_dims,
    session,
    write_graph,
)
from instseg.export.prompt_graphs import (
    EMBEDDING_INPUTS,
    EMBEDDING_OUTPUTS,
    PROMPT_INPUTS,
    PROMPT_OUTPUTS,
    EmbeddingGraph,
    PromptGraph,
    prompt_arrays,
)
from instseg.predictor import model_from_checkpoint
from instseg.prompt_predictor import PromptPredictor
from instseg.version import __version__

ROLES = ("encoder", "decoder")


def graph_paths(out: str | Path) -> tuple[Path, Path]:
    """``x.onnx`` -> (``x.encoder.onnx``, ``x.decoder.onnx``)."""
    out = Path(out)
    stem = out.name[: -len(".onnx")] if out.name.endswith(".onnx") else out.name
    return tuple(out.with_name(f"{stem}.{role}.onnx") for role in ROLES)  # type: ignore[return-value]


def export_prompt_onnx(checkpoint: str | Path, out: str | Path, opset: int = OPSET) -> tuple[Path, Path]:
    """Write a SAM checkpoint's encoder and prompt decoder beside ``out`` (atomically); their paths."""
    model, meta, config, _ = model_from_checkpoint(checkpoint)
    if meta["family"] != "sam":
        raise ExportError(f"{checkpoint}: a {meta['family']} checkpoint; two graphs are for sam models")
    model = model.eval()
    encoder_path, decoder_path = graph_paths(out)
    common = {
        "instseg_version": __version__,
        "family": "sam",
        "model_config": json.dumps(meta["model_config"] | config_fields(config)),
    }
    encoder = EmbeddingGraph(model)
    example = torch.randint(
        0, 256, (200, 232, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0)
    )
    write_graph(
        encoder,
        (example,),
        {EMBEDDING_INPUTS[0]: image_dims()},
        (list(EMBEDDING_INPUTS), list(EMBEDDING_OUTPUTS)),
        common | {"role": "encoder", "inputs": "uint8 [height, width, 3] RGB"},
        encoder_path,
        lambda path: _check_encoder(path, encoder),
        f"{checkpoint}: ONNX export of the image encoder failed",
        opset,
    )
    with torch.no_grad():
        embedding = encoder(example)
    decoder = PromptGraph(model)
    batch, points = torch.export.Dim("prompts", min=1, max=4096), torch.export.Dim("points", min=1, max=256)
    grid = {2: torch.export.Dim("rows", min=1, max=4096), 3: torch.export.Dim("columns", min=1, max=4096)}
    fine = {0: batch, 2: 4 * grid[2], 3: 4 * grid[3]}
    xy, labels = prompt_arrays(torch.tensor([[[50.0, 60.0]], [[120.0, 30.0]]]), torch.ones(2, 1), None)
    inputs = (embedding, xy, labels, *_mask_prompt(None, 2, embedding), torch.tensor([200, 232]))
    write_graph(
        decoder,
        inputs,
        {
            "embedding": {2: grid[2], 3: grid[3]},
            "point_coords": {0: batch, 1: points},
            "point_labels": {0: batch, 1: points},
            "mask_input": fine,
            "has_mask_input": {0: batch},
            "orig_im_size": None,
        },
        (list(PROMPT_INPUTS), list(PROMPT_OUTPUTS)),
        common | {"role": "decoder", "inputs": json.dumps(PROMPT_DOC)},
        decoder_path,
        lambda path: _check_decoder(path, decoder, embedding),
        f"{checkpoint}: ONNX export of the prompt decoder failed",
        opset,
    )
    return encoder_path, decoder_path


PROMPT_DOC = {
    "image_embeddings": "float32 [1, C, h, w], the encoder's output",
    "point_coords": "float32 [B, N, 2] x, y in the original image's pixels",
    "point_labels": "float32 [B, N]: 1 positive, 0 negative, 2 box top-left, 3 box bottom-right, -1 padding "
    "(clicks first, then the box corners; a prompt without a box ends with a (0, 0) padding point)",
    "mask_input": "float32 [B, 1, 4h, 4w], a previous low_res_logits reading",
    "has_mask_input": "float32 [B], 1 where mask_input is a prompt",
    "orig_im_size": "int64 [2] height, width",
    "outputs": "masks bool [B, 4, height, width], iou_predictions [B, 4], low_res_logits [B, 4, 4h, 4w]; "
    "output 0 is the single-mask reading, 1-3 the readings of an ambiguous prompt",
}


def _mask_prompt(mask_input: Tensor | None, batch: int, embedding: Tensor) -> tuple[Tensor, Tensor]:
    size = (4 * embedding.shape[-2], 4 * embedding.shape[-1])
    if mask_input is None:
        return torch.zeros(batch, 1, *size), torch.zeros(batch)
    return mask_input.contiguous(), torch.ones(batch)  # PromptPredictor gives it one per prompt


def _check_encoder(path: Path, graph: EmbeddingGraph) -> None:
    """The written encoder on an image of another size than the example: a size the exporter fixed
    by mistake fails here."""
    image = torch.randint(0, 256, (97, 131, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    got = session(path).run(None, {EMBEDDING_INPUTS[0]: image.numpy()})[0]
    with torch.no_grad():
        expected = graph(image)
    if got.shape != tuple(expected.shape):
        raise ExportError(
            f"the exported encoder gives {got.shape} on a 97x131 image, not {tuple(expected.shape)}"
        )


def _check_decoder(path: Path, graph: PromptGraph, embedding: Tensor) -> None:
    """The written decoder on three prompts of another kind and another original size."""
    xy, labels = prompt_arrays(
        torch.tensor([[[9.0, 7.0]]] * 3), torch.ones(3, 1), torch.tensor([[2.0, 3, 40, 30]] * 3)
    )
    inputs = (embedding, xy, labels, *_mask_prompt(None, 3, embedding), torch.tensor([97, 131]))
    got = session(path).run(None, dict(zip(PROMPT_INPUTS, (t.numpy() for t in inputs), strict=True)))[0]
    with torch.no_grad():
        expected = graph(*inputs)[0]
    if got.shape != tuple(expected.shape):
        raise ExportError(f"the exported decoder gives masks {got.shape}, not {tuple(expected.shape)}")


class OnnxPromptPredictor(PromptPredictor):
    """``set_image`` runs the encoder graph, ``predict`` the decoder graph; prompts and results as
    :class:`PromptPredictor`'s. A prompt of a mask alone is given one padding point, as the graph
    needs at least one."""

    def __init__(
        self, encoder: str | Path, decoder: str | Path | None = None, threads: int | None = None
    ) -> None:
        """``encoder`` and ``decoder`` graphs; with ``encoder`` alone, ``x.onnx`` or ``x.encoder.onnx``
        names both."""
        if decoder is None:
            encoder, decoder = graph_paths(str(encoder).replace(".encoder.onnx", ".onnx"))
        self.encoder, self.decoder = session(encoder, threads), session(decoder, threads)
        for file, role, runner in ((encoder, "encoder", self.encoder), (decoder, "decoder", self.decoder)):
            meta = runner.get_modelmeta().custom_metadata_map
            if meta.get("family") != "sam" or meta.get("role") != role:
                raise ExportError(f"{file}: not a sam {role} graph written by instseg export")
        self.device = torch.device("cpu")
        self.forget_image()

    def embed(self, pixels: Tensor) -> tuple[Tensor, tuple[int, int]]:
        """The encoder graph on the image's bytes; the resized size stays inside the graphs."""
        embedding = self.encoder.run(None, {EMBEDDING_INPUTS[0]: image_bytes(pixels)})[0]
        return torch.from_numpy(embedding), (0, 0)

    def decode(
        self,
        points: tuple[Tensor, Tensor] | None,
        boxes: Tensor | None,
        mask_input: Tensor | None,
        multimask: bool,
    ) -> tuple[Tensor, Tensor, Tensor]:
        batch = len(points[0]) if points is not None else len(boxes) if boxes is not None else 1
        if points is None:
            points = (torch.zeros(batch, 0, 2), torch.zeros(batch, 0))
        xy, labels = prompt_arrays(points[0], points[1], boxes)
        inputs = (
            self.embedding,
            xy,
            labels,
            *_mask_prompt(mask_input, batch, self.embedding),
            torch.tensor(self.original),
        )
        feed = dict(zip(PROMPT_INPUTS, (np.ascontiguousarray(t.numpy()) for t in inputs), strict=True))
        masks, iou, logits = (torch.from_numpy(a) for a in self.decoder.run(None, feed))
        keep = slice(1, None) if multimask else slice(0, 1)
        return logits[:, keep], iou[:, keep], masks[:, keep].bool()
