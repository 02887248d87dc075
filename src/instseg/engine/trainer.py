"""The training loop on plain PyTorch: ``Trainer.run`` on one screen, each step a named method.

AdamW or SGD, warm-up + cosine/step schedule, gradient clipping, optional EMA
and autocast, periodic checkpoints and evaluation, metrics to JSONL, and a
resume that continues the same trajectory: the data order and augmentation
depend only on (seed, step), and the global RNG state that the model's
proposal samplers draw from is saved with the optimizer.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm import tqdm

from instseg import distributed
from instseg.config import TrainConfig, config_to_dict
from instseg.data.coco import CocoIndex, resolve_source
from instseg.data.copy_paste import CopyPaste
from instseg.data.datasets import CocoTrainDataset, SeededEpochSampler, batch_to, collate
from instseg.data.repeat_factors import images_per_class, repeat_factors
from instseg.data.transforms import TrainTransform
from instseg.engine import checkpoint as ckpt
from instseg.engine.device import resolve_device
from instseg.engine.ema import build_ema
from instseg.engine.evaluation import evaluate_model
from instseg.engine.fine_tune import load_for_fine_tuning
from instseg.engine.precise_bn import recompute_batch_norm_statistics, train_mode
from instseg.engine.schedule import lr_factor
from instseg.errors import CheckpointError, DataError, InstsegError, TrainingDiverged
from instseg.eval.coco import format_table
from instseg.eval.report import EvalOptions
from instseg.models.build import build_model, checkpoint_meta
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


def training_indexes(cfg: TrainConfig) -> tuple[CocoIndex, CocoIndex | None]:
    if not cfg.data:
        raise DataError("no training data given (--data)")
    train = CocoIndex(resolve_source(cfg.data, "train", cfg.images))
    if not train.has_annotations or not train.objects:
        what = "no 'annotations' list" if not train.has_annotations else "no usable annotations"
        raise DataError(f"{train.source.annotations}: {what}; there is nothing to train on")
    val = None
    if cfg.val_data:
        val = CocoIndex(resolve_source(cfg.val_data, "val", cfg.val_images), keep_crowd=True)
    elif Path(cfg.data).is_dir() and list(Path(cfg.data).glob("annotations/instances_val*.json")):
        val = CocoIndex(resolve_source(cfg.data, "val", cfg.val_images), keep_crowd=True)
    return train, val


def _backbone_prefix(model: nn.Module) -> str:
    """Where a family keeps its backbone's parameters (SAM: its image encoder)."""
    return getattr(model, "backbone_prefix", "backbone.")


def _freeze(model: nn.Module, cfg: TrainConfig, name: str) -> list[str]:
    """The parameters that get no gradient at all, so that their backward pass is not paid: the
    backbone's at ``backbone_lr: 0`` (fine-tuning only SAM's decoder, as is usual, costs the encoder's
    forward pass alone); all but the family's class layers at ``train_only: classifier``."""
    backbone = _backbone_prefix(model) if cfg.backbone_lr == 0 else None
    keep = tuple(getattr(model, "classifier_prefixes", ())) if cfg.train_only == "classifier" else None
    if keep == ():
        raise InstsegError(f"train_only classifier: {name} has no class layers to train")
    frozen = []
    for n, p in model.named_parameters():
        if (backbone and n.startswith(backbone)) or (keep and not n.startswith(keep)):
            p.requires_grad_(False)
            frozen.append(n)
    if len(frozen) == len(list(model.parameters())):
        raise InstsegError(f"{name}: every weight is frozen (backbone_lr 0, train_only {cfg.train_only})")
    return frozen


def _optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """No weight decay on norms and biases; with ``backbone_lr`` != 1 the backbone's parameters get their
    own groups, whose ``lr_scale`` the loop applies."""
    groups = []
    prefix = _backbone_prefix(model)
    parts = [(prefix, cfg.backbone_lr), ("", 1.0)] if cfg.backbone_lr != 1.0 else [("", 1.0)]
    taken: set[str] = set()
    for prefix, scale in parts:
        decay, no_decay = [], []
        for name, p in model.named_parameters():
            if p.requires_grad and name.startswith(prefix) and name not in taken:
                taken.add(name)
                (no_decay if p.ndim <= 1 or name.endswith(".bias") else decay).append(p)
        groups += [
            {"params": decay, "weight_decay": cfg.weight_decay, "lr_scale": scale},
            {"params": no_decay, "weight_decay": 0.0, "lr_scale": scale},
        ]
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr)
    return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum)


