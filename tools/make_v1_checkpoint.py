"""Write the test fixture ``tests/fixtures/condinst_v1``: a checkpoint in the layout of config version 1
(before every meaning had one field name), and what ``instseg.load(...).predict`` returned for it then.

Run it against the code of that version (commit 5112b29) to regenerate the fixture:

    git worktree add /tmp/v1 5112b29
    PYTHONPATH=/tmp/v1/src python tools/make_v1_checkpoint.py tests/fixtures/condinst_v1

A small CondInst with random weights and BatchNorm (so that the inference copy folds it), its mask
losses under their version-1 names: ``mask_weight`` was the Dice weight and ``mask_bce_weight`` the BCE
weight.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from safetensors.torch import save_file

import instseg
from instseg.config import config_to_dict
from instseg.engine.checkpoint import save_checkpoint
from instseg.models.build import build_model, model_config

OPTIONS = {
    "backbone": "mobilenet_v3_small",
    "norm": "bn",
    "fpn_channels": 16,
    "head_channels": 16,
    "head_convs": 1,
    "mask_branch_channels": 16,
    "mask_branch_convs": 1,
    "mask_weight": 1.0,  # version 1: Dice
    "mask_bce_weight": 0.5,  # version 1: BCE
    "score_threshold": 0.0,
    "mask_threshold": 0.4,
    "detections_per_image": 20,
}


def fixture_image() -> torch.Tensor:
    """The image the expected outputs were predicted on (the test makes the same one)."""
    return torch.rand(3, 72, 88, generator=torch.Generator().manual_seed(7))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    args = parser.parse_args()
    torch.manual_seed(0)
    cfg = model_config("condinst", "nuclei", OPTIONS)
    model = build_model("condinst", cfg, 2)
    meta = {
        "instseg_version": "0.1.0",
        "family": "condinst",
        "model_config": config_to_dict(cfg),
        "categories": [
            {"id": 1, "name": "a", "supercategory": ""},
            {"id": 2, "name": "b", "supercategory": ""},
        ],
        "step": 0,
    }
    save_checkpoint(args.out / "checkpoint", model.state_dict(), meta)
    out = instseg.load(args.out / "checkpoint", device="cpu").predict(fixture_image())
    expected = {
        "boxes": out.boxes,
        "labels": out.labels,
        "scores": out.scores,
        "masks": out.masks.to(torch.uint8),
    }
    save_file({k: v.contiguous() for k, v in expected.items()}, str(args.out / "expected.safetensors"))
    print(f"{args.out}: {len(out)} instances")


if __name__ == "__main__":
    main()
