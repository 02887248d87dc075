import json
import logging

import numpy as np
import pycocotools.mask as mask_utils
import pytest

from instseg.data.coco import CocoIndex, decode_window, resolve_source, to_rle
from instseg.errors import DataError
from tests.conftest import shared_data


def _write(tmp_path, data):
    path = tmp_path / "ann.json"
    path.write_text(json.dumps(data) if not isinstance(data, str) else data)
    (tmp_path / "img").mkdir(exist_ok=True)
    return resolve_source(path, images=tmp_path / "img")


def _coco(**extra):
    base = {
        "images": [{"id": 1, "file_name": "a.png", "height": 10, "width": 10}],
        "categories": [{"id": 5, "name": "thing"}],
        "annotations": [
            {
                "id": 11,
                "image_id": 1,
                "category_id": 5,
                "iscrowd": 0,
                "segmentation": [[1, 1, 6, 1, 6, 6, 1, 6]],
                "bbox": [1, 1, 5, 5],
                "area": 25,
            }
        ],
    }
    base.update(extra)
    return base


def test_resolve_source_layouts(tiny_coco, tmp_path):
    src = resolve_source(tiny_coco, "val")
    assert src.annotations.name == "instances_val.json" and src.images == tiny_coco / "val"
    src = resolve_source(tiny_coco / "annotations" / "instances_train.json")
    assert src.images == tiny_coco / "train"
    with pytest.raises(DataError, match="no annotations/instances_test"):
        resolve_source(tiny_coco, "test")
    with pytest.raises(DataError, match="no such annotations file"):
        resolve_source(tmp_path / "missing.json")


def test_index_maps_non_contiguous_ids_and_decodes_every_format(tiny_coco):
    index = CocoIndex(resolve_source(tiny_coco, "train"))
    assert [c.id for c in index.categories] == [3, 7]
    assert index.label_of == {3: 1, 7: 2}
    raw = json.loads((tiny_coco / "annotations" / "instances_train.json").read_text())
    formats = {
        type(a["segmentation"]).__name__
        + (type(a["segmentation"].get("counts")).__name__ if isinstance(a["segmentation"], dict) else "")
        for a in raw["annotations"]
    }
    assert formats == {"list", "dictstr", "dictlist"}  # polygons, compressed and uncompressed RLE
    objects = [o for objs in index.objects.values() for o in objs]
    assert len(objects) == len(raw["annotations"])
    by_id = {a["id"]: a for a in raw["annotations"]}
    for obj in objects:
        assert mask_utils.area(obj["rle"]) == pytest.approx(by_id[obj["id"]]["area"], abs=1)


def test_crowd_regions_are_kept_only_when_asked(tiny_coco):
    src = resolve_source(tiny_coco, "val")
    assert not any(o["iscrowd"] for objs in CocoIndex(src).objects.values() for o in objs)
    assert any(o["iscrowd"] for objs in CocoIndex(src, keep_crowd=True).objects.values() for o in objs)


def test_malformed_json_names_file_and_position(tmp_path):
    with pytest.raises(DataError, match=r"ann.json: malformed JSON at line 1 column"):
        CocoIndex(_write(tmp_path, '{"images": [}'))


def test_unknown_category_names_annotation(tmp_path):
    data = _coco()
    data["annotations"][0]["category_id"] = 9
    with pytest.raises(DataError, match=r"ann.json: annotation 11 has category id 9"):
        CocoIndex(_write(tmp_path, data))


def test_unknown_image_and_duplicate_image(tmp_path):
    data = _coco()
    data["annotations"][0]["image_id"] = 2
    with pytest.raises(DataError, match="unknown image id 2"):
        CocoIndex(_write(tmp_path, data))
    data = _coco()
    data["images"].append(dict(data["images"][0]))
    with pytest.raises(DataError, match="duplicate image id 1"):
        CocoIndex(_write(tmp_path, data))


def test_empty_and_degenerate_masks_are_skipped_with_warning(tmp_path, caplog):
    data = _coco()
    data["annotations"] += [
        {"id": 12, "image_id": 1, "category_id": 5, "segmentation": [[1, 1, 2, 2]], "bbox": [1, 1, 0, 0]},
        {
            "id": 13,
            "image_id": 1,
            "category_id": 5,
            "segmentation": [[3, 3, 3, 3, 3, 3]],
            "bbox": [3, 3, 0, 0],
        },
    ]
    with caplog.at_level(logging.WARNING):
        index = CocoIndex(_write(tmp_path, data))
    assert [o["id"] for o in index.objects[1]] == [11]
    assert index.skipped == {"no usable polygon": 1, "an empty mask": 1}
    assert "skipped 1 annotations with an empty mask (ids [13])" in caplog.text


def test_rle_size_mismatch_is_an_error(tmp_path):
    data = _coco()
    data["annotations"][0]["segmentation"] = {"size": [5, 5], "counts": [0, 25]}
    with pytest.raises(DataError, match="annotation 11 has a malformed segmentation"):
        CocoIndex(_write(tmp_path, data))


def test_decode_window_crops_and_skips_objects_outside():
    mask = np.zeros((20, 20), dtype=np.uint8)
    mask[2:6, 3:8] = 1
    rle = to_rle({"size": [20, 20], "counts": mask_utils.encode(np.asfortranarray(mask))["counts"]}, 20, 20)
    objs = [{"rle": rle, "bbox": (3, 2, 8, 6), "label": 1}]
    masks, labels = decode_window(objs, (0, 0, 10, 10))
    assert masks.shape == (1, 10, 10) and labels == [1] and masks.sum() == 20
    masks, labels = decode_window(objs, (10, 10, 20, 20))
    assert masks.shape == (0, 10, 10) and labels == []


def test_decode_window_leaves_out_objects_mostly_outside_it():
    mask = np.zeros((20, 20), dtype=np.uint8)
    mask[2:6, 3:8] = 1  # 20 pixels; a window from column 6 holds 8 of them
    rle = to_rle({"size": [20, 20], "counts": mask_utils.encode(np.asfortranarray(mask))["counts"]}, 20, 20)
    objs = [{"rle": rle, "bbox": (3, 2, 8, 6), "label": 1}]
    assert decode_window(objs, (6, 0, 16, 10), min_visible=0.4)[0].sum() == 8
    assert decode_window(objs, (6, 0, 16, 10), min_visible=0.41)[0].shape == (0, 10, 10)


def test_dsb2018_reads_completely():
    root = shared_data("dsb2018")
    index = CocoIndex(resolve_source(root, "val"))
    assert len(index) == 98
    assert sum(len(v) for v in index.objects.values()) == 4145
    assert index.skipped == {}
