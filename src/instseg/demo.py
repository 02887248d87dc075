"""``instseg demo``: the bundled nuclei model at work in seconds, then a small model trained here.

Needs nothing outside the package: the data is a 40/10-image CC0 subset of
DSB2018 and the model a checkpoint, both shipped in ``instseg/assets``.
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
from instseg.engine import checkpoint as ckpt
from instseg.engine.evaluation import evaluate_model
from instseg.engine.trainer import TrainResult, train
from instseg.eval.coco import format_table
from instseg.eval.report import EvalOptions
from instseg.models.build import model_config
from instseg.pictures import contact_sheet, overlay, plot_loss_curve, save_picture, side_by_side
from instseg.predictor import Predictor
from instseg.structures import Instances

MAX_DETS = (1, 10, 500)
# the family that did best on this data in the demo's budget, and predicts fastest (BENCHMARKS.md)
FAMILY, PRESET = "yolact", "realtime_nuclei"
MIN_SCORE = 0.5  # predictions drawn in the pictures
PRETRAINED = "nuclei"  # the bundled model the demo shows first


def demo_data() -> Path:
    return Path(str(resources.files("instseg") / "assets" / "dsb2018_mini"))


@dataclass
class DemoPart:
    """One model shown on the 10 val images: its metrics, speed and pictures."""

    title: str
    metrics: dict[str, dict[str, float]]
    seconds_per_image: float
    pictures: Path  # ground truth beside prediction, one PNG per val image
    contact_sheet: Path
    checkpoint: Path
    steps: int = 0
    minutes: float = 0.0

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


@dataclass
class DemoResult:
    summary: Path
    pretrained: DemoPart | None  # the bundled model, no training
    trained: DemoPart | None  # the model trained from scratch in this run

    @property
    def parts(self) -> list[DemoPart]:
        return [p for p in (self.pretrained, self.trained) if p is not None]


def show_on_val(
    predictor: Predictor, title: str, checkpoint: Path, out: Path, progress: bool = True
) -> DemoPart:
    """Evaluate on the bundled val images and draw ground truth beside prediction for each, and a
    contact sheet of them, into ``out``."""
    val = CocoIndex(resolve_source(demo_data(), "val"), keep_crowd=True)
    by_id = {im["id"]: im for im in val.images}
    pairs: list[torch.Tensor] = []

    def draw(image_id: int, image: torch.Tensor, instances: Instances) -> None:
        truth = ground_truth_instances(val, by_id[image_id], tuple(image.shape[-2:]))
        shown = instances[instances.scores >= MIN_SCORE]
        pair = side_by_side(
            [overlay(image, truth), overlay(image, shown)],
            ("ground truth", f"prediction (score >= {MIN_SCORE})"),
        )
        save_picture(pair, out / f"val_{image_id}.png")
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
    sheet = save_picture(contact_sheet(pairs, columns=2, width=768), out / "contact_sheet.png")
    return DemoPart(title, ev.metrics, ev.seconds_per_image, out, sheet, checkpoint)


def train_on_mini(
    out: Path, minutes: float, device: str, family: str, preset: str, progress: bool
) -> TrainResult:
    """The demo's recipe: 4 crops of 256 per step, AdamW 5e-4, ``minutes`` of training."""
    data = demo_data()
    cfg = TrainConfig(
        data=str(data / "annotations" / "instances_train.json"),
        images=str(data / "train"),
        out=str(out),
        overwrite=True,  # the demo is run again and again into the same folder
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
    return train(cfg, family, model_config(family, preset), progress=progress)


def run_demo(
    out: str | Path = "runs/demo",
    minutes: float = 5.0,
    device: str = "auto",
    progress: bool = True,
    family: str = FAMILY,
    preset: str = PRESET,
    pretrained: str | None = PRETRAINED,
) -> DemoResult:
    """Show the bundled ``pretrained`` model on the 10 val images (seconds, no training), then train
    ``family`` from scratch for ``minutes`` on the 40 train images and show it the same way; write
    summary.md with both tables, the pictures and the loss curve. ``minutes=0`` skips training,
    ``pretrained=None`` the bundled model."""
    out = Path(out)
    lines = ["# instseg demo on the bundled DSB2018 nuclei", ""]
    first = None
    if pretrained is not None:
        predictor = load(pretrained, device=device)
        title = f"the bundled `{pretrained}` model ({predictor.family}), no training"
        first = show_on_val(predictor, title, ckpt.weights_file(pretrained), out / "pretrained", progress)
        lines += _section(first, out, f"`instseg predict --model {pretrained} IMAGES --out DIR`")
    second = None
    if minutes > 0:
        result = train_on_mini(out / "train", minutes, device, family, preset, progress)
        title = f"{family} (`{preset}`) trained from scratch on the 40 bundled train images"
        predictor = load(result.checkpoint, device=device)
        second = show_on_val(predictor, title, result.checkpoint, out / "trained", progress)
        second.steps, second.minutes = result.steps, result.seconds / 60
        lines += _section(second, out, f"`instseg predict --model {result.checkpoint} IMAGES --out DIR`")
        curve = plot_loss_curve(result.log_file, out / "loss_curve.png")
        lines += ["### Loss curve", f"![loss curve]({curve.relative_to(out)})", ""]
    demo = DemoResult(out / "summary.md", first, second)
    demo.summary.parent.mkdir(parents=True, exist_ok=True)
    demo.summary.write_text("\n".join(lines))
    return demo


def _section(part: DemoPart, out: Path, use: str) -> list[str]:
    trained = f"Trained {part.steps} steps in {part.minutes:.1f} min. " if part.steps else ""
    return [
        f"## {part.title}",
        "",
        f"{trained}Evaluated on the 10 val images (maxDets {'/'.join(map(str, MAX_DETS))}).",
        "",
        part.table(),
        "",
        "```",
        format_table(part.metrics),
        "```",
        "",
        f"Checkpoint: `{part.checkpoint}`. Use it with {use}.",
        "",
        "### Ground truth and prediction on the val images",
        f"![contact sheet]({part.contact_sheet.relative_to(out)})",
        "",
    ]
