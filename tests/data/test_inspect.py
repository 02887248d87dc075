"""Dataset statistics, plots and ground-truth overlays, from the API and the command line."""

import json

import numpy as np

from instseg.cli import main
from instseg.data.inspect import dataset_stats, plot_stats


def test_stats_count_what_is_there(tiny_coco, tmp_path):
    doc = json.loads((tiny_coco / "annotations" / "instances_train.json").read_text())
    stats = dataset_stats(tiny_coco, "train")
    real = [a for a in doc["annotations"] if not a.get("iscrowd")]
    assert stats.images == len(doc["images"]) and len(stats.areas) == len(real)
    assert int(stats.instances_per_image.sum()) == len(real)
    assert (stats.instances_per_image == 0).sum() == 1  # the tiny set has one empty image
    assert sum(stats.class_counts.values()) == len(real) and set(stats.class_counts) == {"square", "disk"}
    assert np.all(stats.areas > 0)
    text = stats.format()
    assert "images without objects" in text and "small (<32^2)" in text
    names = {p.name for p in plot_stats(stats, tmp_path)}
    assert names == {"instances_per_image.png", "object_areas.png", "class_frequency.png", "image_sizes.png"}


def test_data_commands_end_to_end(tmp_path, capsys):
    data = tmp_path / "synth"
    assert main(["data", "synth", "--preset", "tiny", "--out", str(data), "--train-images", "3"]) == 0
    assert len(list((data / "train").glob("*.png"))) == 3
    assert main(["data", "stats", "--data", str(data), "--out", str(tmp_path / "plots")]) == 0
    assert "3 images" in capsys.readouterr().out
    assert (
        main(
            [
                "data",
                "show",
                "--data",
                str(data),
                "--split",
                "val",
                "--count",
                "2",
                "--out",
                str(tmp_path / "gt"),
            ]
        )
        == 0
    )
    assert len(list((tmp_path / "gt").glob("*.png"))) == 2
    assert main(["data", "check", "--data", str(data)]) == 0
    assert main(["data", "convert", "coco", str(data), "--to", "yolo", "--out", str(tmp_path / "yolo")]) == 0
    assert (tmp_path / "yolo" / "data.yaml").is_file()
    assert (
        main(
            [
                "data",
                "convert",
                "yolo",
                str(tmp_path / "yolo" / "data.yaml"),
                "--to",
                "labelmaps",
                "--out",
                "x",
            ]
        )
        == 2
    )
    assert "no converter from yolo to labelmaps" in capsys.readouterr().err


def test_lvis_tags_reach_the_class_frequency_plot(tmp_path):
    from instseg.data.synthetic import generate, preset

    generate(preset("longtail", train_images=60, val_images=4, size=64, radius=(4.0, 8.0)), tmp_path / "lt")
    stats = dataset_stats(tmp_path / "lt", "train")
    assert len(stats.lvis_frequency) == 40 and set(stats.lvis_frequency.values()) <= {"r", "c", "f"}
    assert "r" in stats.lvis_frequency.values()
    assert stats.class_counts.keys() == stats.lvis_frequency.keys()
    assert (tmp_path / "plots" / "class_frequency.png") in plot_stats(stats, tmp_path / "plots")
