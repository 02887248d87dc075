"""Why Mask2Former learns slowly on crowded nuclei: a short controlled run with its learning signals.

Trains Mask2Former on random crops of DSB2018 train for a fixed number of
steps (not a time budget, so a slow or busy machine changes nothing but the
wall clock) and logs, every ``--log-every`` steps, the signals that say
whether set prediction is learning:

- the final layer's class, mask BCE and Dice losses;
- for the queries the matcher pairs with ground truth: the mean mask IoU with
  their objects, the fraction of objects covered at IoU >= 0.5, the fraction
  of matched masks that are empty, and the mean mask logit inside and outside
  the object;
- how many distinct queries have ever been matched.

The same signals are measured on fixed crops of val every five logs, and at
the end on whole val images (``--full-val``; a model trained on crops must
also find the many more objects of a whole image). The signals say whether
masks fit their objects, not whether the model ranks them: ``--windowed-ap N``
adds COCO mask AP on the first N val images, predicted window by window at the
crop size (as ``instseg eval --tile``), which does, and ``--whole-ap N`` the
same on whole images (as the benchmark scores them). The final weights are
saved as ``<out>/checkpoint``, for ``instseg eval``. Variants are model config
overrides, so each remedy is one run beside the paper's configuration:

    python benchmarks/mask2former_study.py --out runs/study/paper
    python benchmarks/mask2former_study.py --out runs/study/selected --set query_init=selected

Writes ``<out>/study.jsonl`` and ``<out>/study.png`` (the curves).
``--compare RUN... --out PNG`` draws several runs' val curves in one figure.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import torch
import torch.nn.functional as F
from tqdm import tqdm

from instseg.config import field_values
from instseg.data.coco import CocoIndex, CocoSource, resolve_source
from instseg.data.datasets import CocoTrainDataset
from instseg.data.transforms import TrainTransform
from instseg.engine.checkpoint import save_checkpoint
from instseg.engine.evaluation import evaluate_model
from instseg.eval.report import EvalOptions
from instseg.models.build import build_model, checkpoint_meta, model_config
from instseg.models.mask2former.decoder import mask_logits
from instseg.predictor import Predictor

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "dsb2018"


def signals(model: torch.nn.Module, outputs, targets: list[dict]) -> dict[str, float]:
    """Matched-query mask quality of the final layer, at the mask features' resolution (1/4)."""
    final = outputs.final
    indices = model.criterion.matcher(
        final.class_logits, final.mask_embed, final.mask_features, targets, boxes=final.boxes
    )
    ious, empty, inside, outside, matched = [], 0, [], [], []
    for b, ((rows, cols), t) in enumerate(zip(indices, targets, strict=True)):
        if len(rows) == 0:
            continue
        pred = mask_logits(final.mask_embed[b][rows], final.mask_features[b])
        true = F.interpolate(t["masks"][cols][:, None], size=pred.shape[-2:], mode="area")[:, 0] >= 0.5
        hit = pred > 0
        inter = (hit & true).flatten(1).sum(1).float()
        union = (hit | true).flatten(1).sum(1).float().clamp(min=1)
        ious.append(inter / union)
        empty += int((hit.flatten(1).sum(1) == 0).sum())
        inside.append(pred[true])
        outside.append(pred[~true])
        matched.append(rows)
    if not ious:
        return {}
    iou = torch.cat(ious)
    return {
        "matched_iou": float(iou.mean()),
        "covered_50": float((iou >= 0.5).float().mean()),
        "empty_masks": empty / len(iou),
        "logit_inside": float(torch.cat(inside).mean()),
        "logit_outside": float(torch.cat(outside).mean()),
        "objects": len(iou),
        "_queries": torch.cat(matched).tolist(),
    }


def forward(model, images, targets, training: bool = False):
    """The network's outputs (with the denoising queries of a training step, when the config has them),
    the transformed targets and the criterion's form of them."""
    batch, targets = model.transform(images, targets)
    network = model.training_network if training else lambda pixels, _: model.network(pixels)
    outputs = network(batch.tensors, targets)
    return outputs, targets, model.criterion.prepare(outputs, targets)


