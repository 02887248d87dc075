"""The bundled ``nuclei`` model: train it, pack it into the package, score it, write its model card.

The recipe is the DSB2018 benchmark's (``benchmarks/dsb2018.py``: 2 random
256-px crops per step, AdamW 5e-4, cosine over a wall-clock budget, then
BatchNorm statistics) with a longer budget, for the YOLACT ``realtime_nuclei``
preset: of the families, the one with the best mask AP per parameter and the
fastest on CPU (BENCHMARKS.md).

    python benchmarks/nuclei_model.py --budget-min 90                       # train, then pack
    python benchmarks/nuclei_model.py --checkpoint runs/bench/nuclei_model_90/checkpoint   # pack a run

Packing writes ``src/instseg/assets/models/nuclei/model.safetensors`` (weights
in half precision, BatchNorm statistics in single; metadata in the file's
header) and ``MODEL_CARD.md`` beside it, with the packed file's own scores on
DSB2018 val (98 images, maxDets 1/10/500) and on the 10 bundled val images.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import save_file

import instseg
from instseg.engine import checkpoint as ckpt
from instseg.engine.pretrained import CARD, models_folder
from instseg.models.build import count_parameters

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "dsb2018"
FAMILY, PRESET = "yolact", "realtime_nuclei"
MAX_DETS = (1, 10, 500)
FULL_PRECISION = ("running_mean", "running_var")  # BatchNorm statistics: small, and their range is wider


def train(budget_min: float, seed: int, out: Path) -> Path:
    cmd = [sys.executable, str(ROOT / "benchmarks" / "dsb2018.py"), "--model", FAMILY, "--preset", PRESET]
    cmd += ["--budget-min", str(budget_min), "--out", str(out)]
    cmd += ["--set", f"seed={seed}", "keep_every=2000", "checkpoint_every=1000"]
    subprocess.run(cmd, check=True)
    return out / "checkpoint"


def half(weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Float weights in half precision, except BatchNorm statistics and any value half cannot hold."""
    packed = {}
    for name, w in weights.items():
        small = w.is_floating_point() and not name.endswith(FULL_PRECISION)
        packed[name] = w.half() if small and bool(w.abs().max() < 6e4) else w
    return packed


def pack(checkpoint: Path, name: str) -> Path:
    """Write the bundled model atomically: a temporary file, then a rename."""
    meta = ckpt.load_meta(checkpoint)
    train_config = meta.get("train_config", {})
    meta = {
        k: v for k, v in meta.items() if k in ("instseg_version", "config_version", "family", "model_config")
    } | {
        "categories": meta["categories"],
        "step": meta.get("step"),
        "bundled_name": name,
        # local paths mean nothing to a user: say what the data was instead
        "train_config": train_config | {"data": "DSB2018 stage-1 train split (461 images)", "out": None},
    }
    meta["train_config"].pop("images", None)
    folder = models_folder() / name
    folder.mkdir(parents=True, exist_ok=True)
    final = folder / ckpt.WEIGHTS
    tmp = final.with_suffix(".tmp")
    save_file(half(ckpt.load_weights(checkpoint)), str(tmp), metadata={"instseg": json.dumps(meta)})
    os.replace(tmp, final)
    return final


def score(model: str | Path, data: Path, split: str) -> dict:
    predictor = instseg.load(model, device="cpu")
    ev = instseg.evaluate(predictor, data, split, max_dets=list(MAX_DETS), progress=False)
    segm, boundary, bbox = (ev.metrics[k] for k in ("segm", "boundary", "bbox"))
    return {
        "mask_AP": segm["AP"],
        "mask_AP50": segm["AP50"],
        "mask_AP75": segm["AP75"],
        "boundary_AP": boundary["AP"],
        "box_AP": bbox["AP"],
        "s_per_image": ev.seconds_per_image,
    }


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").is_file() else []:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.machine()


def row(label: str, s: dict) -> str:
    cells = [s["mask_AP"], s["mask_AP50"], s["mask_AP75"], s["boundary_AP"], s["box_AP"], s["s_per_image"]]
    return f"| {label} | " + " | ".join(f"{c:.3f}" for c in cells) + " |"


HEADER = (
    "| weights, data | mask AP | AP50 | AP75 | Boundary AP | box AP | s/image |\n"
    "|---|---|---|---|---|---|---|"
)


