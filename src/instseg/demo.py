"""``instseg demo``: train a small model on the bundled nuclei, evaluate it, and show it.

Needs nothing outside the package: the data is a 40/10-image CC0 subset of
DSB2018 shipped in ``instseg/assets``.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import torch

from instseg.api import load
from instseg.config import TrainConfig
from instseg.data.coco import CocoIndex, resolve_source
from instseg.data.inspect import ground_truth_instances
from instseg.engine.evaluation import evaluate_model
from instseg.engine.trainer import TrainResult, train
from instseg.eval.coco import format_table
from instseg.eval.report import EvalOptions
from instseg.models.build import model_config
from instseg.pictures import contact_sheet, overlay, plot_loss_curve, save_picture, side_by_side
from instseg.structures import Instances

MAX_DETS = (1, 10, 500)
# the family that did best on this data in the demo's budget, and predicts fastest (BENCHMARKS.md)
FAMILY, PRESET = "yolact", "realtime_nuclei"
MIN_SCORE = 0.5  # predictions drawn in the pictures


def demo_data() -> Path:
    return Path(str(resources.files("instseg") / "assets" / "dsb2018_mini"))


@dataclass
class DemoResult:
    summary: Path
    steps: int
    minutes: float
    metrics: dict[str, dict[str, float]]
    seconds_per_image: float
    pictures: Path  # ground truth beside prediction, one PNG per val image
    contact_sheet: Path

    def table(self) -> str:
        """The headline numbers as a Markdown table (printed by ``instseg demo``, kept in summary.md)."""
        segm, boundary, bbox = (self.metrics[k] for k in ("segm", "boundary", "bbox"))
        return "\n".join(
            [
                "| mask AP | mask AP50 | Boundary AP | box AP | seconds / image |",
                "|---|---|---|---|---|",
                f"| {segm['AP']:.3f} | {segm['AP50']:.3f} | {boundary['AP']:.3f} | {bbox['AP']:.3f} "
                f"| {self.seconds_per_image:.2f} |",
            ]
        )


def run_demo(
    out: str | Path = "runs/demo",
    minutes: float = 5.0,
    device: str = "auto",
    progress: bool = True,
    family: str = FAMILY,
    preset: str = PRESET,
) -> DemoResult:
    """Train for ``minutes``, evaluate on the 10 val images, draw ground truth beside prediction for each,
    a contact sheet of them, the loss curve and summary.md."""
    out = Path(out)
    data = demo_data()
    cfg = TrainConfig(
        data=str(data / "annotations" / "instances_train.json"),
        images=str(data / "train"),
        out=str(out / "train"),
        steps=10**9,
        time_budget_s=minutes * 60,
        batch_size=4,
        lr=5e-4,
        warmup_steps=20,
        crop_size=256,
        scale_range=(0.8, 1.25),
        vflip=True,
        color_jitter=0.1,
        workers=1,
        device=device,
        checkpoint_every=50,
        log_every=5,
        precise_bn_batches=50,  # enough for 40 images; keeps the demo near its time budget
    )
    result: TrainResult = train(cfg, family, model_config(family, preset), progress=progress)
    predictor = load(result.checkpoint, device=device)
    val = CocoIndex(resolve_source(data, "val"), keep_crowd=True)
    by_id = {im["id"]: im for im in val.images}
    pairs: list[torch.Tensor] = []

    def draw(image_id: int, image: torch.Tensor, instances: Instances) -> None:
        truth = ground_truth_instances(val, by_id[image_id], tuple(image.shape[-2:]))
        shown = instances[instances.scores >= MIN_SCORE]
        pair = side_by_side(
            [overlay(image, truth), overlay(image, shown)],
            ("ground truth", f"prediction (score >= {MIN_SCORE})"),
        )
        save_picture(pair, out / "overlays" / f"val_{image_id}.png")
        pairs.append(pair)

    ev = evaluate_model(
        predictor.inference,
        val,
        predictor.categories,
        predictor.device,
        EvalOptions(max_dets=MAX_DETS, matching=False),
        details=False,
        on_image=draw,
        progress=progress,
    )
    sheet = save_picture(contact_sheet(pairs, columns=2, width=768), out / "overlays" / "contact_sheet.png")
    curve = plot_loss_curve(result.log_file, out / "loss_curve.png")
    demo = DemoResult(
        out / "summary.md",
        result.steps,
        result.seconds / 60,
        ev.metrics,
        ev.seconds_per_image,
        out / "overlays",
        sheet,
    )
    demo.summary.write_text(
        "\n".join(
            [
                f"# instseg demo: {family} (`{preset}`) from scratch on 40 bundled DSB2018 images",
                "",
                f"Trained {result.steps} steps in {demo.minutes:.1f} min on {predictor.device}; "
                f"evaluated on {ev.images} val images (maxDets {'/'.join(map(str, MAX_DETS))}).",
                "",
                demo.table(),
                "",
                "```",
                format_table(ev.metrics),
                "```",
                "",
                f"Checkpoint: `{result.checkpoint}`. Use it again with",
                f"`instseg predict --checkpoint {result.checkpoint} IMAGES --out DIR`.",
                "",
                "## Ground truth and prediction on the val images",
                f"![contact sheet]({sheet.relative_to(out)})",
                "",
                "## Loss curve",
                f"![loss curve]({curve.relative_to(out)})",
                "",
            ]
        )
    )
    return demo
