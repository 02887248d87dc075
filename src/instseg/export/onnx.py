"""ONNX export of a checkpoint, whole pipeline inside, and a predictor that runs the file with ONNX Runtime.

The graph is ``ImageGraph`` (``MaskRCNNGraph`` for the two-stage family): RGB
bytes ``[H, W, 3]`` of any size in, the final ``boxes``, ``labels``, ``scores``
and masks out, each mask a bool crop of ``masks [N, h, w]`` at the input's
resolution placed at ``mask_origins [N, 2]`` (x, y). It is
made by PyTorch's ``torch.export``-based exporter with the image's height and
width symbolic, so nothing is specialised to the example image. The model's
metadata (``onnx`` ``metadata_props``) carries what a user of the file needs
without instseg: the category list, the preprocessing, the family, its config
and the instseg version.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from instseg.cropped_masks import CroppedMasks, as_requested
from instseg.errors import InstsegError
from instseg.export.graph import OUTPUT_NAMES, ImageGraph, precise_group_norms
from instseg.export.rcnn_graph import MaskRCNNGraph
from instseg.models.fusion import inference_model
from instseg.predictor import Predictor, model_from_checkpoint
from instseg.structures import Category
from instseg.version import __version__

EXPORTABLE = (
    "mask_rcnn",
    "yolact",
    "condinst",
    "solov2",
    "mask2former",
)  # families whose postprocessor runs inside a graph
INPUT_NAME = "image"
MAX_SIDE = 2**15  # the graph's bound on either image side
OPSET = 18


class ExportError(InstsegError):
    """A model that cannot be exported, or an export that failed."""


def export_onnx(
    checkpoint: str | Path,
    out: str | Path,
    min_score: float | None = None,
    opset: int = OPSET,
    coarse: bool = False,
) -> Path:
    """Write ``checkpoint`` as one ONNX graph at ``out`` (atomically) and return its path.

    ``min_score`` raises the family's candidate score threshold, as ``predict --min-score`` does:
    fewer candidates get a full-size mask, and the graph's peak memory (N x H x W floats for N
    detections) falls with them. Without it the graph returns what the eager model returns.
    ``coarse`` leaves a point-refining model's point head out (its masks are the coarse ones), as
    predicting with ``point_refine=False`` does; refinement itself does not export.
    """
    overrides = _overrides(checkpoint, min_score, coarse)
    model, meta, config, categories = model_from_checkpoint(checkpoint, overrides)
    family = meta["family"]
    if family == "sam":
        raise ExportError(f"{checkpoint}: a sam model exports as two graphs (export_prompt_onnx)")
    if family not in EXPORTABLE:
        raise ExportError(
            f"{checkpoint}: exporting {family} models is not supported yet "
            f"(exportable families: {', '.join(EXPORTABLE)})"
        )
    if getattr(config, "point_refine", False):
        raise ExportError(
            f"{checkpoint}: point refinement does not export; --coarse (coarse=True) exports the model "
            "without its point head"
        )
    network = inference_model(model)
    graph = (MaskRCNNGraph(network) if family == "mask_rcnn" else ImageGraph(network)).eval()
    example = torch.randint(
        0, 256, (256, 320, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0)
    )
    metadata = _metadata(meta, graph, categories, config)
    return write_graph(
        graph,
        (example,),
        {INPUT_NAME: image_dims()},
        ([INPUT_NAME], list(OUTPUT_NAMES)),
        metadata,
        out,
        lambda path: _check_against_eager(path, graph),
        f"{checkpoint}: ONNX export failed",
        opset,
    )


def image_dims() -> dict[int, Any]:
    """The symbolic height and width of an ``[H, W, 3]`` image input."""
    return {
        0: torch.export.Dim("height", min=2, max=MAX_SIDE),
        1: torch.export.Dim("width", min=2, max=MAX_SIDE),
    }


def write_graph(
    module: nn.Module,
    example: tuple[Tensor, ...],
    dynamic_shapes: dict[str, Any],
    names: tuple[list[str], list[str]],
    metadata: dict[str, str],
    out: str | Path,
    check: Callable[[Path], None],
    failure: str,
    opset: int = OPSET,
) -> Path:
    """Export ``module`` with ``torch.export`` (quietly), add ``metadata``, run ``check`` on the written
    file and move it to ``out`` only when that passes; an export error becomes one ``ExportError``
    line starting with ``failure``. ``module``'s GroupNorms become ``PreciseGroupNorm`` first."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    temporary = out.with_name(out.name + ".tmp")
    precise_group_norms(module)
    try:
        logging.disable(logging.INFO)  # the exporter and its graph optimiser log every rewrite
        with (
            warnings.catch_warnings(),
            torch.no_grad(),
            contextlib.redirect_stdout(io.StringIO()),
            contextlib.redirect_stderr(io.StringIO()),
        ):
            warnings.simplefilter("ignore")
            program = torch.onnx.export(
                module,
                example,
                dynamo=True,
                dynamic_shapes=dynamic_shapes,
                input_names=names[0],
                output_names=names[1],
                opset_version=opset,
                verbose=False,
            )
        program.model.metadata_props.update(metadata)
        program.save(str(temporary))
        check(temporary)
        os.replace(temporary, out)
    except (RuntimeError, ValueError, TypeError, ExportError) as exc:
        temporary.unlink(missing_ok=True)
        if isinstance(exc, ExportError):
            raise
        raise ExportError(f"{failure} ({type(exc).__name__}: {str(exc).splitlines()[0]})") from exc
    finally:
        logging.disable(logging.NOTSET)
    return out