def _loader(dataset: CocoTrainDataset, cfg: TrainConfig, start_step: int) -> DataLoader:
    repeat = repeat_factors(dataset.index, cfg.repeat_threshold) if cfg.repeat_threshold > 0 else None
    sampler = SeededEpochSampler(
        len(dataset),
        cfg.batch_size,
        cfg.seed,
        start_step,
        distributed.rank(),
        distributed.world_size(),
        repeat,
    )
    return DataLoader(
        dataset,
        batch_size=cfg.batch_size,
        collate_fn=collate,
        num_workers=cfg.workers,
        sampler=sampler,
        generator=torch.Generator().manual_seed(cfg.seed),  # keep the global RNG out of the loader
        worker_init_fn=_single_thread,
        persistent_workers=cfg.workers > 0,
    )


RUN_FILES = ("metrics.jsonl", "train_summary.json", "last", "checkpoint", "snapshots")


def prepare_out(out: Path, resuming: bool, overwrite: bool) -> Path:
    """The run's folder, made writable: a folder that already holds a run is refused unless the run
    is resumed (its log goes on) or ``overwrite`` (its files are removed first), so no model is lost
    by a repeated command."""
    found = [name for name in RUN_FILES if (out / name).exists()]
    if found and not resuming:
        if not overwrite:
            raise InstsegError(
                f"{out}: already holds a training run ({', '.join(found)}); continue it with "
                f"--resume {out / 'last'}, or replace it with --overwrite"
            )
        for name in (*found, "last.old", "last.tmp", "checkpoint.old", "checkpoint.tmp"):
            target = out / name
            if target.is_dir():
                shutil.rmtree(target)
            elif target.exists():
                target.unlink()
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".write_test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise InstsegError(f"{out}: cannot write the run's folder ({exc.strerror or exc})") from None
    return out


def training_batches(index: CocoIndex, cfg: TrainConfig, start_step: int = 0) -> Iterator[Any]:
    """The seeded stream of augmented training batches that step ``start_step`` onwards would see (this
    rank's share of them, when the run is one of several ranks)."""
    paste = (
        CopyPaste(index, cfg.copy_paste, cfg.copy_paste_objects, cfg.copy_paste_balance)
        if cfg.copy_paste > 0
        else None
    )
    transform = TrainTransform(
        cfg.scale_range, cfg.crop_size, cfg.hflip, cfg.vflip, cfg.color_jitter, cfg.crop_min_visible, paste
    )
    return iter(_loader(CocoTrainDataset(index, transform), cfg, start_step))


def last_checkpoint_note(out: Path) -> str:
    """Where a stopped run can be resumed from, in words (checkpoints are only ever written whole, from
    finite weights, so the one on disk is good)."""
    last = out / "last"
    if not last.exists():
        return "no checkpoint was saved yet"
    try:
        return f"last good checkpoint: {last} (step {ckpt.load_meta(last).get('step', '?')})"
    except CheckpointError:
        return f"last checkpoint: {last}"


def _single_thread(_: int) -> None:
    torch.set_num_threads(1)  # workers share the cores with the training process


def _autocast(precision: str, device: torch.device) -> contextlib.AbstractContextManager:
    if precision == "fp32":
        return contextlib.nullcontext()
    if precision == "fp16" and device.type != "cuda":
        raise InstsegError("precision fp16 needs a CUDA device; on a CPU use bf16")
    return torch.autocast(device.type, dtype=torch.bfloat16 if precision == "bf16" else torch.float16)


