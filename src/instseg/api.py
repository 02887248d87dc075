"""The public face: ``load``, ``predict``, ``train``, ``evaluate``."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from instseg.config import TrainConfig, config_from_dict
from instseg.data.coco import CocoIndex, resolve_source
from instseg.engine.evaluation import Evaluation, evaluate_model
from instseg.engine.trainer import TrainResult
from instseg.engine.trainer import train as _train
from instseg.models.build import model_config
from instseg.predictor import ImageLike, Predictor
from instseg.structures import Instances


def load(checkpoint: str | Path, device: str = "auto") -> Predictor:
    """Rebuild a model from a checkpoint directory or ``.safetensors`` file alone."""
    return Predictor.from_checkpoint(checkpoint, device)


def predict(
    model: str | Path | Predictor, images: ImageLike | Sequence[ImageLike], **kwargs: Any
) -> Instances | list[Instances]:
    predictor = model if isinstance(model, Predictor) else load(model)
    return predictor.predict(images, **kwargs)


def train(
    model: str = "mask_rcnn",
    data: str | Path = "",
    preset: str = "default",
    model_options: dict[str, Any] | None = None,
    resume: str | Path | None = None,
    progress: bool = True,
    **train_options: Any,
) -> TrainResult:
    """Train a family on COCO data; ``train_options`` are :class:`TrainConfig` fields."""
    cfg = config_from_dict(TrainConfig, {"data": str(data), **train_options})
    return _train(cfg, model, model_config(model, preset, model_options), resume=resume, progress=progress)


def evaluate(
    model: str | Path | Predictor,
    data: str | Path,
    split: str = "val",
    images: str | Path | None = None,
    max_dets: Sequence[int] = (1, 10, 100),
    boundary: bool = True,
    out: str | Path | None = None,
    progress: bool = True,
) -> Evaluation:
    """COCO segm/bbox (and Boundary) AP of a model on a COCO dataset; ``out`` gets results + metrics JSON."""
    predictor = model if isinstance(model, Predictor) else load(model)
    index = CocoIndex(resolve_source(data, split, images), keep_crowd=True)
    ev = evaluate_model(
        predictor.model, index, predictor.categories, predictor.device, max_dets, boundary, progress=progress
    )
    if out is not None:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "results.json").write_text(json.dumps(ev.results))
        (out / "metrics.json").write_text(
            json.dumps(
                {
                    "metrics": ev.metrics,
                    "images": ev.images,
                    "seconds_per_image": ev.seconds_per_image,
                    "max_dets": list(max_dets),
                },
                indent=2,
            )
        )
    return ev
