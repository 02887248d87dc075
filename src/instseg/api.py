"""The public face: ``load``, ``predict``, ``train``, ``evaluate``."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from instseg import distributed
from instseg.config import TrainConfig, config_from_dict
from instseg.data.coco import CocoIndex, find_annotations, resolve_source
from instseg.engine.evaluation import Evaluation, evaluate_model
from instseg.engine.fine_tune import fine_tune_config
from instseg.engine.trainer import TrainResult
from instseg.engine.trainer import train as _train
from instseg.eval.report import EvalOptions, EvalReport
from instseg.eval.report import evaluate_results as _evaluate_results
from instseg.models.build import model_config
from instseg.predictor import ImageLike, Predictor
from instseg.prompt_predictor import PromptPredictor
from instseg.structures import Instances


def load(
    checkpoint: str | Path, device: str = "auto", min_score: float | None = None, **overrides: Any
) -> Predictor:
    """Rebuild a model from a checkpoint directory or ``.safetensors`` file alone; ``overrides`` change
    model config fields (``load(ck, score_threshold=0.01, mask_rescore=False)``). ``min_score``: the
    least score that will be kept; less work and memory on detections that would be dropped.

    A ``.onnx`` file (``instseg export``) runs with ONNX Runtime on the CPU; its thresholds were
    fixed at export, so it takes no ``overrides``."""
    if str(checkpoint).endswith(".onnx"):
        from instseg.export.onnx import ExportError, onnx_predictor

        if overrides:
            raise ExportError(
                f"{checkpoint}: an exported graph takes no config overrides ({sorted(overrides)})"
            )
        return onnx_predictor(checkpoint)
    return Predictor.from_checkpoint(checkpoint, device, overrides, min_score)


def load_prompts(checkpoint: str | Path, device: str = "auto") -> PromptPredictor:
    """A SAM model ready for prompts (``set_image``, then ``predict`` per prompt): a checkpoint, or
    ``x.onnx`` / ``x.encoder.onnx`` for the two graphs ``instseg export`` wrote, run by ONNX Runtime."""
    if str(checkpoint).endswith(".onnx"):
        from instseg.export.prompt_onnx import OnnxPromptPredictor

        return OnnxPromptPredictor(checkpoint)
    return PromptPredictor.from_checkpoint(checkpoint, device)


def predict(
    model: str | Path | Predictor, images: ImageLike | Sequence[ImageLike], **kwargs: Any
) -> Instances | list[Instances]:
    predictor = model if isinstance(model, Predictor) else load(model)
    return predictor.predict(images, **kwargs)


def train(
    model: str | None = None,
    data: str | Path = "",
    preset: str = "default",
    model_options: dict[str, Any] | None = None,
    resume: str | Path | None = None,
    progress: bool = True,
    **train_options: Any,
) -> TrainResult:
    """Train a family on COCO data; ``train_options`` are :class:`TrainConfig` fields. With ``init=CKPT``
    the model is that checkpoint's (family and config, ``model_options`` on top) and starts from its
    weights."""
    cfg = config_from_dict(TrainConfig, {"data": str(data), **train_options})
    if cfg.init:
        model, model_cfg = fine_tune_config(cfg.init, model, model_options or {})
    else:
        model = model or "mask_rcnn"
        model_cfg = model_config(model, preset, model_options)
    return _train(cfg, model, model_cfg, resume=resume, progress=progress)


def _options(boundary: bool, options: dict[str, Any]) -> EvalOptions:
    opts = config_from_dict(EvalOptions, options)
    if not boundary:
        opts.iou_types = tuple(t for t in opts.iou_types if t != "boundary")
    return opts


def evaluate(
    model: str | Path | Predictor,
    data: str | Path,
    split: str = "val",
    images: str | Path | None = None,
    boundary: bool = True,
    out: str | Path | None = None,
    progress: bool = True,
    **options: Any,
) -> Evaluation:
    """Every metric of a model on a COCO dataset; ``options`` are :class:`EvalOptions` fields.

    ``out`` gets ``results.json``, ``metrics.json`` and the plots.
    """
    predictor = model if isinstance(model, Predictor) else load(model)
    index = CocoIndex(resolve_source(data, split, images), keep_crowd=True)
    ev = evaluate_model(
        predictor.inference,
        index,
        predictor.categories,
        predictor.device,
        _options(boundary, options),
        progress=progress,
    )
    if out is not None and distributed.is_main():  # under torchrun, rank 0 holds every result
        ev.report.write(out, ev.results)
    return ev


def evaluate_results(
    results: str | Path | Sequence[dict[str, Any]],
    gt: str | Path | dict[str, Any],
    boundary: bool = True,
    out: str | Path | None = None,
    **options: Any,
) -> EvalReport:
    """Score an existing COCO results file (from any toolkit) against a ground-truth JSON."""
    gt = gt if isinstance(gt, dict) else find_annotations(gt, "val")
    report = _evaluate_results(gt, results, _options(boundary, options))
    if out is not None:
        report.write(out)
    return report
