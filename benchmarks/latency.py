"""CPU latency of every instseg family: batch 1, fixed threads, median of N runs after warm-up.

Each model is built for 80 classes (``--classes``; the peers too) with its
input resized to exactly SIZE x SIZE (min_size = max_size = SIZE, no fixed
scale) and timed on a photo-like image (smooth noise). Untrained weights give
arbitrary detections, so the forward pass (backbone + heads) and the
postprocessing are timed apart: the forward time is what a trained model costs
too; the postprocessing time depends on how many candidates pass the score
threshold. What is timed is the copy that ``Predictor.predict`` runs
(``models/fusion.py``: BatchNorm folded into its convolution, channels-last
memory); ``--plain`` adds the model as built.

``--checkpoints`` adds trained models as they were trained (their own input
scaling, class count and thresholds), timed end to end on val images resized
to SIZE x SIZE, so the postprocessing handles the detections the model really
makes; the row reports their median count. Give ``--classes`` the
checkpoints' class count so that the peers are built alike (their untrained
networks detect nothing, so their postprocessing costs them almost nothing).

    python benchmarks/latency.py --sizes 512 640 --runs 20

With ``--peer-python`` (default: ``.venv-peers/bin/python`` when it exists) the
same run times ultralytics YOLOv8n-seg and YOLO11n-seg, built from their YAML
in that separate environment (``benchmarks/peers/ultralytics_latency.py``),
and prints each instseg model's end-to-end time as a ratio of YOLO11n-seg's.
Set the peer environment up with::

    python -m venv .venv-peers
    echo "$PWD/.venv/lib/python3.11/site-packages" > .venv-peers/lib/python3.11/site-packages/instseg.pth
    .venv-peers/bin/pip install ultralytics   # AGPL: a peer to measure against, never a dependency
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from inference_split import DEFAULT_DATA, timed_predictions, val_image_files, val_images

import instseg
from instseg.config import field_values
from instseg.models.build import FAMILIES, build_model, count_parameters, model_config
from instseg.models.fusion import inference_model

# (family, preset): the rows; every family registered in models/build.py gets its default preset.
EXTRA_ROWS = [
    ("solov2", "light"),
    ("yolact", "realtime"),
    ("yolact", "realtime_nuclei"),
    ("mask2former", "light"),
]
ROOT = Path(__file__).resolve().parents[1]
PEER_SCRIPT = ROOT / "benchmarks" / "peers" / "ultralytics_latency.py"


def _image(size: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    low = torch.rand((1, 3, size // 16, size // 16), generator=g)
    return F.interpolate(low, size=(size, size), mode="bilinear", align_corners=False)[0]


def _timed(fn, runs: int, warmup: int) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def measure(
    name: str, preset: str, size: int, runs: int, warmup: int, plain: bool, classes: int = 80
) -> dict[str, float]:
    """Times the copy ``predict`` runs (BatchNorm folded, channels-last); ``plain``: also the model
    as built."""
    base, _, fields = preset.partition("+")  # "preset+field=value,field=value": the preset, changed
    changed = field_values(f for f in fields.split(",") if f)
    cfg = model_config(name, base, {**changed, "min_size": size, "max_size": size, "scale": None})
    built = build_model(name, cfg, classes).eval()
    model = inference_model(built)
    image = _image(size)
    with torch.inference_mode():
        total = _timed(lambda: model([image]), runs, warmup)
        batch, _ = model.transform([image])
        forward = _timed(lambda: model.backbone(batch.tensors), runs, warmup)
        row = {"total_ms": total, "backbone_fpn_ms": forward, "params_M": count_parameters(built) / 1e6}
        if plain:
            row["plain_total_ms"] = _timed(lambda: built([image]), runs, warmup)
    return row


def measure_checkpoint(path: str, size: int, runs: int, warmup: int, data: Path) -> dict[str, float]:
    """A trained checkpoint's ``predict`` copy on the first ``runs`` val images at SIZE x SIZE."""
    predictor = instseg.load(path, device="cpu")
    model = predictor.inference
    images = val_images(data, runs, size)
    with torch.inference_mode():
        times, detections = timed_predictions(model, images, warmup)
        batch, _ = model.transform([images[0]])
        forward = _timed(lambda: model.backbone(batch.tensors), runs, warmup)
    return {
        "total_ms": statistics.median(times) * 1000,
        "backbone_fpn_ms": forward,
        "params_M": count_parameters(predictor.model) / 1e6,
        "detections": statistics.median(detections),
    }


