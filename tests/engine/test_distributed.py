"""Training and evaluation as two ranks (torchrun's engine, gloo on CPU) against one process.

Every test starts real processes the way ``instseg train --nproc 2`` does, so
each takes seconds. One process on a batch of 2 and two ranks on a batch of 1
each see the same images with the same augmentation; with the loss
normalisers averaged over the ranks their gradients are the same sums, so the
weights may differ only by float rounding.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from instseg.demo import demo_data
from instseg.engine.checkpoint import load_meta, load_weights
from tests.conftest import TINY_MODEL
from tests.models.test_condinst import SMALL as CONDINST_SMALL
from tests.models.test_mask2former import TINY as MASK2FORMER_TINY
from tests.models.test_solov2 import SMALL as SOLOV2_SMALL

# one family of each kind, small; GroupNorm throughout (per-rank BatchNorm statistics would differ)
FAMILIES = {
    # every anchor and RoI sampled: torchvision draws its samples from the global generator
    "mask_rcnn": {**TINY_MODEL, "rpn_batch_per_image": 100_000, "box_batch_per_image": 100_000},
    "condinst": CONDINST_SMALL,
    "solov2": SOLOV2_SMALL,
    "mask2former": {**MASK2FORMER_TINY, "min_size": 64, "max_size": 64},
}
# SGD: its step is linear in the gradient, so rounding differences stay rounding-sized (Adam divides
# them by the gradient's running size, and a weight whose gradient is ~0 moves by ~lr either way).
# SOLOv2's GroupNorm heads make its float32 gradients the most sensitive to rounding (the batched and
# per-image convolutions round differently; in float64 its split gradients agree to 1e-15), so it
# takes a smaller step.
LR = {"mask_rcnn": 1e-3, "condinst": 1e-3, "solov2": 2e-4, "mask2former": 1e-3}
TRAIN = {
    "steps": 5,
    "optimizer": "sgd",
    "warmup_steps": 0,
    "workers": 0,
    "precise_bn_batches": 0,
    "checkpoint_every": 5,
    "crop_size": 64,
    "seed": 0,
    "log_every": 1,
    "norm": "gn",
}


def instseg(*argv: str, timeout: float = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "instseg", *argv], capture_output=True, text=True, env=env, timeout=timeout
    )


def _config(tmp_path: Path, data: Path, family: str, **extra: object) -> str:
    path = tmp_path / f"{family}.yaml"
    values = {"data": str(data), **TRAIN, "lr": LR[family], **FAMILIES[family], **extra}
    path.write_text(yaml.safe_dump(values))
    return str(path)


def _max_difference(a: Path, b: Path) -> float:
    wa, wb = load_weights(a, raw=True), load_weights(b, raw=True)
    assert wa.keys() == wb.keys()
    return max((wa[k].double() - wb[k].double()).abs().max().item() for k in wa)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_two_ranks_train_as_one_process_on_the_whole_batch(family, tiny_coco, tmp_path):
    config = _config(tmp_path, tiny_coco, family)
    runs = {
        "one": ("--batch-size", "2"),
        "two": ("--batch-size", "1", "--nproc", "2"),
        "half": ("--batch-size", "1"),  # one process on half the batch: the comparison can fail
    }
    for name, flags in runs.items():
        done = instseg("train", "--model", family, "--config", config, "--out", str(tmp_path / name), *flags)
        assert done.returncode == 0, done.stderr[-3000:]
    assert load_meta(tmp_path / "two" / "last")["step"] == 5
    same = _max_difference(tmp_path / "one" / "last", tmp_path / "two" / "last")
    other = _max_difference(tmp_path / "one" / "last", tmp_path / "half" / "last")
    print(f"{family}: two ranks {same:.2e}, half the batch {other:.2e}")
    assert same <= 1e-5 and other > 1e-4
    summary = json.loads((tmp_path / "two" / "train_summary.json").read_text())
    assert summary["processes"] == 2 and summary["steps"] == 5
    # one log, from rank 0: one line per step, then the final evaluation
    lines = (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line).get("step") for line in lines] == [1, 2, 3, 4, 5, 5]


def test_sharded_evaluation_equals_one_process(tmp_path):
    data = demo_data()
    common = ("eval", "--model", "nuclei", "--data", str(data), "--no-matching")
    one = instseg(*common, "--out", str(tmp_path / "one"))
    two = instseg(*common, "--out", str(tmp_path / "two"), "--nproc", "2")
    assert one.returncode == 0 and two.returncode == 0, two.stderr[-3000:]
    results = [json.loads((tmp_path / run / "results.json").read_text()) for run in ("one", "two")]
    assert len(results[0]) > 100 and results[0] == results[1]  # every detection, in the same order
    metrics = [json.loads((tmp_path / run / "metrics.json").read_text())["metrics"] for run in ("one", "two")]
    assert metrics[0]["segm"]["AP"] > 0.2 and metrics[0] == metrics[1]
    assert "images" in two.stdout and "s/image" in two.stdout


def test_sharded_prediction_writes_what_one_process_writes(tmp_path):
    images = str(demo_data() / "val")
    common = ("predict", "--model", "nuclei", images, "--no-overlays")
    one = instseg(*common, "--out", str(tmp_path / "one"))
    two = instseg(*common, "--out", str(tmp_path / "two"), "--nproc", "2")
    assert one.returncode == 0 and two.returncode == 0, two.stderr[-3000:]
    for name in ("predictions.json", "objects.csv"):
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes(), name
    labels = sorted(p.name for p in (tmp_path / "one" / "labels").iterdir())
    assert len(labels) >= 5 and labels == sorted(p.name for p in (tmp_path / "two" / "labels").iterdir())
    assert two.stdout.count("COCO results:") == 1  # rank 0 alone reports


def _rank_pid(rank: int, marker: str) -> int | None:
    """The pid of the training process of ``rank`` whose command line holds ``marker``."""
    for proc in Path("/proc").iterdir():
        try:
            cmdline = (proc / "cmdline").read_bytes().decode(errors="replace")
            environ = (proc / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if marker in cmdline and f"RANK={rank}".encode() in environ:
            return int(proc.name)
    return None


@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="finds the rank's process in /proc")
def test_a_killed_rank_ends_the_job_with_one_line_and_the_checkpoint_resumes(tiny_coco, tmp_path):
    out = tmp_path / "killed"
    config = _config(tmp_path, tiny_coco, "mask_rcnn", steps=1000, checkpoint_every=2)
    argv = ["train", "--model", "mask_rcnn", "--config", config, "--out", str(out), "--batch-size", "1"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    job = subprocess.Popen(
        [sys.executable, "-m", "instseg", *argv, "--nproc", "2"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        deadline = time.monotonic() + 300
        while not (out / "last").exists() or load_meta(out / "last")["step"] < 4:
            assert job.poll() is None and time.monotonic() < deadline, "no checkpoint was written"
            time.sleep(0.2)
        pid = _rank_pid(1, str(out))
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        _, stderr = job.communicate(timeout=120)
    finally:
        if job.poll() is None:
            job.kill()
    assert job.returncode == 2
    message = stderr.strip().splitlines()[-1]
    assert message.startswith("instseg: error: rank 1 of 2 was killed by SIGKILL; every rank was stopped")
    assert f"last good checkpoint: {out / 'last'} (step " in message
    step = load_meta(out / "last")["step"]
    assert step >= 4 and step % 2 == 0
    assert all(torch.isfinite(w).all() for w in load_weights(out / "last").values())

    # another number of processes would not continue the same data order: refused, saying why
    other = instseg(*argv, "--resume", str(out / "last"), "--steps", str(step + 2))
    assert other.returncode == 2 and "trained by 2 process(es)" in other.stderr
    assert "--nproc 2" in other.stderr
    resumed = instseg(*argv, "--resume", str(out / "last"), "--steps", str(step + 2), "--nproc", "2")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert load_meta(out / "last")["step"] == step + 2


def test_divergence_stops_every_rank_with_one_line_and_a_finite_checkpoint(tiny_coco, tmp_path):
    out = tmp_path / "diverged"
    config = _config(tmp_path, tiny_coco, "condinst", steps=50, checkpoint_every=1, lr=1e4)
    done = instseg(
        "train", "--model", "condinst", "--config", config, "--out", str(out), "--batch-size", "1",
        "--nproc", "2", "--clip-grad", "none",
    )  # fmt: skip
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert lines[-1].startswith("instseg: error: rank ") and "every rank was stopped" in lines[-1]
    assert any("not finite" in line or "loss is nan" in line or "loss is inf" in line for line in lines)
    step = load_meta(out / "last")["step"]
    assert 1 <= step < 50
    assert all(torch.isfinite(w).all() for w in load_weights(out / "last").values())
