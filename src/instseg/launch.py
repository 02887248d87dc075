"""``instseg train --nproc N``: the same command as N ranks on this machine, started by torchrun's engine.

This is what ``torchrun --standalone --nproc-per-node N -m instseg ...`` does
(a c10d rendezvous on a free local port, no restarts), called through its
Python API so that a rank that fails ends the job with one line naming the
rank and how it ended, instead of the launcher's traceback. For several
machines, run ``torchrun`` itself with ``--nnodes`` and ``--rdzv-endpoint``.
"""

from __future__ import annotations

import os
import signal
import sys
import uuid

from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
from torch.distributed.launcher.api import LaunchConfig, elastic_launch

from instseg.errors import InstsegError


def threads_per_rank(nproc: int) -> int:
    """The CPU cores shared out: each rank gets its part, so N ranks do not oversubscribe the machine."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, cores // nproc)


def _how(exitcode: int) -> str:
    if exitcode < 0:
        try:
            return f"was killed by {signal.Signals(-exitcode).name}"
        except ValueError:
            return f"was killed by signal {-exitcode}"
    return f"exited with code {exitcode}"


def launch_ranks(nproc: int, argv: list[str]) -> int:
    """Run ``instseg ARGV`` as ``nproc`` ranks and wait for all of them; 0 when every rank succeeded.

    A rank that fails takes the others down (torchrun's rule: no rank goes on
    alone), and the failure is raised as one ``InstsegError`` line."""
    if nproc < 1:
        raise InstsegError(f"--nproc must be at least 1, got {nproc}")
    config = LaunchConfig(
        min_nodes=1,
        max_nodes=1,
        nproc_per_node=nproc,
        run_id=str(uuid.uuid4()),
        rdzv_backend="c10d",
        rdzv_endpoint="localhost:0",
        max_restarts=0,
        monitor_interval=0.5,
        start_method="spawn",
    )
    os.environ.setdefault("OMP_NUM_THREADS", str(threads_per_rank(nproc)))
    try:
        elastic_launch(config, sys.executable)("-m", "instseg", *argv)
    except ChildFailedError as exc:
        rank, failure = exc.get_first_failure()
        how = _how(failure.exitcode)
        raise InstsegError(f"rank {rank} of {nproc} {how}; every rank was stopped") from None
    return 0
