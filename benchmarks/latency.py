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
    python benchmarks/latency.py --sizes 512 --onnx --only yolact:realtime_nuclei mask_rcnn:nuclei

``--onnx`` also exports every row's model (``instseg export``: the whole pipeline in one graph) and
times the graph in ONNX Runtime on the same image, beside the eager time; the peers are exported by
ultralytics and timed through its own ``predict`` on the ``.onnx`` file (its pre- and
postprocessing counted), in the same run.

With ``--peer-python`` (default: ``.venv-peers/bin/python`` when it exists) the
same run times ultralytics YOLOv8n-seg, YOLO11n-seg and YOLO26n-seg, built from their YAML
in that separate environment (``benchmarks/peers/ultralytics_latency.py``),
and prints each instseg model's end-to-end time as a ratio of theirs.
Set the peer environment up with::

    python -m venv .venv-peers
    echo "$PWD/.venv/lib/python3.11/site-packages" > .venv-peers/lib/python3.11/site-packages/instseg.pth
    # AGPL: a peer to measure against, never a dependency; onnx and onnxslim for its ONNX export
    .venv-peers/bin/pip install ultralytics onnx onnxslim
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
from instseg.engine import checkpoint as ckpt
from instseg.engine.pretrained import bundled_checkpoint
from instseg.export.onnx import EXPORTABLE, OnnxModel, export_onnx
from instseg.models.build import FAMILIES, build_model, checkpoint_meta, count_parameters, model_config
from instseg.models.fusion import inference_model
from instseg.structures import Category

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
    name: str,
    preset: str,
    size: int,
    runs: int,
    warmup: int,
    plain: bool,
    classes: int = 80,
    onnx_dir: Path | None = None,
) -> dict[str, float]:
    """Times the copy ``predict`` runs (BatchNorm folded, channels-last); ``plain``: also the model
    as built; ``onnx_dir``: also the model exported there, in ONNX Runtime."""
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
        row["detections"] = len(model([image])[0]["scores"])
        if plain:
            row["plain_total_ms"] = _timed(lambda: built([image]), runs, warmup)
    if onnx_dir is not None and name in EXPORTABLE:  # sam exports as two prompt graphs, not timed here
        source = onnx_dir / f"{name}-{preset}-{size}"
        categories = [Category(i + 1, f"class{i + 1}") for i in range(classes)]
        ckpt.save_checkpoint(source, built.state_dict(), checkpoint_meta(name, cfg, categories))
        graph = OnnxModel(export_onnx(source, source.with_suffix(".onnx")), torch.get_num_threads())
        row["onnx_ms"] = _timed(lambda: graph([image]), runs, warmup)
    return row


def measure_checkpoint(
    path: str, size: int, runs: int, warmup: int, data: Path, onnx_dir: Path | None = None
) -> dict[str, float]:
    """A trained checkpoint's ``predict`` copy on the first ``runs`` val images at SIZE x SIZE;
    ``onnx_dir``: also the checkpoint exported there, in ONNX Runtime, on the same images."""
    predictor = instseg.load(path, device="cpu")
    model = predictor.inference
    images = val_images(data, runs, size)
    with torch.inference_mode():
        times, detections = timed_predictions(model, images, warmup)
        batch, _ = model.transform([images[0]])
        forward = _timed(lambda: model.backbone(batch.tensors), runs, warmup)
    row = {
        "total_ms": statistics.median(times) * 1000,
        "backbone_fpn_ms": forward,
        "params_M": count_parameters(predictor.model) / 1e6,
        "detections": statistics.median(detections),
    }
    if onnx_dir is not None:
        out = onnx_dir / f"{Path(path).name}-{size}.onnx"
        graph = OnnxModel(export_onnx(bundled_checkpoint(path) or path, out), torch.get_num_threads())
        onnx_times, _ = timed_predictions(graph, images, warmup)
        row["onnx_ms"] = statistics.median(onnx_times) * 1000
    return row


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
    onnx: bool,
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
        cmd += ["--onnx-dir", config] if onnx else []
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
    parser.add_argument("--onnx", action="store_true", help="also time every model exported, in ONNX Runtime")
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
    onnx = " ONNX Runtime ms | detections |" if args.onnx else ""
    head = "| model (untrained unless named) | input | params (M) | backbone+FPN ms | end-to-end ms |"
    print(f"{head}{plain}{onnx}")
    print("|---|---|---|---|---|" + ("---|" if args.plain else "") + ("---|---|" if args.onnx else ""))
    ours = {}
    with tempfile.TemporaryDirectory() as tmp:
        onnx_dir = Path(tmp) if args.onnx else None
        for size in args.sizes:
            for name, preset in rows:
                r = measure(name, preset, size, args.runs, args.warmup, args.plain, args.classes, onnx_dir)
                ours[(name, preset, size)] = r
                print(f"| {name} `{preset}` | {size} | {_cells(r, args.plain, args.onnx)}", flush=True)
            for path in args.checkpoints:
                r = measure_checkpoint(path, size, args.runs, args.warmup, args.data, onnx_dir)
                ours[(path, "trained", size)] = r
                name = f"{path} (trained, {r['detections']:.0f} detections)"
                print(f"| {name} | {size} | {_cells(r, args.plain, args.onnx)}", flush=True)
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
        args.onnx,
    )
    print("\n| peer (ultralytics, from YAML) | input | params (M) | network ms (fused) | predict ms |")
    print("|---|---|---|---|---|")
    for p in peers:
        forward = (
            f"{p['forward_ms']:.0f}"
            if "forward_ms" in p
            else f"({p['detections']:.0f} detections)"
            if "detections" in p
            else "-"
        )
        print(f"| {p['model']} | {p['size']} | {p['params_M']:.1f} | {forward} | {p['total_ms']:.0f} |")
    references = sorted({p["model"] for p in peers if "(trained" not in p["model"]})
    print("\n| instseg model | input | " + " | ".join(f"end-to-end / {m} predict" for m in references) + " |")
    print("|---|---|" + "---|" * len(references))
    for (name, preset, size), r in ours.items():
        cells = []
        for model in references:
            ref = [p["total_ms"] for p in peers if p["model"] == model and p["size"] == size]
            ours_ms = r.get("onnx_ms") if model.endswith("onnx)") else r["total_ms"]
            cells.append(f"{ours_ms / ref[0]:.2f}x" if ref and ours_ms else "-")
        print(f"| {name} `{preset}` | {size} | " + " | ".join(cells) + " |")
        for p in peers:  # trained against trained: eager against the peer's PyTorch, ONNX against its ONNX
            if "(trained" in p["model"] and p["size"] == size and preset == "trained":
                ours_ms = r.get("onnx_ms") if p["model"].endswith("onnx)") else r["total_ms"]
                if ours_ms:
                    print(f"| {name} / {p['model']} | {size} | {ours_ms / p['total_ms']:.2f}x |")
    return 0


def _cells(r: dict[str, float], plain: bool, onnx: bool) -> str:
    """The row's cells after its name and input size."""
    cells = [f"{r['params_M']:.1f}", f"{r['backbone_fpn_ms']:.0f}", f"{r['total_ms']:.0f}"]
    cells += [f"{r['plain_total_ms']:.0f}"] if plain else []
    if onnx:
        cells += [f"{r['onnx_ms']:.0f}" if "onnx_ms" in r else "-", f"{r['detections']:.0f}"]
    return " | ".join(cells) + " |"


if __name__ == "__main__":
    raise SystemExit(main())
