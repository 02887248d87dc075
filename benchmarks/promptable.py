"""SAM speed on this CPU: ``set_image`` (the encoder, once per image), one prompt after it, and automatic
mask generation per image, for the CPU-trainable ``nuclei`` preset and the official ``vit_b`` shapes.

Untrained (random) weights unless ``--checkpoint`` is given: the encoder and the
per-prompt decoder cost the same whatever the weights; automatic mask
generation's time depends on how many masks pass its filters, so it is only
reported for a checkpoint. Median of ``--runs`` after warm-up, 2 threads.

    python benchmarks/promptable.py --runs 10
    python benchmarks/promptable.py --checkpoint runs/sam/checkpoint --images ../shared/data/dsb2018/val

With ``--data`` (a COCO dataset folder) the checkpoint is also evaluated
interactively on its val split (``eval/interactive.py``: mIoU after 1/3/5
clicks, NoC@85/90, box-prompt mIoU), beside ``--baseline``: an instance
model's checkpoint answering each click with its best-scoring mask that fits
the clicks (``InstanceBaseline``); with ``--auto-ap`` its automatic masks are
scored on that split as an instance model's are (class-agnostic mask AP,
maxDets 1/10/500), ``--set`` changing automatic-mask fields; with ``--readings``
every output of the decoder is scored at the first click.

    python benchmarks/promptable.py --checkpoint runs/bench/sam/checkpoint \
        --data ../shared/data/dsb2018 --baseline nuclei --max-objects 10 --auto-ap
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Iterable

import torch
from dsb2018 import machine  # benchmarks/dsb2018.py: the CPU's vector units as torch uses them
from latency import _timed  # benchmarks/latency.py: median milliseconds after warm-up

from instseg.config import field_values
from instseg.data.images import list_images, read_image
from instseg.models.build import build_model, model_config
from instseg.prompt_predictor import PromptPredictor


def interactive(args: argparse.Namespace, predictor: PromptPredictor) -> None:
    import instseg
    from instseg.data.coco import CocoIndex, resolve_source
    from instseg.eval.interactive import InstanceBaseline, coco_objects, evaluate_interactive

    index = CocoIndex(resolve_source(args.data, "val"))
    models = {f"SAM {args.checkpoint}": predictor}
    if args.baseline:
        models[f"baseline {args.baseline}"] = InstanceBaseline(
            instseg.load(args.baseline, device="cpu").predict
        )
    for name, model in models.items():
        started = time.perf_counter()
        report = evaluate_interactive(model, coco_objects(index, args.max_objects), args.max_clicks)
        print(f"\n{name} ({time.perf_counter() - started:.0f} s)\n{report.format()}", flush=True)
    if args.readings:
        first_click_readings(predictor, coco_objects(index, args.max_objects), args.radii)
    if args.auto_ap:
        started = time.perf_counter()
        predictor = instseg.load(args.checkpoint, device="cpu", **field_values(args.set))
        ev = instseg.evaluate(predictor, args.data, max_dets=(1, 10, 500), class_agnostic=True)
        segm, boundary = ev.metrics["segm"], ev.metrics["boundary"]
        per_image = (time.perf_counter() - started) / len(index.images)
        print(
            f"\nautomatic masks on val ({per_image:.1f} s/image): mask AP {segm['AP']:.3f}, "
            f"AP50 {segm['AP50']:.3f}, AP75 {segm['AP75']:.3f}, Boundary AP {boundary['AP']:.3f}",
            flush=True,
        )


def first_click_readings(predictor: PromptPredictor, images: Iterable, radii: list[float]) -> None:
    """Every output of the decoder at the evaluation's first click (each object's pixel farthest from
    its boundary): the IoU each reading reaches, the IoU it predicts for itself (and how closely that
    follows the true one), and its area over the object's; then what picking by predicted IoU, or by
    stability score, gives against the best reading (the oracle). Tells a wrong pick from readings
    that are all wrong. With ``radii`` (a model with click maps), the same click drawn as disks of
    other radii: a reading whose area follows the disk, not the object, is an echo of the disk."""
    import numpy as np

    from instseg.eval.interactive import farthest_from_boundary, iou
    from instseg.models.sam.mask_decoder import stability

    encoder = predictor.model.prompt_encoder
    drawn = [encoder.click_radius, *radii]
    true, said, area, stable = [], [], [], []  # [objects, radii, outputs]
    sizes = []
    for image, truths in images:
        predictor.set_image(image)
        for truth in truths:
            xy, _ = farthest_from_boundary(truth)
            points = (torch.tensor([[xy]], dtype=torch.float32), torch.ones(1, 1))
            rows = []
            for radius in drawn:
                encoder.click_radius = radius
                with torch.no_grad():
                    logits, predicted, masks = predictor.decode(points, None, None, None)  # every output
                rows.append(
                    (
                        [iou(m.numpy(), truth) for m in masks[0]],
                        predicted[0].tolist(),
                        [float(m.sum()) for m in masks[0]],
                        stability(logits[0], predictor.model.cfg.stability_offset).tolist(),
                    )
                )
            true.append([r[0] for r in rows])
            said.append([r[1] for r in rows])
            area.append([r[2] for r in rows])
            stable.append([r[3] for r in rows])
            sizes.append(float(truth.sum()))
    encoder.click_radius = drawn[0]
    true, said, area, sizes = np.array(true), np.array(said), np.array(area), np.array(sizes)
    stable = np.array(stable)
    ratio = area / sizes[:, None, None]
    print(f"\nfirst click, every output ({len(true)} objects; output 0 answers several prompts)")
    print(
        "| output | mean IoU | mean predicted IoU | predicted against true: correlation "
        "| median area / object's |\n|---|---|---|---|---|"
    )
    for k in range(true.shape[2]):
        t, p, r = true[:, 0, k], said[:, 0, k], ratio[:, 0, k]
        follows = np.corrcoef(p, t)[0, 1]
        print(f"| {k} | {t.mean():.3f} | {p.mean():.3f} | {follows:.2f} | {np.median(r):.2f} |")
    picked = said[:, :, 1:].argmax(2) + 1  # [objects, radii]
    chosen = np.take_along_axis(true, picked[:, :, None], 2)[:, :, 0]
    chosen_area = np.take_along_axis(area, picked[:, :, None], 2)[:, :, 0]
    by_stability = np.take_along_axis(true[:, 0], stable[:, 0, 1:].argmax(1)[:, None] + 1, 1)
    print(
        f"picked by predicted IoU among 1-{true.shape[2] - 1}: {chosen[:, 0].mean():.3f}; "
        f"by stability: {by_stability.mean():.3f}; best of them (oracle): {true[:, 0, 1:].max(1).mean():.3f}"
    )
    small = sizes < np.median(sizes)
    print(
        f"\n| click disk radius | mIoU@1 | median area / object's | median area, smaller / larger half "
        f"(objects: {np.median(sizes[small]):.0f} / {np.median(sizes[~small]):.0f} px) |\n|---|---|---|---|"
    )
    for j, radius in enumerate(drawn):
        print(
            f"| {radius:g} | {chosen[:, j].mean():.3f} | {np.median(chosen_area[:, j] / sizes):.2f} "
            f"| {np.median(chosen_area[small, j]):.0f} / {np.median(chosen_area[~small, j]):.0f} |"
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="+", default=["nuclei", "vit_b"])
    parser.add_argument("--size", type=int, default=512, help="side of the square test image")
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--checkpoint", help="a trained SAM: also time automatic mask generation")
    parser.add_argument("--images", nargs="*", default=[])
    parser.add_argument("--data", help="COCO dataset folder: interactive metrics on its val split")
    parser.add_argument("--baseline", help="an instance model's checkpoint, answering clicks with its masks")
    parser.add_argument("--max-objects", type=int, default=10, help="the largest N objects of each image")
    parser.add_argument("--max-clicks", type=int, default=20)
    parser.add_argument("--auto-ap", action="store_true", help="with --data: automatic masks' AP on val")
    parser.add_argument("--set", nargs="*", default=[], metavar="FIELD=VALUE", help="automatic-mask fields")
    parser.add_argument(
        "--readings", action="store_true", help="with --data: every output at the first click"
    )
    parser.add_argument(
        "--radii",
        type=float,
        nargs="*",
        default=[],
        help="with --readings: the click also drawn at these radii",
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    image = torch.rand(3, args.size, args.size, generator=torch.Generator().manual_seed(0))
    click = [[args.size / 2, args.size / 2]]
    rows = []
    predictors = {p: PromptPredictor(build_model("sam", model_config("sam", p), 1)) for p in args.presets}
    if args.checkpoint:
        predictors[args.checkpoint] = PromptPredictor.from_checkpoint(args.checkpoint, "cpu")
    for name, predictor in predictors.items():
        with torch.no_grad():
            encode_ms = _timed(lambda p=predictor: p.set_image(image), max(1, args.runs // 3), 1)
            prompt_ms = _timed(lambda p=predictor: p.predict(points=click), args.runs * 3, 3)
            box_ms = _timed(lambda p=predictor: p.predict(box=[10, 10, 80, 90]), args.runs * 3, 3)
        row = {
            "model": name,
            "size": args.size,
            "set_image_ms": encode_ms,
            "click_ms": prompt_ms,
            "box_ms": box_ms,
        }
        if name == args.checkpoint and args.images:
            model = predictor.model
            paths = list_images(args.images)
            seconds = []
            with torch.no_grad():
                for path in paths:
                    pixels = read_image(path).float() / 255
                    start = time.perf_counter()
                    out = model([pixels])[0]
                    seconds.append(time.perf_counter() - start)
            row |= {"automatic_s_per_image": statistics.mean(seconds), "masks": len(out["scores"])}
        rows.append(row)
        print(json.dumps(row), flush=True)
    if args.data and args.checkpoint:
        interactive(args, predictors[args.checkpoint])
    stamp = time.strftime("%Y-%m-%d %H:%M")
    print(f"\n{stamp}, {machine()}")
    print("| model | input | set_image ms | one click ms | one box ms |")
    print("|---|---|---|---|---|")
    for r in rows:
        cells = [
            r["model"],
            r["size"],
            f"{r['set_image_ms']:.0f}",
            f"{r['click_ms']:.1f}",
            f"{r['box_ms']:.1f}",
        ]
        print("| " + " | ".join(map(str, cells)) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
