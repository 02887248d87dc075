"""Label images and per-object measurements, checked against values worked out by hand."""

from pathlib import Path

import cv2
import numpy as np
import torch

from instseg.data.images import output_stems
from instseg.measurements import label_image, measure, write_label_png, write_table
from instseg.structures import Category, Instances


def _instances() -> Instances:
    masks = torch.zeros((3, 6, 8), dtype=torch.bool)
    masks[0, 1:4, 1:4] = True  # 9 px, score 0.5
    masks[1, 2:5, 3:7] = True  # 12 px, score 0.9: wins the overlap with 0 at (2..3, 3)
    masks[2, 2:4, 4:6] = True  # inside 1, score 0.3: hidden entirely
    return Instances(
        boxes=torch.zeros((3, 4)),
        labels=torch.tensor([1, 2, 1]),
        scores=torch.tensor([0.5, 0.9, 0.3]),
        masks=masks,
        image_size=(6, 8),
        categories=(Category(1, "nucleus"), Category(2, "cell")),
    )


def test_label_image_gives_overlaps_to_the_better_score_and_numbers_visible_objects_by_score():
    labels, kept = label_image(_instances())
    assert kept.tolist() == [1, 0]  # id 1 = instance 1 (0.9), id 2 = instance 0; instance 2 is hidden
    assert labels[2, 3] == 1 and labels[1, 1] == 2 and labels[0, 0] == 0
    assert int((labels == 1).sum()) == 12 and int((labels == 2).sum()) == 9 - 2
    empty, none = label_image(_instances()[torch.zeros(3, dtype=torch.bool)])
    assert empty.shape == (6, 8) and not empty.any() and len(none) == 0


def test_measurements_by_hand():
    inst = _instances()
    labels, kept = label_image(inst)
    image = torch.zeros(3, 6, 8)
    image[:, 2:5, 3:7] = 0.5  # object 1's pixels: 127.5 in 0-255 units
    rows = measure(labels, kept, inst, image, "a.png")
    first, second = rows
    assert first == {
        "image": "a.png",
        "id": 1,
        "class": "cell",
        "score": 0.9,
        "area": 12,
        "centroid_x": 4.5,
        "centroid_y": 3.0,
        "bbox_x0": 3,
        "bbox_y0": 2,
        "bbox_x1": 7,
        "bbox_y1": 5,
        "mean_intensity": 127.5,
    }
    # object 2 keeps rows 1..3, columns 1..3 less (2, 3) and (3, 3): 7 px, all dark
    assert (second["id"], second["class"], second["area"], second["mean_intensity"]) == (2, "nucleus", 7, 0.0)
    assert (second["bbox_x0"], second["bbox_y0"], second["bbox_x1"], second["bbox_y1"]) == (1, 1, 4, 4)


def test_label_png_keeps_16_bit_ids_and_the_table_has_a_header(tmp_path: Path):
    labels = torch.zeros((4, 5), dtype=torch.int64)
    labels[1, 2] = 300  # does not fit 8 bits
    path = write_label_png(tmp_path / "x_labels.png", labels)
    back = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    assert back.dtype == np.uint16 and back[1, 2] == 300 and back.sum() == 300
    table = write_table(tmp_path / "objects.csv", [])
    assert table.read_text().startswith("image,id,class,score,area,centroid_x")


def test_output_stems_are_unique():
    paths = [Path("a/img.png"), Path("b/img.png"), Path("c/img_2.tif"), Path("d/other.png")]
    assert output_stems(paths) == ["img", "img_2", "img_2_2", "other"]
