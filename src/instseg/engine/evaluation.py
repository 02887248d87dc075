"""Evaluate a model on a COCO dataset: inference to RLE results, then COCO metrics."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from instseg import distributed
from instseg.data.coco import CocoIndex
from instseg.data.datasets import ImageListDataset
from instseg.engine.inference import ImageCallback, run_inference
from instseg.errors import DataError
from instseg.eval.report import EvalOptions, EvalReport, evaluate_results
from instseg.structures import Category


@dataclass
class Evaluation:
    report: EvalReport
    results: list[dict[str, Any]]

    @property
    def metrics(self) -> dict[str, dict[str, float]]:
        return self.report.metrics

    @property
    def images(self) -> int:
        return self.report.images

    @property
    def seconds_per_image(self) -> float:
        return self.report.seconds_per_image or 0.0


def check_categories(model_categories: Sequence[Category], index: CocoIndex) -> None:
    """Fail early when a dataset's categories are not the ones the model was trained on."""
    ours = {c.id: c.name for c in model_categories}
    theirs = {c.id: c.name for c in index.categories}
    if ours != theirs:
        raise DataError(
            f"{index.source.annotations}: categories {sorted(theirs.items())[:5]} differ from the "
            f"model's {sorted(ours.items())[:5]}"
        )


def evaluate_model(
    model: nn.Module,
    index: CocoIndex,
    categories: Sequence[Category],
    device: torch.device | str = "cpu",
    options: EvalOptions | None = None,
    details: bool = True,
    batch_size: int = 1,
    workers: int = 0,
    on_image: ImageCallback | None = None,
    progress: bool = True,
) -> Evaluation:
    check_categories(categories, index)
    dataset = ImageListDataset.from_coco(index)
    run = run_inference(
        model, dataset, categories, device, batch_size, workers, on_image, progress, desc="evaluate"
    )
    # one evaluation, on rank 0, of every rank's results; its report (or its error) reaches every rank
    report = distributed.on_main(lambda: evaluate_results(index.dataset, run.results, options, details))
    report.images, report.seconds_per_image = run.images, run.seconds_per_image
    return Evaluation(report, run.results)
