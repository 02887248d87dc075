"""``instseg <command>``: demo, train, eval, predict, data, import, export, serve.

Training flags are generated from the config dataclasses: every field of
``TrainConfig`` and of the chosen family's config is a ``--flag``, and
``--config FILE.yaml`` takes the same fields; flags win over the file.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from instseg.errors import InstsegError

if TYPE_CHECKING:
    from instseg.predictor import Predictor

SET_HELP = "model config fields for inference, e.g. nms_threshold=0.5 mask_rescore=false (YAML values)"
MODEL_HELP = "a checkpoint directory or .safetensors file, or a bundled model's name (nuclei)"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="instseg", description="Instance segmentation: train, evaluate, predict."
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging and full tracebacks")
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="show the bundled nuclei model, then train, evaluate and show one")
    demo.add_argument("--out", default="runs/demo")
    demo.add_argument(
        "--minutes", type=float, default=5.0, help="training time budget; 0: the bundled model only"
    )
    demo.add_argument("--device", default="auto")
    demo.add_argument("--model", default=None, help="family to train (default: the demo's own choice)")
    demo.add_argument("--preset", default=None)

    train = sub.add_parser(
        "train", help="train a model on COCO-format data (see `instseg train --model M -h`)", add_help=False
    )
    train.add_argument("--model", default=None, help="family (default: mask_rcnn, or --init's)")
    train.add_argument("--preset", default="default")
    train.add_argument("--config", help="YAML file of config fields")
    train.add_argument("--resume", help="checkpoint directory to continue from (e.g. OUT/last)")
    train.add_argument(
        "--nproc",
        type=int,
        default=1,
        help="train as this many processes on this machine (torchrun, DistributedDataParallel; each "
        "takes --batch-size images a step); for several machines run torchrun -m instseg train ...",
    )
    train.add_argument("-h", "--help", action="store_true")

    ev = sub.add_parser(
        "eval",
        help="score a checkpoint on a COCO dataset, or a COCO results JSON against ground truth",
        description="COCO mask/box AP with S/M/L, Boundary AP, LVIS APr/c/f (detected from the data), "
        "per-class AP, TP/FP/FN, and the matching metrics of cell segmentation (precision, recall, F1, "
        "accuracy, PQ at IoU 0.5..0.9). --out writes metrics.json and PR/matching/confusion plots.",
    )
    what = ev.add_mutually_exclusive_group(required=True)
    what.add_argument("--checkpoint", "--model", dest="checkpoint", help=f"model to run; {MODEL_HELP}")
    what.add_argument("--results", help="existing COCO results JSON to score (any toolkit's)")
    ev.add_argument("--data", required=True, help="ground truth: COCO/LVIS JSON or dataset folder")
    ev.add_argument("--split", default="val")
    ev.add_argument("--images", help="image folder, when it cannot be guessed")
    ev.add_argument("--max-dets", type=int, nargs="+", default=None, help="default 1 10 100 (LVIS: 300)")
    ev.add_argument("--no-boundary", action="store_true", help="skip Boundary AP")
    ev.add_argument(
        "--nproc",
        type=int,
        default=1,
        help="predict with this many processes (each a shard of the images); rank 0 scores them all",
    )
    ev.add_argument("--boundary-dilation", type=float, default=0.02, help="Boundary IoU dilation ratio")
    ev.add_argument("--class-agnostic", action="store_true", help="ignore categories when matching")
    lvis = ev.add_mutually_exclusive_group()
    lvis.add_argument("--lvis", dest="lvis", action="store_true", default=None, help="force LVIS federated")
    lvis.add_argument("--no-lvis", dest="lvis", action="store_false", help="plain COCO even on LVIS data")
    ev.add_argument(
        "--matching-score-threshold",
        type=float,
        default=0.5,
        help="the matching metrics count only detections scoring at least this",
    )
    ev.add_argument("--class-aware-matching", action="store_true", help="matching metrics per category")
    from instseg.eval.breakdown import BREAKDOWNS

    ev.add_argument(
        "--breakdown",
        nargs="+",
        choices=BREAKDOWNS,
        default=[],
        help="mask and Boundary AP per bin of: occlusion (the ground truth's occluded_fraction), thinness "
        "(width over length), size (COCO's S/M/L), class",
    )
    ev.add_argument("--no-matching", action="store_true", help="skip the matching metrics")
    ev.add_argument(
        "--task",
        choices=["instances", "panoptic", "semantic"],
        default="instances",
        help="panoptic: PQ/SQ/RQ by COCO's panoptic rule; semantic: mIoU; both from a query-based model "
        "(mask2former), against ground truth painted from the instance annotations (a category's "
        "'isthing' 0 marks stuff)",
    )
    ev.add_argument(
        "--prompts",
        choices=["points", "box"],
        help="a SAM checkpoint prompted object by object: points: mIoU@1/3/5 and NoC@85/90 by the "
        "RITM/SAM click protocol, and box-prompt mIoU; box: box-prompt mIoU (and mIoU@1)",
    )
    ev.add_argument("--max-clicks", type=int, default=20, help="--prompts points: clicks per object")
    ev.add_argument(
        "--max-objects", type=int, default=None, help="--prompts: the largest N objects per image"
    )
    ev.add_argument("--out", help="folder for metrics.json, results.json and plots")
    _add_tile_arguments(ev)
    ev.add_argument("--device", default="auto")
    ev.add_argument("--set", nargs="*", default=[], metavar="FIELD=VALUE", help=SET_HELP)

    from instseg.data.commands import add_data_parser

    add_data_parser(sub)

    pr = sub.add_parser(
        "predict",
        help="predict on images, folders or globs",
        description="Writes COCO results (predictions.json), a uint16 label image per input "
        "(labels/<stem>_labels.png), per-object measurements (objects.csv) and overlays.",
    )
    source = pr.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", "--checkpoint", dest="checkpoint", help=MODEL_HELP)
    source.add_argument("--onnx", help="a graph written by `instseg export`, run with ONNX Runtime")
    pr.add_argument("inputs", nargs="+", metavar="IMAGES")
    pr.add_argument("--out", required=True)
    pr.add_argument("--min-score", type=float, default=0.5, help="keep only instances scoring at least this")
    pr.add_argument("--set", nargs="*", default=[], metavar="FIELD=VALUE", help=SET_HELP)
    pr.add_argument(
        "--points", nargs="+", metavar="X,Y[,LABEL]", help="SAM: clicks, label 1 (default) or 0 (background)"
    )
    pr.add_argument("--box", nargs="+", metavar="X0,Y0,X1,Y1", help="SAM: box prompts, one mask each")
    pr.add_argument("--batch-size", type=int, default=1)
    _add_tile_arguments(pr)
    pr.add_argument("--no-overlays", action="store_true")
    pr.add_argument("--device", default="auto")
    pr.add_argument(
        "--nproc",
        type=int,
        default=1,
        help="predict with this many processes, each a shard of the images; rank 0 writes the tables",
    )

    imp = sub.add_parser("import", help="convert another toolkit's checkpoint into an instseg checkpoint")
    imp.add_argument(
        "format",
        choices=["hf-mask2former", "sam", "torchvision-maskrcnn"],
        help="hf-mask2former: a transformers save_pretrained dir; sam: a segment-anything checkpoint "
        "(sam_vit_b/l/h .pth); torchvision-maskrcnn: a maskrcnn_resnet50_fpn state dict (.pth)",
    )
    imp.add_argument("source", help="the checkpoint to convert")
    imp.add_argument("out", help="instseg checkpoint directory to write")

    exp = sub.add_parser(
        "export",
        help="write a checkpoint as one ONNX graph: image in, final detections out "
        "(sam: x.encoder.onnx, image in, embedding out, and x.decoder.onnx, prompts in, masks out)",
    )
    exp.add_argument("--checkpoint", "--model", dest="checkpoint", required=True, help=MODEL_HELP)
    exp.add_argument("--format", choices=["onnx"], default="onnx")
    exp.add_argument("--out", required=True, help="the .onnx file to write")
    exp.add_argument(
        "--min-score",
        type=float,
        default=None,
        help="raise the candidate score threshold to this (fewer masks, less memory); "
        "default: the model's own threshold, so the graph returns what the model returns",
    )
    exp.add_argument(
        "--coarse",
        action="store_true",
        help="a point-refining model without its point head (refinement does not export)",
    )

    sv = sub.add_parser("serve", help="serve a model over HTTP (JSON API, metrics and a web page at /)")
    sv.add_argument(
        "--checkpoint", "--model", dest="checkpoint", required=True, help=f"{MODEL_HELP}, or .onnx"
    )
    sv.add_argument("--host", default="127.0.0.1", help="address to bind (default: this machine only)")
    sv.add_argument("--port", type=int, default=8000)
    sv.add_argument("--workers", type=int, default=1, help="inference threads")
    sv.add_argument("--queue", type=int, default=8, help="requests that may wait for a worker before 503")
    sv.add_argument("--max-upload-mb", type=float, default=32.0)
    sv.add_argument("--min-score", type=float, default=0.5, help="default score_threshold of /v1/predict")
    sv.add_argument("--device", default="auto")
    _add_tile_arguments(sv)
    return parser


def _add_tile_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--tile",
        type=int,
        default=None,
        metavar="PIXELS",
        help="predict window by window: PIXELS x PIXELS windows (e.g. the training crop size), each "
        "object kept by the window holding its box centre, no NMS; for images far larger than the crops",
    )
    parser.add_argument(
        "--tile-overlap",
        type=int,
        default=None,
        metavar="PIXELS",
        help="default: a quarter of --tile; make it wider than the largest object",
    )


def _tiled(predictor: Predictor, args: argparse.Namespace) -> Predictor:
    """``predictor`` window by window when ``--tile`` asks for it."""
    return predictor if args.tile is None else predictor.tiled(args.tile, args.tile_overlap)


def _without_nproc(argv: Sequence[str]) -> list[str]:
    out, skip = [], False
    for item in argv:
        if skip:
            skip = False
        elif item == "--nproc":
            skip = True
        elif not item.startswith("--nproc="):
            out.append(item)
    return out


def _train(args: argparse.Namespace, rest: list[str], argv: Sequence[str]) -> int:
    from instseg.config import TrainConfig, add_config_flags, config_from_dict, load_yaml, split_fields
    from instseg.distributed import launched
    from instseg.engine.checkpoint import load_meta
    from instseg.engine.fine_tune import fine_tune_config
    from instseg.engine.trainer import train
    from instseg.models.build import family, model_config

    values = load_yaml(args.config) if args.config else {}
    values.pop("model", None)
    first = argparse.ArgumentParser(add_help=False)
    first.add_argument("--init", default=values.get("init"))
    init = first.parse_known_args(rest)[0].init
    name = args.model or (load_meta(init)["family"] if init else "mask_rcnn")  # fine-tuning: its family
    fam = family(name)
    flags = argparse.ArgumentParser(
        prog=f"instseg train --model {name}",
        description="Fields may also come from --config FILE.yaml. With --init CKPT the model is that "
        "checkpoint's family and config (model fields given here change it) and starts from its weights.",
    )
    add_config_flags(flags, TrainConfig, "training")
    add_config_flags(flags, fam.config, f"model ({name})")
    if args.help:
        flags.print_help()
        return 0
    values.update(vars(flags.parse_args(rest)))
    train_values, model_values = split_fields(values, TrainConfig, fam.config)
    cfg = config_from_dict(TrainConfig, train_values)
    if cfg.init:
        name, model_cfg = fine_tune_config(cfg.init, args.model, model_values)
    else:
        model_cfg = model_config(name, args.preset, model_values)
    if args.nproc > 1 and not launched():  # the flags are checked here once, then every rank starts
        from instseg.engine.trainer import last_checkpoint_note
        from instseg.launch import launch_ranks

        try:
            return launch_ranks(args.nproc, _without_nproc(argv))
        except InstsegError as exc:
            raise InstsegError(f"{exc}; {last_checkpoint_note(Path(cfg.out))}") from None
    result = train(cfg, name, model_cfg, resume=args.resume)
    if int(os.environ.get("RANK", "0")) != 0:  # the other ranks of a torchrun job say nothing
        return 0
    print(f"checkpoint: {result.checkpoint}")
    if result.metrics:
        from instseg.eval.coco import format_table

        print(format_table(result.metrics))
    return 0


def _export(args: argparse.Namespace) -> int:
    from instseg.engine.checkpoint import load_meta
    from instseg.export.onnx import export_onnx

    if load_meta(args.checkpoint)["family"] != "sam":
        print(f"wrote {export_onnx(args.checkpoint, args.out, args.min_score, coarse=args.coarse)}")
        return 0
    from instseg.export.prompt_onnx import export_prompt_onnx

    if args.min_score is not None:
        raise InstsegError("--min-score: a sam model's prompt graphs have no score threshold")
    for path in export_prompt_onnx(args.checkpoint, args.out):
        print(f"wrote {path}")
    return 0


def _eval_prompts(args: argparse.Namespace) -> int:
    from instseg.api import load_prompts
    from instseg.data.coco import CocoIndex, resolve_source
    from instseg.eval.interactive import coco_objects, evaluate_interactive

    if args.checkpoint is None:
        raise InstsegError("--prompts needs --checkpoint (a SAM model)")
    predictor = load_prompts(args.checkpoint, args.device)
    index = CocoIndex(resolve_source(args.data, args.split, args.images))
    clicks = args.max_clicks if args.prompts == "points" else 1
    report = evaluate_interactive(predictor, coco_objects(index, args.max_objects), clicks)
    print(report.format())
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        (Path(args.out) / "interactive.json").write_text(json.dumps(report.metrics, indent=2))
        print(f"metrics and IoU histograms: {report.plot(Path(args.out) / 'interactive_iou.png').parent}")
    return 0


def _as_ranks(
    args: argparse.Namespace, argv: Sequence[str], work: Callable[[argparse.Namespace], int]
) -> int:
    """``work(args)`` here, or as ``--nproc`` ranks of this command, each predicting a shard of the images."""
    from instseg import distributed

    if args.nproc > 1 and not distributed.launched():
        from instseg.launch import launch_ranks

        return launch_ranks(args.nproc, _without_nproc(argv))
    try:
        return work(args)
    finally:
        distributed.stop()


def _eval(args: argparse.Namespace, argv: Sequence[str]) -> int:
    if args.prompts:
        return _eval_prompts(args)
    if args.task != "instances":
        return _eval_dense(args)
    if args.results:  # a results file: no model to run, nothing to share out
        return _eval_model(args)
    return _as_ranks(args, argv, _eval_model)


def _eval_dense(args: argparse.Namespace) -> int:
    from instseg.api import load
    from instseg.config import field_values
    from instseg.data.coco import CocoIndex, resolve_source, write_json
    from instseg.engine.dense_evaluation import evaluate_dense, format_dense

    if not args.checkpoint:
        raise InstsegError(f"--task {args.task} runs a model: give --checkpoint, not --results")
    if args.tile is not None:
        raise InstsegError(f"--tile predicts instances by windows; --task {args.task} takes whole images")
    index = CocoIndex(resolve_source(args.data, args.split, args.images), keep_crowd=True)
    predictor = load(args.checkpoint, args.device, **field_values(args.set))
    summary = evaluate_dense(predictor.model, predictor.categories, index, args.task, predictor.device)
    print(format_dense(summary, args.task))
    if args.out:
        path = write_json(summary, Path(args.out) / f"{args.task}.json")
        print(f"metrics: {path}")
    return 0


def _eval_model(args: argparse.Namespace) -> int:
    from instseg import distributed
    from instseg.api import evaluate, evaluate_results, load
    from instseg.config import field_values

    options = {
        "boundary_dilation_ratio": args.boundary_dilation,
        "class_agnostic": args.class_agnostic,
        "lvis": args.lvis,
        "matching": not args.no_matching,
        "matching_score_threshold": args.matching_score_threshold,
        "matching_class_aware": args.class_aware_matching,
        "breakdowns": tuple(args.breakdown),
    }
    if args.max_dets:
        options["max_dets"] = args.max_dets
    elif args.lvis:
        options["max_dets"] = [300]
    if args.results:
        report = evaluate_results(args.results, args.data, not args.no_boundary, args.out, **options)
    else:
        predictor = _tiled(load(args.checkpoint, args.device, **field_values(args.set)), args)
        distributed.start(predictor.device)  # under torchrun: this rank predicts its shard
        ev = evaluate(
            predictor,
            args.data,
            args.split,
            args.images,
            not args.no_boundary,
            args.out,
            **options,
        )
        report = ev.report
        if not distributed.is_main():
            return 0
    print(report.format())
    if report.seconds_per_image is not None:
        print(f"{report.images} images, {report.seconds_per_image:.3f} s/image")
    if args.out:
        print(f"metrics and plots: {args.out}")
    return 0


def _numbers(values: list[str] | None, sizes: tuple[int, ...], what: str) -> list[list[float]]:
    from instseg.errors import PromptError

    out = []
    for value in values or []:
        try:
            numbers = [float(v) for v in value.split(",")]
        except ValueError:
            numbers = []
        if len(numbers) not in sizes:
            raise PromptError(
                f"{what} {value!r}: expected {' or '.join(map(str, sizes))} comma-separated numbers"
            )
        out.append(numbers)
    return out


def _predict_prompts(args: argparse.Namespace) -> int:
    """SAM with prompts: one mask per image for the clicks (and a box), or one per box."""
    import torch

    from instseg.api import load_prompts
    from instseg.data.coco import write_json
    from instseg.data.images import list_images, output_stems, read_image
    from instseg.errors import DataError
    from instseg.measurements import label_image, measure, write_label_png, write_table
    from instseg.pictures import draw_prompts, overlay, save_picture
    from instseg.structures import Instances

    clicks = _numbers(args.points, (2, 3), "--points")
    boxes = torch.tensor(_numbers(args.box, (4,), "--box")).reshape(-1, 4)
    points = torch.tensor([c[:2] for c in clicks]).reshape(-1, 2)
    labels = torch.tensor([c[2] if len(c) == 3 else 1.0 for c in clicks])
    predictor = load_prompts(args.onnx or args.checkpoint, args.device)
    paths = list_images(args.inputs)
    stems = output_stems(paths)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows, results, failures = [], [], []
    for i, path in enumerate(paths):
        try:
            image = read_image(path).float() / 255
        except DataError as exc:
            logging.getLogger(__name__).warning("skipped: %s", exc)
            failures.append(str(exc))
            continue
        predictor.set_image(image)
        if len(points):  # one object: the clicks, with the box when there is one
            box = boxes[0] if len(boxes) == 1 else None
            found = [
                predictor.predict(points, labels, box=box, multimask=len(points) == 1 and box is None)[:1]
            ]
        else:
            found = [o[:1] for o in predictor.predict_batch(box=boxes)]
        shown = Instances(
            *(torch.cat([getattr(f, k) for f in found]) for k in ("boxes", "labels", "scores", "masks")),
            image_size=found[0].image_size,
            categories=found[0].categories,
        )
        labelled = label_image(shown)
        write_label_png(out / "labels" / f"{stems[i]}_labels.png", labelled[0])
        rows.extend(measure(*labelled, shown, image, str(path)))
        results += [dict(r, file_name=str(path)) for r in shown.to_coco(image_id=i)]
        if not args.no_overlays:
            picture = overlay(image, shown, labelled=labelled)
            picture = draw_prompts(picture, shown.image_size, points if len(points) else None, labels, boxes)
            save_picture(picture, out / "overlays" / f"{stems[i]}.png")
    write_json(results, out / "predictions.json")
    write_table(out / "objects.csv", rows)
    print(
        f"{len(paths) - len(failures)} images, {len(results)} masks; COCO results: {out / 'predictions.json'}"
    )
    print(f"label images: {out / 'labels'}; measurements: {out / 'objects.csv'}")
    if not args.no_overlays:
        print(f"overlays with the prompts: {out / 'overlays'}")
    return _report_failures(failures, out)


def _predict(args: argparse.Namespace, argv: Sequence[str]) -> int:
    if args.points or args.box:
        return _predict_prompts(args)
    return _as_ranks(args, argv, _predict_images)


def _predict_images(args: argparse.Namespace) -> int:
    from instseg import distributed
    from instseg.api import load
    from instseg.config import field_values
    from instseg.data.coco import write_json
    from instseg.data.datasets import ImageListDataset
    from instseg.data.images import list_images, output_stems
    from instseg.engine.inference import run_inference
    from instseg.measurements import label_image, measure, write_label_png, write_table
    from instseg.pictures import save_overlay

    predictor = load(args.onnx or args.checkpoint, args.device, args.min_score, **field_values(args.set))
    predictor = _tiled(predictor, args)
    distributed.start(predictor.device)  # under torchrun: this rank predicts its shard of the images
    paths = list_images(args.inputs)
    stems = output_stems(paths)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows: list[dict] = []

    def on_image(image_id: int, image, instances) -> None:
        # scores come sorted (the contract), so the kept ones are a prefix: a view, not a copy of the masks
        shown = instances[: int((instances.scores >= args.min_score).sum())]
        labels, kept = label_image(shown)
        write_label_png(out / "labels" / f"{stems[image_id]}_labels.png", labels)
        rows.extend(measure(labels, kept, shown, image, str(paths[image_id])))
        if not args.no_overlays:
            path = out / "overlays" / f"{stems[image_id]}.png"
            save_overlay(image, shown, path, labelled=(labels, kept))

    images = ImageListDataset(paths).skipping_unreadable()
    run = run_inference(
        predictor.inference,
        images,
        predictor.categories,
        predictor.device,
        args.batch_size,
        on_image=on_image,
    )
    # every rank's measurements and unreadable files, in input order, on rank 0, which writes the tables
    shards = distributed.gather_to_main((rows, images.failures or []))
    if shards is None:
        return 0
    position = {str(p): i for i, p in enumerate(paths)}
    rows = sorted((r for part, _ in shards for r in part), key=lambda r: position[r["image"]])
    failures = [f for _, part in shards for f in part]
    results = [
        dict(r, file_name=str(paths[r["image_id"]])) for r in run.results if r["score"] >= args.min_score
    ]
    write_json(results, out / "predictions.json")
    write_table(out / "objects.csv", rows)
    print(f"{run.images} images, {len(results)} instances, {run.seconds_per_image:.3f} s/image")
    print(f"COCO results: {out / 'predictions.json'}")
    print(f"label images (uint16 PNG): {out / 'labels'}; per-object measurements: {out / 'objects.csv'}")
    if not args.no_overlays:
        print(f"overlays: {out / 'overlays'}")
    return _report_failures(failures, out)


def _serve(args: argparse.Namespace) -> int:
    try:
        import uvicorn

        from instseg.serve.app import ServeConfig, create_app
    except ImportError as exc:
        raise InstsegError(f"instseg serve needs its extra: pip install 'instseg[serve]' ({exc})") from None
    from instseg.api import load

    config = ServeConfig(args.workers, args.queue, int(args.max_upload_mb * 2**20), min_score=args.min_score)
    app = create_app(_tiled(load(args.checkpoint, args.device), args), config)
    print(f"serving {args.checkpoint} on http://{args.host}:{args.port}/ (web page), /v1/predict, /metrics")
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0


def _report_failures(failures: list[str], out: Path) -> int:
    """Exit status 1 and ``failures.txt`` when some inputs could not be read; everything else is written."""
    if not failures:
        return 0
    (out / "failures.txt").write_text("\n".join(failures) + "\n")
    print(f"instseg: {len(failures)} images could not be read and were skipped: {out / 'failures.txt'}")
    return 1


def _one_line(exc: InstsegError) -> str:
    """The error's own message; one raised in a DataLoader worker comes back wrapped in the worker's
    traceback, whose last line is the message."""
    text = str(exc)
    if "Original Traceback" not in text:
        return text
    last = text.rstrip().splitlines()[-1]
    return last.split(": ", 1)[1] if last.startswith("instseg.errors.") else last


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    argv = list(argv) if argv is not None else sys.argv[1:]
    args, rest = parser.parse_known_args(argv)
    rank = int(os.environ.get("RANK", "0"))  # under torchrun, rank 0 alone reports progress
    level = logging.DEBUG if args.verbose else logging.INFO if rank == 0 else logging.WARNING
    logging.basicConfig(level=level, format="%(message)s")
    if rest and args.command != "train":
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    try:
        if args.command == "demo":
            from instseg.demo import FAMILY, PRESET, run_demo

            family, preset = args.model or FAMILY, args.preset or (PRESET if not args.model else "default")
            demo = run_demo(args.out, args.minutes, args.device, family=family, preset=preset)
            for part in demo.parts:
                print(f"\n{part.title}: the 10 bundled val images\n")
                print(part.table())
                print(f"\npictures (ground truth | prediction): {part.pictures}")
                print(f"all of them on one sheet: {part.contact_sheet}")
            print(f"\nsummary: {demo.summary}")
            return 0
        if args.command == "train":
            return _train(args, rest, argv)
        if args.command == "eval":
            return _eval(args, argv)
        if args.command == "import":
            from instseg.importers.hf_mask2former import import_hf_mask2former
            from instseg.importers.sam import import_sam
            from instseg.importers.torchvision_maskrcnn import import_torchvision_maskrcnn

            convert = {
                "hf-mask2former": import_hf_mask2former,
                "sam": import_sam,
                "torchvision-maskrcnn": import_torchvision_maskrcnn,
            }
            print(f"wrote {convert[args.format](args.source, args.out)}")
            return 0
        if args.command == "data":
            from instseg.data.commands import run_data

            return run_data(args)
        if args.command == "serve":
            return _serve(args)
        if args.command == "export":
            return _export(args)
        return _predict(args, argv)
    except InstsegError as exc:
        if args.verbose:
            raise
        print(f"instseg: error: {_one_line(exc)}", file=sys.stderr)
        return 2
    except OSError as exc:  # an unwritable --out, a full disk: the file and the reason, no traceback
        if args.verbose:
            raise
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"instseg: error: {where}{exc.strerror or exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("instseg: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