def write_card(folder: Path, meta: dict, scores: dict[str, str], params_m: float, size_mb: float) -> Path:
    tc = meta["train_config"]
    minutes = tc["time_budget_s"] / 60
    recipe = "\n".join(
        [
            f"`python benchmarks/nuclei_model.py --budget-min {minutes:.0f} --seed {tc['seed']}`",
            f"(from scratch, no pretrained backbone): {meta['step']} steps of {tc['batch_size']} random",
            f"{tc['crop_size']}-px crops after a log-uniform rescale in {tc['scale_range']}, horizontal",
            f"and vertical flips, colour jitter {tc['color_jitter']}; AdamW lr {tc['lr']}, weight decay",
            f"{tc['weight_decay']}, {tc['warmup_steps']} warm-up steps then cosine over the",
            f"{minutes:.0f}-minute budget, gradient clipping at {tc['clip_grad']}; then BatchNorm",
            f"statistics over {tc['precise_bn_batches']} batches. Trained on {scores['machine']}.",
        ]
    )
    text = f"""# instseg `nuclei`: YOLACT `realtime_nuclei` trained on DSB2018

A class-agnostic nucleus segmenter (one class, `nucleus`) for fluorescence,
brightfield and stained-tissue microscopy, shipped inside the package so that
`instseg predict --model nuclei IMAGES --out DIR` and `instseg.load("nuclei")`
work with no training and no download.

## Model
- Family: YOLACT (`{meta["family"]}`), preset `{PRESET}`: half-width ResNet-18 with
  BatchNorm, a 64-channel FPN on P2-P6, one-conv towers, 16 prototypes at 1/4
  resolution, IoU-aware ranking and maskness rescoring, up to
  {meta["model_config"]["detections_per_image"]} detections per image, images at their own scale.
- {params_m:.2f} M parameters; {size_mb:.1f} MB on disk (weights in half precision,
  BatchNorm statistics in single; they load into a float32 model).

## Data and licence
Trained on the DSB2018 stage-1 training set (BBBC038v1, Caicedo et al.,
"Nucleus segmentation across imaging experiments: the 2018 Data Science Bowl",
Nature Methods 2019), community-fixed annotations, released under **CC0 1.0**:
the project's 461-image train split. Scores below are on its 98-image val split,
which the model never saw; the 10 bundled demo val images are a subset of it.
Cite BBBC038 when you report results of this model.

## Training recipe
{recipe}

## Validation (maxDets 1/10/500, instseg's evaluator)
{HEADER}
{scores["val_packed"]}
{scores["val_full"]}
{scores["mini"]}

`s/image` is forward + mask pasting per val image on the machine above, 2 threads.
Measured {scores["date"]} by `benchmarks/nuclei_model.py`.

## Limits
- One class: it separates nuclei, it does not classify them.
- Trained on 461 images of 2018 data: other stains, magnifications or
  modalities may need fine-tuning (`instseg train --init nuclei --data YOURS`).
- Nuclei much larger than ~200 px across at the input's scale are outside what it saw;
  resize such images first.
- Seen in the demo's pictures (`instseg demo --minutes 0`): on stained tissue
  and on bright, saturated clusters of nuclei it finds fewer nuclei at score
  >= 0.5 than on isolated fluorescent ones.
"""
    card = folder / CARD
    card.write_text(text)
    return card


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, help="pack this run's checkpoint instead of training")
    parser.add_argument("--budget-min", type=float, default=90.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--name", default="nuclei")
    args = parser.parse_args()
    if not args.data.is_dir():
        print(f"{args.data}: DSB2018 not found (expected ../shared/data/dsb2018)", file=sys.stderr)
        return 2
    checkpoint = args.checkpoint
    if checkpoint is None:
        out = args.out or Path("runs/bench") / f"nuclei_model_{args.budget_min:g}_seed{args.seed}"
        checkpoint = train(args.budget_min, args.seed, out)
    packed = pack(checkpoint, args.name)
    from instseg.demo import demo_data

    scores = {
        "val_packed": row("packed (half), DSB2018 val", score(packed, args.data, "val")),
        "val_full": row("as trained (single), DSB2018 val", score(checkpoint, args.data, "val")),
        "mini": row("packed (half), the 10 bundled val images", score(packed, demo_data(), "val")),
        "machine": f"{cpu_name()} ({os.cpu_count()} cores), torch {torch.__version__}",
        "date": time.strftime("%Y-%m-%d"),
    }
    params = count_parameters(instseg.load(packed, device="cpu").model) / 1e6
    card = write_card(packed.parent, ckpt.load_meta(packed), scores, params, packed.stat().st_size / 1e6)
    print(HEADER)
    print("\n".join(scores[k] for k in ("val_packed", "val_full", "mini")))
    print(f"wrote {packed} ({packed.stat().st_size / 1e6:.1f} MB) and {card}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