def val_signals(model, batches) -> dict[str, float]:
    """The signals on val, the network in eval mode (a BatchNorm trunk keeps its statistics); only the
    transform is in training mode, the one mode in which it resizes targets with the images."""
    model.eval()
    model.transform.train()
    totals: dict[str, list[float]] = {}
    with torch.no_grad():
        for images, targets in batches:
            outputs, _, set_t = forward(model, images, targets)
            for k, v in signals(model, outputs, set_t).items():
                if not k.startswith("_"):
                    totals.setdefault(k, []).append(v)
    model.train()
    return {f"val_{k}": sum(v) / len(v) for k, v in totals.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--preset", default="nuclei")
    parser.add_argument("--set", nargs="*", default=[], help="model config overrides, key=value")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--crop", type=int, default=128, help="training crop side in source pixels")
    parser.add_argument("--crop-min-visible", type=float, default=0.0, help="TrainConfig.crop_min_visible")
    parser.add_argument("--lr", type=float, default=2e-4)
    parser.add_argument("--log-every", type=int, default=10)
    parser.add_argument("--val-images", type=int, default=8)
    parser.add_argument("--full-val", type=int, default=4, help="whole val images scored at the end")
    parser.add_argument("--windowed-ap", type=int, default=0, help="val images scored by windowed mask AP")
    parser.add_argument("--whole-ap", type=int, default=0, help="val images scored whole by mask AP")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--compare", type=Path, nargs="+", help="runs to draw together (writes --out)")
    args = parser.parse_args()
    if args.compare:
        compare(args.compare, args.out)
        return 0
    if not (args.data / "annotations").is_dir():
        print(f"{args.data}: no DSB2018 dataset there (see ../shared/data/README)", file=sys.stderr)
        return 2
    torch.manual_seed(args.seed)
    cfg = model_config("mask2former", args.preset, field_values(args.set))
    model = build_model("mask2former", cfg, num_classes=1)
    train = CocoTrainDataset(
        CocoIndex(resolve_source(args.data, "train")),
        TrainTransform(crop_size=args.crop, crop_min_visible=args.crop_min_visible),
    )
    val = CocoTrainDataset(
        CocoIndex(resolve_source(args.data, "val")), TrainTransform(crop_size=args.crop, hflip=False)
    )
    val_full = CocoTrainDataset(val.index, TrainTransform(hflip=False))
    val_batches = []
    for start in range(0, args.val_images, args.batch):
        items = [val[(i, 1000 + i)] for i in range(start, min(start + args.batch, args.val_images))]
        val_batches.append(([x for x, _ in items], [y for _, y in items]))
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.05)
    args.out.mkdir(parents=True, exist_ok=True)
    log = (args.out / "study.jsonl").open("w")
    seen: set[int] = set()
    rows = []
    start = time.time()
    model.train()
    for step in tqdm(range(1, args.steps + 1), desc=args.out.name):
        order = torch.randint(0, len(train), (args.batch,))
        items = [train[(int(i), args.seed * 100003 + step * args.batch + k)] for k, i in enumerate(order)]
        outputs, targets, set_t = forward(model, [x for x, _ in items], [y for _, y in items], training=True)
        losses = model.criterion(outputs, targets)
        warm = min(1.0, step / 20)
        for group in optimizer.param_groups:
            group["lr"] = args.lr * warm
        optimizer.zero_grad()
        sum(losses.values()).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
        optimizer.step()
        if step % args.log_every and step != args.steps:
            continue
        with torch.no_grad():
            final = model.criterion.layer_sum(outputs.layers[-1:], set_t)
            if outputs.denoising is not None:
                pairs = outputs.denoising.indices()
                final |= model.criterion.denoising_sum(outputs.denoising_layers[-1:], set_t, pairs)
            s = signals(model, outputs, set_t)
        seen.update(s.pop("_queries", []))
        row = {
            "step": step,
            "time": round(time.time() - start, 1),
            "loss": round(float(sum(losses.values()).detach()), 3),
        }
        row |= {f"final_{k}": round(float(v), 4) for k, v in final.items()}
        row |= {k: round(v, 4) for k, v in s.items()} | {"queries_ever_matched": len(seen)}
        if step % (args.log_every * 5) == 0 or step == args.steps:
            row |= {k: round(v, 4) for k, v in val_signals(model, val_batches).items()}
        rows.append(row)
        log.write(json.dumps(row) + "\n")
        log.flush()
        tqdm.write(json.dumps(row))
    if args.full_val:
        full = [val_full[(i, 2000 + i)] for i in range(args.full_val)]
        row = {
            k.replace("val_", "full_val_"): round(v, 4)
            for k, v in val_signals(model, [([x], [y]) for x, y in full]).items()
        }
        log.write(json.dumps({"step": args.steps, **row}) + "\n")
        print(json.dumps(row))
    meta = checkpoint_meta("mask2former", cfg, train.index.categories, step=args.steps)
    save_checkpoint(args.out / "checkpoint", {k: v.detach() for k, v in model.state_dict().items()}, meta)
    for images, tile in ((args.windowed_ap, args.crop), (args.whole_ap, None)):
        if images:
            row = val_ap(args.out / "checkpoint", val.index, images, tile, args.out)
            log.write(json.dumps({"step": args.steps, **row}) + "\n")
            print(json.dumps(row))
    plot(rows, args.out / "study.png", args.out.name)
    return 0


