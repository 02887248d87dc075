"""ONNX Runtime against eager PyTorch on DSB2018 val images: the same detections and the same mask AP.

Each checkpoint is exported with ``instseg export`` (the whole pipeline in the
graph), then both run on the first N val images one after the other:

- detections matched one to one by mask IoU (near-equal scores may swap
  places): the count, the worst matched mask IoU and the worst score
  difference over all images, and the detections either side has without a
  partner within mask IoU 0.99 and 1e-3 in score, with the best score among
  them (a cut-off between near-equal scores keeps different detections);
- mask AP (maxDets 500, as the DSB2018 benchmark scores) of both result sets
  on those N images, and their difference;
- seconds per image of each (reading and RLE encoding excluded).

    python benchmarks/onnx_parity.py --checkpoints nuclei --images 20
    python benchmarks/onnx_parity.py --random condinst:nuclei solov2:nuclei mask2former:nuclei

``--random FAMILY:PRESET`` exports a model with random weights and every
threshold opened (score 0): its AP means nothing, but its hundreds of
detections per image test the graph's selection and mask assembly.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

import instseg
from instseg.data.coco import CocoIndex, resolve_source
from instseg.data.images import read_image
from instseg.engine import checkpoint as ckpt
from instseg.engine.pretrained import bundled_checkpoint
from instseg.eval.report import EvalOptions, evaluate_results
from instseg.export.onnx import export_onnx
from instseg.export.parity import compare_instances
from instseg.models.build import build_model, checkpoint_meta, model_config
from instseg.structures import Category

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "dsb2018"
OPEN_THRESHOLDS = {
    "condinst": {"score_threshold": 0.0, "pre_nms_top": 200, "detections_per_image": 200},
    "yolact": {"score_threshold": 0.0, "pre_nms_top": 200, "detections_per_image": 200},
    "solov2": {"score_threshold": 0.0, "update_threshold": 0.0, "pre_nms_top": 200},
    "mask2former": {"num_queries": 200, "detections_per_image": 200},
    "mask_rcnn": {"score_threshold": 0.0, "detections_per_image": 200},
}


def random_checkpoint(spec: str, root: Path) -> Path:
    family, preset = spec.split(":")
    torch.manual_seed(0)
    cfg = model_config(family, preset, OPEN_THRESHOLDS[family])
    path = root / f"{family}_{preset}"
    ckpt.save_checkpoint(
        path, build_model(family, cfg, 1).state_dict(), checkpoint_meta(family, cfg, [Category(1, "nucleus")])
    )
    return path


def compare(source: Path, name: str, index: CocoIndex, count: int, root: Path) -> dict:
    started = time.perf_counter()
    graph_path = export_onnx(source, root / f"{name}.onnx")
    export_seconds = time.perf_counter() - started
    eager, graph = instseg.load(source, device="cpu"), instseg.load(graph_path)
    infos = index.images[:count]
    timings = {"eager": 0.0, "onnx": 0.0}
    results: dict[str, list] = {"eager": [], "onnx": []}
    counts, worst_iou, worst_score, same_count = 0, 1.0, 0.0, True
    different, best_different = 0, 0.0
    for info in infos:
        image = read_image(index.image_path(info)).float().div_(255.0)
        out = {}
        for key, predictor in (("eager", eager), ("onnx", graph)):
            begin = time.perf_counter()
            out[key] = predictor.predict(image)
            timings[key] += time.perf_counter() - begin
            results[key] += out[key].to_coco(info["id"])
        counts += len(out["eager"])
        parity = compare_instances(out["eager"], out["onnx"])
        same_count = same_count and parity.same_count and parity.labels_agree
        worst_iou = min(worst_iou, parity.worst_iou)
        worst_score = max(worst_score, parity.worst_score_difference)
        different += parity.different
        best_different = max(best_different, parity.best_different_score)
    ids = {info["id"] for info in infos}
    gt = dict(index.dataset)
    gt["images"] = [im for im in gt["images"] if im["id"] in ids]
    gt["annotations"] = [a for a in gt["annotations"] if a["image_id"] in ids]
    options = EvalOptions(iou_types=("segm",), max_dets=(1, 10, 500), matching=False)
    ap = {
        k: evaluate_results(gt, v, options, details=False).coco["segm"].stats["AP"]
        for k, v in results.items()
    }
    return {
        "model": name,
        "images": len(infos),
        "detections": counts,
        "same_count": same_count,
        "worst_iou": worst_iou,
        "worst_score_diff": worst_score,
        "different": different,
        "best_different_score": best_different,
        "ap_eager": ap["eager"],
        "ap_onnx": ap["onnx"],
        "s_eager": timings["eager"] / len(infos),
        "s_onnx": timings["onnx"] / len(infos),
        "export_s": export_seconds,
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--checkpoints", nargs="*", default=["nuclei"], help="paths or bundled model names")
    parser.add_argument("--random", nargs="*", default=[], metavar="FAMILY:PRESET")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--images", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    if not args.data.is_dir():
        print(f"no data at {args.data}", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    index = CocoIndex(resolve_source(args.data, "val"))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        sources = [(Path(bundled_checkpoint(c) or c), c) for c in args.checkpoints]
        sources += [
            (random_checkpoint(spec, root), f"{spec} (random, thresholds open)") for spec in args.random
        ]
        for source, name in sources:
            rows.append(compare(source, name, index, args.images, root))
            print(rows[-1], flush=True)
    print(
        "\n| model | images | detections | same count | worst matched mask IoU | worst score diff "
        "| not shared (best score) | mask AP eager | mask AP ONNX | s/image eager | s/image ONNX | export s |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['model']} | {r['images']} | {r['detections']} | {r['same_count']} | {r['worst_iou']:.4f} "
            f"| {r['worst_score_diff']:.1e} | {r['different']} ({r['best_different_score']:.3f}) "
            f"| {r['ap_eager']:.4f} | {r['ap_onnx']:.4f} | {r['s_eager']:.3f} "
            f"| {r['s_onnx']:.3f} | {r['export_s']:.0f} |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
