"""The process group a run may be one rank of, and the few collective steps the toolkit takes in it.

Runs are launched by ``torchrun`` (or ``instseg train --nproc N``, which starts
it), which sets ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK``. Outside a process
group every function here is the single-process identity, so models and the
trainer call them unconditionally and one process behaves exactly as before.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from datetime import timedelta
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import Tensor

T = TypeVar("T")


def launched() -> bool:
    """Whether this process was started as one of several ranks (``torchrun``'s environment)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def rank() -> int:
    return dist.get_rank() if active() else 0


def is_main() -> bool:
    return rank() == 0


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def start(device: torch.device, timeout_s: float = 1800.0) -> None:
    """Join the process group torchrun describes: gloo on CPU, NCCL on CUDA (this rank's own GPU)."""
    if not launched() or active():
        return
    if device.type == "cuda":
        torch.cuda.set_device(local_rank())
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend, timeout=timedelta(seconds=timeout_s))


def stop() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def _tensor(value: Tensor | float) -> Tensor:
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else "cpu"
    return torch.as_tensor(value, dtype=torch.float64).detach().to(device).clone()


def mean_over_ranks(value: Tensor | float, least: float = 0.0) -> Tensor:
    """The mean of a count over the ranks, as a float tensor (the count itself in one process), kept
    at or above ``least / world_size``.

    A loss that is a sum over a rank's objects divided by this is, once
    DistributedDataParallel has averaged the gradients, the sum over all ranks'
    objects divided by their total, or by ``least`` where the total is below it:
    the gradient of one process dividing by ``max(total, least)`` on the whole
    batch (the reference implementations normalise FCOS's and Mask2Former's
    losses by the averaged count this way)."""
    if not active():
        return torch.as_tensor(value, dtype=torch.float32).detach().clone().clamp(min=least)
    t = _tensor(value)
    dist.all_reduce(t)
    out = (t / dist.get_world_size()).clamp(min=least / dist.get_world_size())
    device = value.device if isinstance(value, Tensor) else "cpu"
    return out.to(device=device, dtype=torch.float32)


def any_rank(flag: bool) -> bool:
    """Whether ``flag`` holds on any rank: every rank learns it, so all can stop at the same step."""
    if not active():
        return flag
    t = _tensor(float(flag))
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


def value_from_main(value: float) -> float:
    """Rank 0's ``value`` on every rank (a clock reading, so that every rank's schedule agrees)."""
    if not active():
        return value
    t = _tensor(value)
    dist.broadcast(t, src=0)
    return float(t.item())


def gather_to_main(obj: T) -> list[T] | None:
    """Every rank's ``obj`` (picklable), in rank order, on rank 0; ``None`` on the others."""
    if not active():
        return [obj]
    out: list[Any] | None = [None] * dist.get_world_size() if is_main() else None
    dist.gather_object(obj, out, dst=0)
    return out


def broadcast_from_main(obj: T) -> T:
    """Rank 0's ``obj`` on every rank."""
    if not active():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def on_main(work: Callable[[], T]) -> T:
    """``work()`` run on rank 0 only; its result, or its error, reaches every rank (so a refused
    output folder stops all ranks with the same one-line message, not rank 0 alone)."""
    outcome: tuple[bool, Any] = (True, None)
    if is_main():
        try:
            outcome = (True, work())
        except Exception as exc:  # re-raised below, on every rank
            outcome = (False, exc)
    ok, value = broadcast_from_main(outcome)
    if not ok:
        raise value
    return value
