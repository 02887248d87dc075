"""``instseg data synth | convert | check | stats | show``: the data toolkit's command line."""

from __future__ import annotations

import argparse
from pathlib import Path

CONVERSIONS = {
    ("coco", "yolo"): "COCO dataset folder -> YOLO-seg images/labels + data.yaml",
    ("yolo", "coco"): "YOLO-seg data.yaml -> COCO JSON (polygons)",
    ("labelmaps", "coco"): "folder of instance label maps (PNG/TIFF) [+ --images] -> COCO JSON (RLE)",
    ("coco", "labelmaps"): "COCO dataset -> one uint16 label map PNG per image",
    ("masks", "coco"): "DSB2018-style <id>/images + <id>/masks/*.png -> COCO JSON (RLE)",
    ("cityscapes", "coco"): "Cityscapes root (gtFine/, leftImg8bit/) -> COCO JSON, thing classes",
    ("lvis", "coco"): "LVIS JSON -> COCO JSON keeping neg/not-exhaustive ids and frequencies",
}


def add_data_parser(sub: argparse._SubParsersAction) -> None:
    from instseg.config import add_config_flags
    from instseg.data.synthetic import PRESET_NOTES, SynthConfig

    data = sub.add_parser("data", help="synthesise, convert, check, summarise and show datasets")
    cmds = data.add_subparsers(dest="data_command", required=True)

    synth = cmds.add_parser(
        "synth",
        help="write a seeded synthetic COCO dataset of hard cases",
        description="Presets: " + "; ".join(f"{k}: {v}" for k, v in PRESET_NOTES.items()),
    )
    synth.add_argument("--preset", default="easy", choices=sorted(PRESET_NOTES))
    synth.add_argument("--out", required=True)
    add_config_flags(synth, SynthConfig, "scene knobs (override the preset)")

    convert = cmds.add_parser(
        "convert",
        help="convert between COCO and YOLO-seg, label maps, mask folders, Cityscapes, LVIS",
        description="\n".join(f"{a} -> {b}: {d}" for (a, b), d in CONVERSIONS.items()),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    convert.add_argument("source_format", choices=sorted({a for a, _ in CONVERSIONS}))
    convert.add_argument("source", help="folder or file to read")
    convert.add_argument("--to", required=True, choices=sorted({b for _, b in CONVERSIONS}))
    convert.add_argument("--out", required=True, help="JSON file (to coco) or folder")
    convert.add_argument("--split", default="train")
    convert.add_argument("--images", help="labelmaps: the images they label (matched by file stem)")
    convert.add_argument("--category", default="object", help="class name for single-class sources")
    convert.add_argument("--link", action="store_true", help="coco->yolo: hard-link images, do not copy")

    check = cmds.add_parser("check", help="validate a COCO file against its images; exit 1 on errors")
    check.add_argument("--data", required=True, help="COCO JSON or dataset folder")
    check.add_argument("--split", default="train")
    check.add_argument("--images", help="image folder, when it cannot be guessed")
    check.add_argument("--no-images", action="store_true", help="check the JSON only")

    stats = cmds.add_parser("stats", help="instances per image, areas, class frequency, image sizes")
    stats.add_argument("--data", required=True)
    stats.add_argument("--split", default="train")
    stats.add_argument("--out", help="folder for the PNG plots")

    show = cmds.add_parser("show", help="ground-truth overlays of chosen or random images")
    show.add_argument("--data", required=True)
    show.add_argument("--split", default="train")
    show.add_argument("--images", help="image folder, when it cannot be guessed")
    show.add_argument("--ids", type=int, nargs="+", default=[], help="image ids (default: random)")
    show.add_argument("--count", type=int, default=8)
    show.add_argument("--seed", type=int, default=0)
    show.add_argument("--out", required=True)


def run_data(args: argparse.Namespace) -> int:
    from instseg.errors import InstsegError

    if args.data_command == "synth":
        from instseg.config import config_from_dict
        from instseg.data.synthetic import SynthConfig, generate, preset

        knobs = {k: v for k, v in vars(args).items() if k in SynthConfig.__dataclass_fields__}
        cfg = config_from_dict(SynthConfig, knobs, base=preset(args.preset))
        written = generate(cfg, args.out, progress=True)
        print("\n".join(f"{split}: {path}" for split, path in written.items()))
        return 0
    if args.data_command == "convert":
        pair = (args.source_format, args.to)
        if pair not in CONVERSIONS:
            raise InstsegError(f"no converter from {pair[0]} to {pair[1]}; available: {sorted(CONVERSIONS)}")
        print(f"wrote {_convert(args)}")
        return 0
    if args.data_command == "check":
        from instseg.data.check import check_dataset

        report = check_dataset(args.data, args.split, args.images, not args.no_images, progress=True)
        print(report.format())
        return 0 if report.ok else 1
    if args.data_command == "stats":
        from instseg.data.inspect import dataset_stats, plot_stats

        stats = dataset_stats(args.data, args.split)
        print(stats.format())
        if args.out:
            print("plots: " + ", ".join(str(p) for p in plot_stats(stats, args.out)))
        return 0
    from instseg.data.inspect import show_ground_truth

    written = show_ground_truth(args.data, args.out, args.split, args.ids, args.count, args.seed, args.images)
    print(f"{len(written)} overlays in {args.out}")
    return 0


def _convert(args: argparse.Namespace) -> Path | str:
    from instseg.data import convert

    src, out = args.source, args.out
    match (args.source_format, args.to):
        case ("coco", "yolo"):
            return convert.coco_to_yolo(src, out, copy_images=not args.link)
        case ("yolo", "coco"):
            return convert.yolo_to_coco(src, args.split, out)
        case ("labelmaps", "coco"):
            return convert.label_maps_to_coco(src, out, args.images, args.category)
        case ("coco", "labelmaps"):
            return f"{len(convert.coco_to_label_maps(src, out, args.split))} label maps in {out}"
        case ("masks", "coco"):
            return convert.instance_masks_to_coco(src, out, args.category)
        case ("cityscapes", "coco"):
            return convert.cityscapes_to_coco(src, args.split, out)
        case _:
            return convert.lvis_to_coco(src, out)
