"""DSB2018 nuclei: train from scratch for a wall-clock budget, evaluate on val (maxDets 1/10/500).

Prints mask AP, AP50, AP75, Boundary AP, box AP, training images/s and inference
s/image, and ranks the run against the peers measured on the headline rows' machine (same split,
same evaluator settings; ``PEERS``).

    python benchmarks/dsb2018.py --model mask_rcnn --preset nuclei --budget-min 30
    python benchmarks/dsb2018.py --model mask_rcnn --preset nuclei --set roi_pooler=pool
    python benchmarks/dsb2018.py --peer yolov8n-seg --budget-min 30   # ultralytics in .venv-peers
    python benchmarks/dsb2018.py --peer cellpose --budget-min 30      # Cellpose 3.1 in .venv-peers

``--peer`` trains a peer from scratch with its own trainer in the separate peer
environment (see ``benchmarks/latency.py`` for its set-up; ``pip install
'cellpose>=3.1,<4'`` there for Cellpose): an ultralytics YOLO-seg on the same
split converted to YOLO-seg labels by instseg's converter, predicting val at
conf 0.001 with up to 500 detections, or Cellpose 3.1 with its own
``train_seg`` (``benchmarks/peers/cellpose_train.py``). Either way the results
are scored with instseg's evaluator, so every row comes from one evaluator.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

import instseg
from instseg.config import field_values
from instseg.models.build import count_parameters

# Peers trained from scratch for 30 minutes with ``--peer`` on the machine of BENCHMARKS.md's
# headline rows (2-core AMD EPYC, idle), scored by the same evaluator; ratios against them mean
# something only for a run on that machine.
PEERS = {
    "Cellpose 3.1 (30 min, 2026-12-02, 2-core AMD EPYC)": 0.472,
    "ultralytics YOLO26n-seg (30 min, 2026-12-03, 2-core AMD EPYC)": 0.048,
    "ultralytics YOLOv8n-seg (30 min, 2026-12-07, 2-core AMD EPYC)": 0.297,
}
DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "dsb2018"
ROOT = Path(__file__).resolve().parents[1]


def machine() -> str:
    """The CPU as a row's kernels used it: the same 2-core host type has reported AVX2 on some days and
    AVX-512 on others, and the steps a budget buys differ with it."""
    capability = torch.backends.cpu.get_cpu_capability()
    return f"{platform.machine()} {capability}, {torch.get_num_threads()} threads, torch {torch.__version__}"


def peer_command(args: argparse.Namespace, out: Path) -> list[str]:
    """The peer's own training and prediction, run in the peer environment; it writes out/results.json."""
    if args.peer == "cellpose":
        script = ROOT / "benchmarks" / "peers" / "cellpose_train.py"
        options = ["--data", str(args.data), "--out", str(out.resolve())]
        options += ["--budget-min", str(args.budget_min)]
        return [str(args.peer_python), str(script), *options]
    from instseg.data.coco import resolve_source
    from instseg.data.convert import coco_to_yolo

    yolo_data = coco_to_yolo(args.data, out / "yolo_data", copy_images=False)
    val = resolve_source(args.data, "val")
    cmd = [
        str(args.peer_python),
        str(ROOT / "benchmarks" / "peers" / "ultralytics_train.py"),
        "--model", args.peer,
        "--data", str(yolo_data),
        "--val-json", str(val.annotations),
        "--val-images", str(val.images),
        "--budget-min", str(args.budget_min),
        "--out", str(out.resolve()),
    ]  # fmt: skip
    return cmd