def val_ap(checkpoint: Path, index: CocoIndex, images: int, tile: int | None, out: Path) -> dict[str, float]:
    """Mask AP and AR on the first ``images`` val images, predicted in ``tile`` windows overlapping by a
    quarter, or whole (None)."""
    subset = dict(index.dataset)
    subset["images"] = subset["images"][:images]
    ids = {im["id"] for im in subset["images"]}
    subset["annotations"] = [a for a in subset["annotations"] if a["image_id"] in ids]
    path = out / "val_subset.json"
    path.write_text(json.dumps(subset))
    part = CocoIndex(CocoSource(path, index.source.images))
    predictor = Predictor.from_checkpoint(checkpoint, "cpu")
    if tile is not None:
        predictor = predictor.tiled(tile)
    options = EvalOptions(iou_types=("segm",), max_dets=(1, 10, 500), matching=False)
    evaluation = evaluate_model(predictor.inference, part, part.categories, options=options, details=False)
    segm = evaluation.metrics["segm"]
    how = "whole" if tile is None else "windowed"
    return {f"{how}_mask_ap": segm["AP"], f"{how}_ap50": segm["AP50"], f"{how}_ar500": segm["AR500"]}


def plot(rows: list[dict], path: Path, title: str) -> None:
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    steps = [r["step"] for r in rows]
    for key in ("final_loss_class", "final_loss_mask", "final_loss_dice"):
        axes[0].plot(steps, [r[key] for r in rows], label=key.removeprefix("final_"))
    axes[0].set_title("final-layer losses")
    for key in ("matched_iou", "covered_50", "empty_masks"):
        axes[1].plot(steps, [r.get(key, float("nan")) for r in rows], label=key)
    val = [r for r in rows if "val_matched_iou" in r]
    axes[1].plot(
        [r["step"] for r in val], [r["val_matched_iou"] for r in val], "o--", label="val matched_iou"
    )
    axes[1].set_ylim(0, 1)
    axes[1].set_title("matched queries")
    for key in ("logit_inside", "logit_outside"):
        axes[2].plot(steps, [r.get(key, float("nan")) for r in rows], label=key)
    axes[2].set_title("mask logits of matched queries")
    for ax in axes:
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def compare(runs: list[Path], path: Path) -> None:
    """Val matched-mask IoU and objects covered at IoU 0.5 against steps, one line per run."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    for run in runs:
        rows = [json.loads(x) for x in (run / "study.jsonl").read_text().splitlines()]
        val = [r for r in rows if "val_matched_iou" in r]
        for ax, key in zip(axes, ("val_matched_iou", "val_covered_50"), strict=True):
            ax.plot([r["step"] for r in val], [r[key] for r in val], "o-", label=run.name)
    for ax, title in zip(
        axes, ("val crops: matched-mask IoU", "val crops: objects covered at IoU 0.5"), strict=True
    ):
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
