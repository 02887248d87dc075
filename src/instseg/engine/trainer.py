"""The training loop: one readable function on plain PyTorch.

AdamW or SGD, warm-up + cosine/step schedule, gradient clipping, optional EMA
and autocast, periodic checkpoints and evaluation, metrics to JSONL, and a
resume that continues the same trajectory: the data order and augmentation
depend only on (seed, step), and the global RNG state that the model's
proposal samplers draw from is saved with the optimizer.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from instseg import __version__
from instseg.config import TrainConfig, config_to_dict
from instseg.data.coco import CocoIndex, resolve_source
from instseg.data.datasets import CocoTrainDataset, SeededEpochSampler, batch_to, collate
from instseg.data.transforms import TrainTransform
from instseg.engine import checkpoint as ckpt
from instseg.engine.ema import build_ema
from instseg.engine.evaluation import evaluate_model
from instseg.engine.precise_bn import recompute_batch_norm_statistics
from instseg.engine.schedule import lr_factor
from instseg.errors import DataError, TrainingDiverged
from instseg.eval.coco import format_table
from instseg.eval.report import EvalOptions
from instseg.models.build import build_model
from instseg.models.fusion import inference_model

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    checkpoint: Path
    steps: int
    seconds: float
    metrics: dict[str, dict[str, float]] = field(default_factory=dict)
    seconds_per_image: float | None = None
    log_file: Path | None = None


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def training_indexes(cfg: TrainConfig) -> tuple[CocoIndex, CocoIndex | None]:
    if not cfg.data:
        raise DataError("no training data given (--data)")
    train = CocoIndex(resolve_source(cfg.data, "train", cfg.images))
    val = None
    if cfg.val_data:
        val = CocoIndex(resolve_source(cfg.val_data, "val", cfg.val_images), keep_crowd=True)
    elif Path(cfg.data).is_dir() and list(Path(cfg.data).glob("annotations/instances_val*.json")):
        val = CocoIndex(resolve_source(cfg.data, "val", cfg.val_images), keep_crowd=True)
    return train, val


def _optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 or name.endswith(".bias") else decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr)
    return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum)


def _loader(dataset: CocoTrainDataset, cfg: TrainConfig, start_step: int) -> DataLoader:
    return DataLoader(
        dataset,
        batch_size=cfg.batch_size,
        collate_fn=collate,
        num_workers=cfg.workers,
        sampler=SeededEpochSampler(len(dataset), cfg.batch_size, cfg.seed, start_step),
        generator=torch.Generator().manual_seed(cfg.seed),  # keep the global RNG out of the loader
        worker_init_fn=_single_thread,
        persistent_workers=cfg.workers > 0,
    )


def training_batches(index: CocoIndex, cfg: TrainConfig, start_step: int = 0) -> Iterator[Any]:
    """The seeded stream of augmented training batches that step ``start_step`` onwards would see."""
    transform = TrainTransform(cfg.scale_range, cfg.crop_size, cfg.hflip, cfg.vflip, cfg.color_jitter)
    return iter(_loader(CocoTrainDataset(index, transform), cfg, start_step))


def _single_thread(_: int) -> None:
    torch.set_num_threads(1)  # workers share the cores with the training process


def train(
    cfg: TrainConfig, model_name: str, model_cfg: Any, resume: str | Path | None = None, progress: bool = True
) -> TrainResult:
    """Train ``model_name`` and write ``<out>/checkpoint`` (inference) and ``<out>/last`` (resume)."""
    device = resolve_device(cfg.device)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    train_index, val_index = training_indexes(cfg)
    categories = train_index.categories
    if val_index is not None and {c.id for c in val_index.categories} != {c.id for c in categories}:
        raise DataError(f"{val_index.source.annotations}: categories differ from the training set's")
    log.info("train: %d images from %s", len(train_index), train_index.source.annotations)

    torch.manual_seed(cfg.seed)
    model = build_model(model_name, model_cfg, len(categories)).to(device)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = _optimizer(model, cfg)
    ema = build_ema(model, cfg.ema_decay) if cfg.ema else None
    finished = ema.module if ema is not None else model  # what is saved, evaluated and predicted with
    meta = {
        "instseg_version": __version__,
        "family": model_name,
        "model_config": config_to_dict(model_cfg),
        "categories": [vars(c) for c in categories],
        "train_config": config_to_dict(cfg),
    }

    step, elapsed = 0, 0.0
    if resume is not None:
        state = ckpt.load_train_state(resume)
        model.load_state_dict(ckpt.load_weights(resume, raw=True))
        optimizer.load_state_dict(state["optimizer"])
        if ema is not None and "ema" in state:
            ema.load_state_dict(state["ema"])
        step, elapsed = int(state["step"]), float(state["elapsed"])
        torch.set_rng_state(state["rng"])
        log.info("resumed from %s at step %d", resume, step)

    batches = training_batches(train_index, cfg, step)
    log_file = out / "metrics.jsonl"
    autocast = (
        torch.autocast(device.type, dtype=torch.bfloat16)
        if cfg.amp and device.type == "cuda"
        else contextlib.nullcontext()
    )

    def progress_of(s: int, seconds: float) -> float:
        p = s / cfg.steps
        return max(p, seconds / cfg.time_budget_s) if cfg.time_budget_s else p

    def save(path: Path, metrics: dict[str, Any] | None = None, resumable: bool = True) -> None:
        if not resumable:
            ckpt.save_checkpoint(
                path, finished.state_dict(), {**meta, "step": step, "metrics": metrics or {}}
            )
            return
        state = {
            "step": step,
            "elapsed": elapsed,
            "optimizer": optimizer.state_dict(),
            "rng": torch.get_rng_state(),
        }
        if ema is not None:
            state["ema"] = ema.state_dict()
        ckpt.save_checkpoint(
            path,
            finished.state_dict(),
            {**meta, "step": step, "metrics": metrics or {}},
            train_state=state,
            train_weights=model.state_dict() if ema is not None else None,
        )

    def evaluate() -> tuple[dict[str, dict[str, float]], float | None]:
        if val_index is None:
            return {}, None
        ev = evaluate_model(
            inference_model(finished),
            val_index,
            categories,
            device,
            EvalOptions(
                iou_types=("segm", "bbox", "boundary") if cfg.boundary_ap else ("segm", "bbox"),
                max_dets=tuple(cfg.eval_max_dets),
            ),
            details=False,
            progress=progress,
        )
        model.train()
        return ev.metrics, ev.seconds_per_image

    model.train()
    bar = tqdm(
        total=cfg.steps if not cfg.time_budget_s else None,
        initial=step,
        disable=not progress,
        desc="train",
        unit="step",
    )
    window: dict[str, list[float]] = {}
    images_seen = 0
    started = time.perf_counter() - elapsed
    with log_file.open("a") as jsonl:
        while progress_of(step, elapsed) < 1.0:
            images, targets = next(batches)
            images, targets = batch_to(images, targets, device)
            factor = lr_factor(
                step, progress_of(step, elapsed), cfg.warmup_steps, cfg.schedule, cfg.min_lr_ratio
            )
            for group in optimizer.param_groups:
                group["lr"] = cfg.lr * factor
            with autocast:
                losses = model(images, targets)
            loss = sum(losses.values())
            if not torch.isfinite(loss):
                parts = ", ".join(f"{k}={float(v.detach()):.4g}" for k, v in losses.items())
                last = out / "last"
                kept = f"last good checkpoint: {last}" if last.exists() else "no checkpoint was saved yet"
                raise TrainingDiverged(
                    f"loss is {float(loss.detach())} at step {step + 1} ({parts}); stopped, {kept}. "
                    f"Try a lower --lr or a longer --warmup-steps."
                )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.clip_grad:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip_grad)
            optimizer.step()
            if ema is not None:
                ema.update_parameters(model)
            step += 1
            images_seen += len(images)
            elapsed = time.perf_counter() - started
            for k, v in {"loss": loss, **losses}.items():
                window.setdefault(k, []).append(float(v.detach()))
            bar.update(1)
            bar.set_postfix(loss=f"{float(loss.detach()):.3f}", lr=f"{cfg.lr * factor:.2e}")
            if step % cfg.log_every == 0:
                record = {
                    "step": step,
                    "time": round(elapsed, 2),
                    "lr": cfg.lr * factor,
                    **{k: sum(v) / len(v) for k, v in window.items()},
                }
                jsonl.write(json.dumps(record) + "\n")
                jsonl.flush()
                window.clear()
            if cfg.checkpoint_every and step % cfg.checkpoint_every == 0:
                save(out / "last")
            if cfg.keep_every and step % cfg.keep_every == 0:
                save(out / "snapshots" / f"step_{step:07d}", resumable=False)
            if cfg.eval_every and step % cfg.eval_every == 0 and progress_of(step, elapsed) < 1.0:
                metrics, _ = evaluate()
                jsonl.write(json.dumps({"step": step, "time": round(elapsed, 2), "eval": metrics}) + "\n")
                if metrics:
                    log.info("step %d\n%s", step, format_table(metrics))
                started = time.perf_counter() - elapsed  # evaluation time is not training time
        bar.close()
        if recompute_batch_norm_statistics(finished, batches, cfg.precise_bn_batches, device, progress):
            log.info("BatchNorm statistics averaged over %d training batches", cfg.precise_bn_batches)
        metrics, seconds_per_image = evaluate()
        if metrics:
            jsonl.write(json.dumps({"step": step, "time": round(elapsed, 2), "eval": metrics}) + "\n")
    save(out / "last", metrics)
    save(out / "checkpoint", metrics, resumable=False)
    summary = {
        "steps": step,
        "train_seconds": round(elapsed, 1),
        "train_images_per_s": round(images_seen / max(elapsed, 1e-9), 3) if images_seen else None,
        "seconds_per_image": seconds_per_image,
        "metrics": metrics,
    }
    (out / "train_summary.json").write_text(json.dumps(summary, indent=2))
    return TrainResult(out / "checkpoint", step, elapsed, metrics, seconds_per_image, log_file)
