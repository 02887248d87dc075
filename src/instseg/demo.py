"""``instseg demo``: train a small Mask R-CNN on the bundled nuclei, evaluate it, and show it.

Needs nothing outside the package: the data is a 40/10-image CC0 subset of
DSB2018 shipped in ``instseg/assets``.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from instseg.api import load
from instseg.config import TrainConfig
from instseg.data.coco import CocoIndex, resolve_source
from instseg.engine.evaluation import evaluate_model
from instseg.engine.trainer import TrainResult, train
from instseg.eval.coco import format_table
from instseg.eval.report import EvalOptions
from instseg.models.build import model_config
from instseg.pictures import plot_loss_curve, save_overlay

MAX_DETS = (1, 10, 500)


def demo_data() -> Path:
    return Path(str(resources.files("instseg") / "assets" / "dsb2018_mini"))


def run_demo(
    out: str | Path = "runs/demo", minutes: float = 5.0, device: str = "auto", progress: bool = True
) -> Path:
    """Train for ``minutes``, evaluate on the 10 val images, write overlays, curve and summary.md."""
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
    )
    result: TrainResult = train(cfg, "mask_rcnn", model_config("mask_rcnn", "nuclei"), progress=progress)
    predictor = load(result.checkpoint, device=device)
    val = CocoIndex(resolve_source(data, "val"), keep_crowd=True)
    overlays: list[Path] = []

    def keep_overlay(image_id: int, image, instances) -> None:
        if len(overlays) < 4:
            overlays.append(save_overlay(image, instances, out / "overlays" / f"val_{image_id}.png"))

    ev = evaluate_model(
        predictor.inference,
        val,
        predictor.categories,
        predictor.device,
        EvalOptions(max_dets=MAX_DETS, matching=False),
        details=False,
        on_image=keep_overlay,
        progress=progress,
    )
    curve = plot_loss_curve(result.log_file, out / "loss_curve.png")
    segm, boundary = ev.metrics["segm"], ev.metrics["boundary"]
    summary = out / "summary.md"
    summary.write_text(
        "\n".join(
            [
                "# instseg demo: Mask R-CNN from scratch on DSB2018 nuclei (bundled 40/10 subset)",
                "",
                f"Trained {result.steps} steps in {result.seconds / 60:.1f} min on {predictor.device}; "
                f"evaluated on {ev.images} val images (maxDets {'/'.join(map(str, MAX_DETS))}).",
                "",
                "| mask AP | mask AP50 | Boundary AP | box AP | seconds / image |",
                "|---|---|---|---|---|",
                f"| {segm['AP']:.3f} | {segm['AP50']:.3f} | {boundary['AP']:.3f} "
                f"| {ev.metrics['bbox']['AP']:.3f} "
                f"| {ev.seconds_per_image:.2f} |",
                "",
                "```",
                format_table(ev.metrics),
                "```",
                "",
                f"Checkpoint: `{result.checkpoint}`. Use it again with",
                f"`instseg predict --checkpoint {result.checkpoint} IMAGES --out DIR`.",
                "",
                "## Loss curve",
                f"![loss curve]({curve.relative_to(out)})",
                "",
                "## Predictions on val images",
                *[f"![{p.stem}]({p.relative_to(out)})" for p in overlays],
                "",
            ]
        )
    )
    return summary