def run_peer(args: argparse.Namespace, out: Path) -> dict:
    """Train and predict in the peer environment; score here with instseg's evaluator."""
    import matplotlib

    from instseg.data.coco import find_annotations

    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as config:
        (Path(config) / "Ultralytics").mkdir()
        font = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"
        shutil.copy(font, Path(config) / "Ultralytics" / "Arial.ttf")  # else it tries to download Arial
        env = {**os.environ, "YOLO_OFFLINE": "1", "YOLO_CONFIG_DIR": config, "PYTHONPATH": str(ROOT / "src")}
        env["CELLPOSE_LOCAL_MODELS_PATH"] = str(Path(config) / "cellpose")  # nothing is downloaded into ~
        subprocess.run(peer_command(args, out), env=env, check=True)
    started = time.perf_counter()
    report = instseg.evaluate_results(
        out / "results.json", find_annotations(args.data, "val"), max_dets=(1, 10, 500), out=out / "eval"
    )
    segm, boundary, bbox = (report.metrics[k] for k in ("segm", "boundary", "bbox"))
    return {
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "machine": machine(),
        "model": "Cellpose 3.1" if args.peer == "cellpose" else f"ultralytics {args.peer}",
        "budget_min": args.budget_min,
        "mask_AP": segm["AP"],
        "mask_AP50": segm["AP50"],
        "mask_AP75": segm["AP75"],
        "boundary_AP": boundary["AP"],
        "box_AP": bbox["AP"],
        "eval_s": time.perf_counter() - started,
        "out": str(out),
    } | (json.loads((out / "peer_summary.json").read_text()) if (out / "peer_summary.json").is_file() else {})


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="mask_rcnn")
    parser.add_argument("--preset", default="nuclei")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--budget-min", type=float, default=30.0)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument(
        "--set",
        nargs="*",
        default=[],
        metavar="FIELD=VALUE",
        help="model or training config fields, values in YAML syntax",
    )
    parser.add_argument(
        "--peer", default=None, help="a peer instead of instseg: ultralytics (yolo26n-seg) or cellpose"
    )
    parser.add_argument("--peer-python", type=Path, default=ROOT / ".venv-peers" / "bin" / "python")
    args = parser.parse_args()
    if not args.data.is_dir():
        print(f"{args.data}: DSB2018 not found (expected ../shared/data/dsb2018)", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.peer is not None:
        out = args.out or Path("runs/bench") / time.strftime(f"dsb2018-{args.peer}-%Y%m%d-%H%M%S")
        row = run_peer(args, out)
        (out / "benchmark.json").write_text(json.dumps(row, indent=2))
        print(json.dumps(row, indent=2))
        return 0
    overrides = field_values(args.set)
    model_fields = {f for f in instseg.models.build.family(args.model).config.__dataclass_fields__}
    model_options = {k: v for k, v in overrides.items() if k in model_fields}
    train_options = {
        "batch_size": 2,  # more updates beat bigger batches on a 30-minute budget (BENCHMARKS.md)
        "lr": 5e-4,
        "warmup_steps": 30,
        "crop_size": 256,
        "scale_range": (0.8, 1.25),
        "vflip": True,
        "color_jitter": 0.1,
        "workers": 1,
        "threads": 2,
        "eval_max_dets": (1, 10, 500),
        "checkpoint_every": 100,
        "keep_every": 100,
        "log_every": 10,
        "steps": 10**9,
        **{k: v for k, v in overrides.items() if k not in model_fields},
    }
    tag = "-".join([args.model, args.preset, *[f"{k}={v}" for k, v in overrides.items()]])
    out = args.out or Path("runs/bench") / time.strftime(f"dsb2018-{tag}-%Y%m%d-%H%M%S")
    started = time.strftime("%Y-%m-%d %H:%M")
    result = instseg.train(
        args.model,
        args.data,
        preset=args.preset,
        model_options=model_options,
        out=str(out),
        overwrite=True,  # a benchmark run again with the same --out measures again
        time_budget_s=args.budget_min * 60,
        **train_options,
    )
    summary = json.loads((out / "train_summary.json").read_text())
    predictor = instseg.load(result.checkpoint, device="cpu")
    segm, boundary, bbox = (result.metrics[k] for k in ("segm", "boundary", "bbox"))
    row = {
        "date": started,
        "machine": machine(),
        "model": args.model,
        "preset": args.preset,
        "overrides": overrides,
        "budget_min": args.budget_min,
        "steps": result.steps,
        "train_images_per_s": summary["train_images_per_s"],
        "infer_s_per_image": result.seconds_per_image,
        "params_M": count_parameters(predictor.model) / 1e6,
        "mask_AP": segm["AP"],
        "mask_AP50": segm["AP50"],
        "mask_AP75": segm["AP75"],
        "boundary_AP": boundary["AP"],
        "box_AP": bbox["AP"],
        "out": str(out),
    }
    (out / "benchmark.json").write_text(json.dumps(row, indent=2))
    print(json.dumps(row, indent=2))
    print("\n| run | val mask AP | AP50 | AP75 | Boundary AP | box AP | train img/s | infer s/img |")
    print("|---|---|---|---|---|---|---|---|")
    print(
        f"| instseg {tag} | {segm['AP']:.3f} | {segm['AP50']:.3f} | {segm['AP75']:.3f} "
        f"| {boundary['AP']:.3f} "
        f"| {bbox['AP']:.3f} | {row['train_images_per_s']} | {row['infer_s_per_image']:.2f} |"
    )
    for name, ap in PEERS.items():
        print(f"| {name} | {ap:.3f} | | | | | | |  ratio instseg/peer = {segm['AP'] / ap:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