class Trainer:
    """One training run's state and its named steps; ``run`` is the loop.

    Under ``torchrun`` each process is one rank of DistributedDataParallel:
    the ranks share each step's batch (``SeededEpochSampler``), the families
    average their loss normalisers over the ranks, and rank 0 alone writes
    logs, checkpoints and metrics. Evaluation is sharded (``run_inference``).
    """

    def __init__(
        self, cfg: TrainConfig, model_name: str, model_cfg: Any, resume: str | Path | None, progress: bool
    ) -> None:
        self.cfg = cfg
        self.device = resolve_device(cfg.device)
        distributed.start(self.device)
        if self.device.type == "cuda" and distributed.active():
            self.device = torch.device("cuda", distributed.local_rank())
        self.main = distributed.is_main()
        self.progress_bars = progress and self.main
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        self.autocast = _autocast(cfg.precision, self.device)
        self.scaler = torch.amp.GradScaler("cuda") if cfg.precision == "fp16" else None
        self.out = distributed.on_main(lambda: prepare_out(Path(cfg.out), resume is not None, cfg.overwrite))
        train_index, self.val_index = training_indexes(cfg)
        self.categories = train_index.categories
        val = self.val_index
        if val is not None and {c.id for c in val.categories} != {c.id for c in self.categories}:
            raise DataError(f"{val.source.annotations}: categories differ from the training set's")
        log.info("train: %d images from %s", len(train_index), train_index.source.annotations)

        if getattr(model_cfg, "federated_classes", 0) > 0 and not model_cfg.class_frequencies:
            # the federated loss samples classes by their frequency: counted once, kept with the model
            model_cfg = dataclasses.replace(model_cfg, class_frequencies=tuple(images_per_class(train_index)))
        torch.manual_seed(cfg.seed)
        self.model = build_model(model_name, model_cfg, len(self.categories)).to(self.device)
        if cfg.init:
            fresh = load_for_fine_tuning(self.model, cfg.init, len(self.categories))
            again = (
                f"; re-initialised for {len(self.categories)} classes: {', '.join(fresh)}" if fresh else ""
            )
            log.info("weights from %s%s", cfg.init, again)
        if frozen := _freeze(self.model, cfg, model_name):
            trained = sum(1 for p in self.model.parameters() if p.requires_grad)
            why = "train_only classifier" if cfg.train_only == "classifier" else "backbone_lr 0"
            if cfg.backbone_lr == 0:
                why += f" (every tensor under {_backbone_prefix(self.model)})"
            log.info("%s: %d weight tensors frozen, %d train", why, len(frozen), trained)
        if cfg.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        if distributed.active() and self.device.type == "cuda":  # batch statistics over every rank
            self.model = nn.SyncBatchNorm.convert_sync_batchnorm(self.model)
        self.optimizer = _optimizer(self.model, cfg)
        self.ema = build_ema(self.model, cfg.ema_decay) if cfg.ema else None
        # what is saved, evaluated and predicted with
        self.finished = self.ema.module if self.ema is not None else self.model
        self.meta = checkpoint_meta(model_name, model_cfg, self.categories, train_config=config_to_dict(cfg))
        self.step, self.elapsed = 0, 0.0
        if resume is not None:
            self.resume(resume)
        elif distributed.active():  # each rank its own stream for the model's random draws
            torch.manual_seed(cfg.seed + 1_000_003 * distributed.rank())
        if cfg.compile:  # the backbone only: fixed shapes; the heads' and losses' shapes change per image
            trunk = getattr(self.model, "backbone", None) or getattr(self.model, "image_encoder", None)
            if not isinstance(trunk, nn.Module):
                raise InstsegError(f"--compile: a {model_name} model has no backbone to compile")
            trunk.compile()
        # what the training step calls: the model, wrapped for the ranks when there are several
        self.forward: nn.Module = self.model
        if distributed.active():
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.forward = DistributedDataParallel(self.forward, device_ids=ids)
        self.batches = training_batches(train_index, cfg, self.step)
        self.images_seen = 0
        self.window: dict[str, list[float]] = {}

    def resume(self, path: str | Path) -> None:
        meta = ckpt.load_meta(path)
        if meta.get("family") != self.meta["family"]:
            raise CheckpointError(
                f"{path}: is a {meta.get('family')} checkpoint, this run trains {self.meta['family']}; "
                "resume with the same --model and --preset"
            )
        state = ckpt.load_train_state(path)
        try:
            self.model.load_state_dict(ckpt.load_weights(path, raw=True))
            self.optimizer.load_state_dict(state["optimizer"])
        except (RuntimeError, ValueError, KeyError) as exc:
            reason = str(exc).splitlines()[0]
            raise CheckpointError(
                f"{path}: does not fit this run's model ({reason}); resume with the same --preset and "
                "model fields"
            ) from None
        if self.ema is not None and "ema" in state:
            self.ema.load_state_dict(state["ema"])
        ranks, here = int(state.get("world_size", 1)), distributed.world_size()
        if ranks != here:
            raise CheckpointError(
                f"{path}: was trained by {ranks} process(es) and this run has {here}; a step is one "
                f"batch of --batch-size per process, so the data order would not continue. Resume with "
                f"--nproc {ranks} (or start a new run from its weights with --init)"
            )
        self.step, self.elapsed = int(state["step"]), float(state["elapsed"])
        rng = state.get("rng_ranks", [state["rng"]])
        torch.set_rng_state(rng[distributed.rank()] if distributed.rank() < len(rng) else state["rng"])
        log.info("resumed from %s at step %d", path, self.step)

    def progress(self) -> float:
        """Fraction of training done: by steps, or by time when there is a budget, whichever is further."""
        p = self.step / self.cfg.steps
        return max(p, self.elapsed / self.cfg.time_budget_s) if self.cfg.time_budget_s else p

    def train_step(self) -> tuple[float, float]:
        """One optimizer step on the next batch; returns (total loss, learning rate)."""
        cfg = self.cfg
        images, targets = batch_to(*next(self.batches), self.device)
        lr = cfg.lr * lr_factor(self.step, self.progress(), cfg.warmup_steps, cfg.schedule, cfg.min_lr_ratio)
        for group in self.optimizer.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)
        with self.autocast:
            losses = self.forward(images, targets)
        loss = sum(losses.values())
        if distributed.any_rank(not bool(torch.isfinite(loss))):  # every rank stops at this step
            self.diverged(loss, losses)
        self.optimizer.zero_grad(set_to_none=True)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.unscale_(self.optimizer)
        else:
            loss.backward()
        if cfg.clip_grad:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.clip_grad)
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        if self.ema is not None:
            self.ema.update_parameters(self.model)
        self.step += 1
        self.images_seen += len(images) * distributed.world_size()  # all ranks together
        for k, v in {"loss": loss, **losses}.items():
            self.window.setdefault(k, []).append(float(v.detach()))
        return float(loss.detach()), lr

    def diverged(self, loss: torch.Tensor, losses: dict[str, torch.Tensor]) -> None:
        if bool(torch.isfinite(loss)):  # finite here: it was another rank's loss
            self.stop(f"the loss is not finite on another rank at step {self.step + 1}")
        parts = ", ".join(f"{k}={float(v.detach()):.4g}" for k, v in losses.items())
        where = f" on rank {distributed.rank()}" if distributed.active() else ""
        self.stop(f"loss is {float(loss.detach())} at step {self.step + 1}{where} ({parts})")

    def stop(self, what: str) -> None:
        """Training diverged: say so, and which checkpoint is the last good one (checkpoints are only
        ever written from finite weights, so the one on disk is)."""
        kept = last_checkpoint_note(self.out)
        raise TrainingDiverged(f"{what}; stopped, {kept}. Try a lower --lr or a longer --warmup-steps.")

    def log(self, jsonl: Any, lr: float) -> None:
        """The window's mean losses to the JSONL log."""
        record = {"step": self.step, "time": round(self.elapsed, 2), "lr": lr}
        record.update({k: sum(v) / len(v) for k, v in self.window.items()})
        jsonl.write(json.dumps(record) + "\n")
        jsonl.flush()
        self.window.clear()

    def save(self, path: Path, metrics: dict[str, Any] | None = None, resumable: bool = True) -> None:
        """Written by rank 0 (the weights are the same on every rank); each rank's RNG state goes in."""
        meta = {**self.meta, "step": self.step, "metrics": metrics or {}}
        bad = ckpt.nonfinite(self.finished.state_dict()) or ckpt.nonfinite(self.model.state_dict())
        if distributed.any_rank(bool(bad)):
            if not bad:
                self.stop(f"weights are not finite on another rank after step {self.step}")
            self.stop(f"{len(bad)} weight tensors are not finite after step {self.step} (first: {bad[0]})")
        rng_ranks = distributed.gather_to_main(torch.get_rng_state()) if resumable else None
        if not self.main:
            return
        if not resumable:
            ckpt.save_checkpoint(path, self.finished.state_dict(), meta)
            return
        state = {
            "step": self.step,
            "elapsed": self.elapsed,
            "optimizer": self.optimizer.state_dict(),
            "rng": torch.get_rng_state(),
            "world_size": distributed.world_size(),
            "rng_ranks": rng_ranks,
        }
        if self.ema is not None:
            state["ema"] = self.ema.state_dict()
        raw = self.model.state_dict() if self.ema is not None else None
        ckpt.save_checkpoint(path, self.finished.state_dict(), meta, train_state=state, train_weights=raw)

    def evaluate(self, jsonl: Any) -> tuple[dict[str, dict[str, float]], float | None]:
        """Metrics on the validation set (none without one), also written to the JSONL log."""
        if self.val_index is None:
            return {}, None
        iou_types = ("segm", "bbox", "boundary") if self.cfg.boundary_ap else ("segm", "bbox")
        ev = evaluate_model(
            inference_model(self.finished),
            self.val_index,
            self.categories,
            self.device,
            EvalOptions(iou_types=iou_types, max_dets=tuple(self.cfg.eval_max_dets)),
            details=False,
            progress=self.progress_bars,
        )
        train_mode(self.model)
        if ev.metrics:
            record = {"step": self.step, "time": round(self.elapsed, 2), "eval": ev.metrics}
            jsonl.write(json.dumps(record) + "\n")
        return ev.metrics, ev.seconds_per_image

    def run(self) -> TrainResult:
        cfg, out = self.cfg, self.out
        train_mode(self.model)
        total = cfg.steps if not cfg.time_budget_s else None
        bar = tqdm(total=total, initial=self.step, disable=not self.progress_bars, desc="train", unit="step")
        started = time.perf_counter() - self.elapsed
        log_path = out / "metrics.jsonl" if self.main else Path(os.devnull)  # rank 0 keeps the log
        with log_path.open("a") as jsonl, bar:  # closed on errors too: they print below it
            while self.progress() < 1.0:
                loss, lr = self.train_step()
                # rank 0's clock on every rank: the time-based schedule and the stop agree everywhere
                self.elapsed = distributed.value_from_main(time.perf_counter() - started)
                bar.update(1)
                bar.set_postfix(loss=f"{loss:.3f}", lr=f"{lr:.2e}")
                if self.step % cfg.log_every == 0:
                    self.log(jsonl, lr)
                if cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0:
                    self.save(out / "last")
                if cfg.keep_every and self.step % cfg.keep_every == 0:
                    self.save(out / "snapshots" / f"step_{self.step:07d}", resumable=False)
                if cfg.eval_every and self.step % cfg.eval_every == 0 and self.progress() < 1.0:
                    metrics, _ = self.evaluate(jsonl)
                    if metrics:
                        log.info("step %d\n%s", self.step, format_table(metrics))
                    started = time.perf_counter() - self.elapsed  # evaluation time is not training time
            bar.close()  # the bar ends here; closing it again on leaving the block does nothing
            device, count = self.device, cfg.precise_bn_batches
            if recompute_batch_norm_statistics(
                self.finished, self.batches, count, device, self.progress_bars
            ):
                log.info("BatchNorm statistics averaged over %d training batches", count)
            # on disk before the final evaluation, which an interrupt or a bad val image can stop
            self.save(out / "last")
            self.save(out / "checkpoint", resumable=False)
            metrics, seconds_per_image = self.evaluate(jsonl)
        if metrics:
            self.save(out / "last", metrics)
            self.save(out / "checkpoint", metrics, resumable=False)
        return self.summary(metrics, seconds_per_image)

    def summary(self, metrics: dict[str, dict[str, float]], seconds_per_image: float | None) -> TrainResult:
        images_per_s = round(self.images_seen / max(self.elapsed, 1e-9), 3) if self.images_seen else None
        summary = {
            "steps": self.step,
            "train_seconds": round(self.elapsed, 1),
            "train_images_per_s": images_per_s,
            "seconds_per_image": seconds_per_image,
            "metrics": metrics,
            "processes": distributed.world_size(),
        }
        if self.main:
            (self.out / "train_summary.json").write_text(json.dumps(summary, indent=2))
        log_file = self.out / "metrics.jsonl"
        return TrainResult(
            self.out / "checkpoint", self.step, self.elapsed, metrics, seconds_per_image, log_file
        )


def train(
    cfg: TrainConfig, model_name: str, model_cfg: Any, resume: str | Path | None = None, progress: bool = True
) -> TrainResult:
    """Train ``model_name`` and write ``<out>/checkpoint`` (inference) and ``<out>/last`` (resume)."""
    try:
        return Trainer(cfg, model_name, model_cfg, resume, progress).run()
    finally:
        distributed.stop()
