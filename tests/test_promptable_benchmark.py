"""benchmarks/promptable.py end to end on a tiny SAM with click maps: its options parse and every
report it prints (timings, interactive metrics, first-click readings at other disk radii) comes out."""

import dataclasses
import subprocess
import sys
from pathlib import Path

import torch

from instseg.engine.checkpoint import save_checkpoint
from instseg.models.build import checkpoint_meta
from instseg.models.sam.model import OBJECT, SAM
from tests.models.test_sam import TINY as SAM_TINY

ROOT = Path(__file__).resolve().parents[1]
TINY = dataclasses.replace(SAM_TINY, click_radius=3.0)  # with click maps, so --radii has disks to draw


def test_interactive_report_with_first_click_readings_at_other_radii(tiny_coco, tmp_path):
    torch.manual_seed(0)
    checkpoint = save_checkpoint(
        tmp_path / "sam", SAM(TINY).state_dict(), checkpoint_meta("sam", TINY, list(OBJECT))
    )
    command = [
        sys.executable,
        str(ROOT / "benchmarks" / "promptable.py"),
        "--presets",
        "nuclei",
        "--size",
        "128",  # the timed box prompt reaches x = 90
    ]
    command += ["--runs", "1", "--threads", "1", "--checkpoint", str(checkpoint), "--data", str(tiny_coco)]
    command += ["--max-objects", "2", "--max-clicks", "2", "--readings", "--radii", "1", "8"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    out = done.stdout
    assert "mIoU@1" in out and "first click, every output" in out
    assert "predicted against true: correlation" in out and "by stability: " in out
    lines = out.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("| click disk radius"))
    radii = [line.split("|")[1].strip() for line in lines[header + 2 : header + 5]]
    assert radii == ["3", "1", "8"], out[-1500:]  # the trained radius, then the asked ones
