"""Checkpoints: safetensors weights + JSON metadata, written atomically, read without unpickling.

A checkpoint is a directory::

    model.safetensors   inference weights (EMA weights when EMA is on); the
                        metadata is also in its header, so the file alone loads
    meta.json           family, model config, categories, training config, step
    train_state.pt      optimizer, step, RNG and EMA state for resume; tensors and
                        plain containers only, loaded with ``weights_only=True``
    train_weights.safetensors   the raw (non-EMA) weights, when EMA is on

A directory is written under a temporary name and swapped in by rename, so an
interrupted save leaves the previous checkpoint intact.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open, save_file

from instseg.errors import CheckpointError

FORMAT_VERSION = 1
WEIGHTS = "model.safetensors"
META = "meta.json"
TRAIN_STATE = "train_state.pt"
TRAIN_WEIGHTS = "train_weights.safetensors"


def _atomic_dir(final: Path, write: Callable[[Path], None]) -> None:
    """``write`` into ``final.tmp``, then swap it in; a failed write (disk full, no permission) removes
    the temporary folder and leaves the previous checkpoint as it was."""
    tmp = final.with_name(final.name + ".tmp")
    old = final.with_name(final.name + ".old")
    try:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        write(tmp)
        for f in tmp.iterdir():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
    except (OSError, RuntimeError, SafetensorError) as exc:  # torch.save reports a full disk as RuntimeError
        shutil.rmtree(tmp, ignore_errors=True)
        kept = "; the previous one is kept" if final.exists() else ""
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc).splitlines()[0]
        raise CheckpointError(f"{final}: cannot write the checkpoint ({reason}){kept}") from None
    if final.exists():
        shutil.rmtree(old, ignore_errors=True)
        final.rename(old)
    tmp.rename(final)
    shutil.rmtree(old, ignore_errors=True)


def _tensors(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().contiguous() for k, v in state.items()}


def nonfinite(weights: dict[str, torch.Tensor]) -> list[str]:
    """Names of the floating-point tensors holding a NaN or an infinity."""
    return [k for k, v in weights.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]


def save_checkpoint(
    path: str | Path,
    weights: dict[str, torch.Tensor],
    meta: dict[str, Any],
    train_state: dict[str, Any] | None = None,
    train_weights: dict[str, torch.Tensor] | None = None,
) -> Path:
    path = Path(path)
    for state in (weights, train_weights or {}):
        if bad := nonfinite(state):
            raise CheckpointError(f"{path}: not saved, {len(bad)} tensors are not finite (first: {bad[0]})")
    meta = {"format_version": FORMAT_VERSION, **meta}
    header = {"instseg": json.dumps(meta)}

    def write(tmp: Path) -> None:
        save_file(_tensors(weights), str(tmp / WEIGHTS), metadata=header)
        (tmp / META).write_text(json.dumps(meta, indent=2))
        if train_weights is not None:
            save_file(_tensors(train_weights), str(tmp / TRAIN_WEIGHTS))
        if train_state is not None:
            torch.save(train_state, tmp / TRAIN_STATE)

    _atomic_dir(path, write)
    return path


def resolve(path: str | Path) -> Path:
    """The checkpoint at ``path``, or the previous one if a save was interrupted mid-swap, or the
    bundled model of that name (``nuclei``) when ``path`` is not a checkpoint."""
    from instseg.engine.pretrained import bundled_checkpoint, bundled_models  # it reads this module's names

    path = Path(path)
    if path.is_file() or (path / WEIGHTS).is_file():
        return path
    bundled = bundled_checkpoint(str(path))
    if bundled is not None:
        return bundled
    if path.exists():
        return path
    old = path.with_name(path.name + ".old")
    if old.is_dir():
        return old
    names = ", ".join(bundled_models()) or "none installed"
    raise CheckpointError(f"{path}: checkpoint not found (bundled models: {names})")


def weights_file(path: str | Path) -> Path:
    path = resolve(path)
    file = path / WEIGHTS if path.is_dir() else path
    if not file.is_file():
        raise CheckpointError(f"{path}: no {WEIGHTS} in this checkpoint directory")
    return file


def load_meta(path: str | Path) -> dict[str, Any]:
    file = weights_file(path)
    try:
        with safe_open(str(file), framework="pt") as f:
            header = f.metadata() or {}
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(f"{file}: not a readable safetensors file ({exc})") from None
    if "instseg" not in header:
        raise CheckpointError(f"{file}: safetensors file has no instseg metadata; not an instseg checkpoint")
    try:
        meta = json.loads(header["instseg"])
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{file}: instseg metadata is not JSON ({exc.msg})") from None
    if not isinstance(meta, dict):
        raise CheckpointError(f"{file}: instseg metadata is a {type(meta).__name__}, not an object")
    version = meta.get("format_version", 0)
    if not isinstance(version, int) or isinstance(version, bool):
        raise CheckpointError(f"{file}: format_version {version!r} is not an integer")
    if version > FORMAT_VERSION:
        raise CheckpointError(f"{file}: checkpoint format {version} is newer than this instseg")
    problems = [
        f"'{key}' is not {kind.__name__}"
        for key, kind in (("family", str), ("model_config", dict), ("categories", list))
        if not isinstance(meta.get(key), kind)
    ]
    if problems:
        raise CheckpointError(f"{file}: incomplete instseg metadata ({'; '.join(problems)})")
    return meta


def weight_shapes(path: str | Path) -> dict[str, tuple[int, ...]]:
    """The shape of every tensor in a checkpoint, read from the file's header without loading any."""
    file = weights_file(path)
    try:
        with safe_open(str(file), framework="pt") as f:
            return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}  # noqa: SIM118
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(f"{file}: not a readable safetensors file ({exc})") from None


def load_weights(path: str | Path, raw: bool = False) -> dict[str, torch.Tensor]:
    file = weights_file(path)
    if raw and (file.parent / TRAIN_WEIGHTS).is_file():
        file = file.parent / TRAIN_WEIGHTS
    try:
        return load_file(str(file))
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(f"{file}: cannot read weights ({exc})") from None


def load_train_state(path: str | Path) -> dict[str, Any]:
    file = resolve(path) / TRAIN_STATE
    if not file.is_file():
        raise CheckpointError(f"{resolve(path)}: has no {TRAIN_STATE}; it cannot be resumed")
    try:
        return torch.load(file, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises UnpicklingError, RuntimeError, EOFError...
        raise CheckpointError(f"{file}: cannot read training state ({type(exc).__name__}: {exc})") from None