def _check_against_eager(path: Path, graph: nn.Module) -> None:
    """Run the written graph once on an image of another size and shape than the example: a size that
    the exporter fixed by mistake fails here, not in a user's hands."""
    image = torch.randint(0, 256, (97, 131, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    try:
        got = session(path).run(list(OUTPUT_NAMES), {INPUT_NAME: image.numpy()})
    except Exception as exc:  # ONNX Runtime's own error types
        raise ExportError(
            f"the exported graph fails on a 97x131 image ({str(exc).splitlines()[0]})"
        ) from None
    with torch.no_grad():
        expected = graph(image)
    shape = graph_masks(got[3], got[4], (97, 131)).shape
    wanted = graph_masks(expected[3].numpy(), expected[4].numpy(), (97, 131)).shape
    if shape != wanted:
        raise ExportError(
            f"the exported graph disagrees with the model on a 97x131 image: masks {shape}, expected {wanted}"
        )


def _overrides(checkpoint: str | Path, min_score: float | None, coarse: bool) -> dict[str, Any]:
    from instseg.engine.checkpoint import load_meta

    stored = load_meta(checkpoint)["model_config"]
    out: dict[str, Any] = {"point_refine": False} if coarse and stored.get("point_refine") else {}
    threshold = stored.get("score_threshold")
    if min_score is not None and isinstance(threshold, int | float) and threshold < min_score:
        out["score_threshold"] = min_score
    return out


def _metadata(
    meta: dict[str, Any], graph: ImageGraph | MaskRCNNGraph, categories: list[Category], config: Any
) -> dict[str, str]:
    transform = graph.model.transform
    preprocessing = {
        "input": "uint8 [height, width, 3] RGB",
        "scale": transform.scale,
        "min_size": transform.min_size[-1],
        "max_size": transform.max_size,
        "mean": list(transform.image_mean),
        "std": list(transform.image_std),
        "pad_to_multiple_of": transform.size_divisible,
    }
    outputs = {
        "boxes": "float32 [N, 4] xyxy in input pixels",
        "labels": "int64 [N], 1-based index into categories",
        "scores": "float32 [N], descending",
        "masks": "bool [N, h, w]: each mask's crop, in input pixels",
        "mask_origins": "int64 [N, 2]: (x, y) of each crop's top-left pixel in the input; False elsewhere",
    }
    return {
        "instseg_version": __version__,
        "family": meta["family"],
        "categories": json.dumps([vars(c) for c in categories]),
        "preprocessing": json.dumps(preprocessing),
        "outputs": json.dumps(outputs),
        "model_config": json.dumps(meta["model_config"] | config_fields(config)),
    }


def config_fields(config: Any) -> dict[str, Any]:
    """The config as built (overrides applied), in JSON types."""
    from dataclasses import asdict

    return json.loads(json.dumps(asdict(config), default=str))


def session(path: str | Path, threads: int | None = None) -> Any:
    """An ONNX Runtime session on the CPU, or one ``ExportError`` line saying why not."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise ExportError("running ONNX models needs onnxruntime: pip install 'instseg[onnx]'") from None
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or torch.get_num_threads()
    options.log_severity_level = 3
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # ORT raises its own exception types for unreadable or invalid files
        raise ExportError(
            f"{path}: not an ONNX model ONNX Runtime can load ({str(exc).splitlines()[0]})"
        ) from None


def image_bytes(image: Tensor) -> np.ndarray:
    """A float image ``[3, H, W]`` in [0, 1] as the graphs take it: uint8 ``[H, W, 3]``. Converted in NumPy:
    a PyTorch op just before a session run leaves PyTorch's threads spinning against ONNX Runtime's
    on the same cores (BENCHMARKS.md, "Through ONNX Runtime")."""
    pixels = image.detach().cpu().numpy()
    return np.ascontiguousarray(np.clip(np.rint(pixels * 255.0), 0, 255).astype(np.uint8).transpose(1, 2, 0))


class OnnxModel(nn.Module):
    """An exported graph behind the model contract: ``model(images)`` -> one output dict per image.

    ``images`` are float ``[3, H, W]`` in [0, 1], as every instseg model takes them; the graph's
    input is their bytes.
    """

    def __init__(self, path: str | Path, threads: int | None = None) -> None:
        super().__init__()
        self.session = session(path, threads)
        self.metadata = self.session.get_modelmeta().custom_metadata_map
        if self.metadata.get("role") in ("encoder", "decoder"):
            raise ExportError(
                f"{path}: one of a SAM model's two prompt graphs; run them with instseg.load_prompts, or "
                "`instseg predict --onnx` with --points or --box"
            )
        if "categories" not in self.metadata or "family" not in self.metadata:
            raise ExportError(f"{path}: not an instseg export (its metadata has no categories or family)")
        self.path = Path(path)

    def forward(self, images: list[Tensor]) -> list[dict[str, Tensor]]:
        return [self.image(im) for im in images]

    def image(self, image: Tensor) -> dict[str, Tensor | CroppedMasks]:
        """One image's output; masks cropped inside ``cropped_masks()``, dense outside it."""
        outputs = self.session.run(list(OUTPUT_NAMES), {INPUT_NAME: image_bytes(image)})
        boxes, labels, scores, crops, origins = outputs
        size = (int(image.shape[-2]), int(image.shape[-1]))
        return {
            "boxes": torch.from_numpy(boxes),
            "labels": torch.from_numpy(labels),
            "scores": torch.from_numpy(scores),
            "masks": as_requested(graph_masks(crops, origins, size)),
        }


def graph_masks(crops: np.ndarray, origins: np.ndarray, image_size: tuple[int, int]) -> CroppedMasks:
    """A graph's ``masks [N, h, w]`` and ``mask_origins [N, 2]`` as ``CroppedMasks`` of the image."""
    stack = torch.from_numpy(np.asarray(crops, dtype=bool))
    return CroppedMasks(
        list(stack), torch.from_numpy(np.asarray(origins, dtype=np.int64)).reshape(-1, 2), image_size
    )


def onnx_predictor(path: str | Path, threads: int | None = None) -> Predictor:
    """A ``Predictor`` (``predict``, ``categories``, ``inference``) over an exported graph."""
    model = OnnxModel(path, threads)
    categories = [Category(**c) for c in json.loads(model.metadata["categories"])]
    config = json.loads(model.metadata.get("model_config", "{}"))
    family = model.metadata["family"]
    return Predictor(model, family, config, categories, "cpu", dict(model.metadata), inference=model)