def peer_rows(
    python: Path,
    sizes: list[int],
    runs: int,
    warmup: int,
    threads: int,
    classes: int,
    trained: list[str],
    images: list[Path],
    conf: float,
) -> list[dict]:
    """YOLO-seg timings from the peer environment, offline, with a private settings folder and font."""
    import matplotlib

    with tempfile.TemporaryDirectory() as config:
        font = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"
        (Path(config) / "Ultralytics").mkdir()
        shutil.copy(font, Path(config) / "Ultralytics" / "Arial.ttf")  # else it tries to download Arial
        env = {**os.environ, "YOLO_OFFLINE": "1", "YOLO_CONFIG_DIR": config}
        cmd = [str(python), str(PEER_SCRIPT), "--sizes", *map(str, sizes), "--runs", str(runs)]
        cmd += ["--warmup", str(warmup), "--threads", str(threads), "--classes", str(classes)]
        if trained:
            cmd += [
                "--trained",
                *trained,
                "--images",
                *map(str, images),
                "--conf",
                str(conf),
                "--max-det",
                "500",
            ]
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        print(f"peer run failed:\n{done.stderr[-2000:]}", file=sys.stderr)
        return []
    return [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[512, 640])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--peer-python", type=Path, default=ROOT / ".venv-peers" / "bin" / "python")
    parser.add_argument("--only", nargs="*", default=None, help="family:preset[+field=value,...]")
    parser.add_argument("--plain", action="store_true", help="also time models as built (NCHW, BN)")
    parser.add_argument("--classes", type=int, default=80, help="class count of every model, peers included")
    parser.add_argument("--checkpoints", nargs="*", default=[], help="trained models, timed on val images")
    parser.add_argument(
        "--data", type=Path, default=DEFAULT_DATA, help="COCO dataset of --checkpoints' images"
    )
    parser.add_argument("--peer-weights", nargs="*", default=[], help="trained ultralytics .pt, timed alike")
    parser.add_argument("--peer-conf", type=float, default=0.05, help="--peer-weights score threshold")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = [(name, "default") for name in FAMILIES] + EXTRA_ROWS
    if args.only is not None:
        rows = [tuple(r.split(":")) for r in args.only]
    print(
        f"{time.strftime('%Y-%m-%d %H:%M')}, {platform.machine()}, torch {torch.__version__}, "
        f"{args.threads} threads, batch 1, median of {args.runs} after {args.warmup} warm-up runs, "
        f"{args.classes} classes"
    )
    plain = " as built ms |" if args.plain else ""
    print(f"| model (untrained unless named) | input | params (M) | backbone+FPN ms | end-to-end ms |{plain}")
    print("|---|---|---|---|---|" + ("---|" if args.plain else ""))
    ours = {}
    for size in args.sizes:
        for name, preset in rows:
            r = measure(name, preset, size, args.runs, args.warmup, args.plain, args.classes)
            ours[(name, preset, size)] = r
            extra = f" {r['plain_total_ms']:.0f} |" if args.plain else ""
            print(
                f"| {name} `{preset}` | {size} | {r['params_M']:.1f} | {r['backbone_fpn_ms']:.0f} "
                f"| {r['total_ms']:.0f} |{extra}",
                flush=True,
            )
        for path in args.checkpoints:
            r = measure_checkpoint(path, size, args.runs, args.warmup, args.data)
            ours[(path, "trained", size)] = r
            print(
                f"| {path} (trained, {r['detections']:.0f} detections) | {size} | {r['params_M']:.1f} "
                f"| {r['backbone_fpn_ms']:.0f} | {r['total_ms']:.0f} |",
                flush=True,
            )
    if not args.peer_python.exists():
        print(f"(no peer environment at {args.peer_python}: ultralytics rows skipped)")
        return 0
    images = val_image_files(args.data, args.runs) if args.peer_weights else []
    peers = peer_rows(
        args.peer_python,
        args.sizes,
        args.runs,
        args.warmup,
        args.threads,
        args.classes,
        args.peer_weights,
        images,
        args.peer_conf,
    )
    print("\n| peer (ultralytics, from YAML) | input | params (M) | network ms (fused) | predict ms |")
    print("|---|---|---|---|---|")
    for p in peers:
        forward = f"{p['forward_ms']:.0f}" if "forward_ms" in p else f"({p['detections']:.0f} detections)"
        print(f"| {p['model']} | {p['size']} | {p['params_M']:.1f} | {forward} | {p['total_ms']:.0f} |")
    print("\n| instseg model | input | end-to-end / YOLO11n-seg predict |")
    print("|---|---|---|")
    for (name, preset, size), r in ours.items():
        ref = [p["total_ms"] for p in peers if p["model"] == "yolo11n-seg" and p["size"] == size]
        if ref:
            print(f"| {name} `{preset}` | {size} | {r['total_ms'] / ref[0]:.2f}x |")
        for p in peers:
            if p["model"].endswith("(trained)") and p["size"] == size and preset == "trained":
                print(f"| {name} / {p['model']} | {size} | {r['total_ms'] / p['total_ms']:.2f}x |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
