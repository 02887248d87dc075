"""Converters: round trips that keep every instance, and clear errors on bad input."""

import json

import cv2
import numpy as np
import pycocotools.mask as mask_utils
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from instseg.data import convert
from instseg.data.coco import CocoIndex, resolve_source
from instseg.data.synthetic import generate, preset
from instseg.errors import DataError
from instseg.eval.coco import coco_evaluate


def _polygon_mask(polygon: np.ndarray, height: int, width: int) -> np.ndarray:
    rles = mask_utils.frPyObjects([polygon.reshape(-1).tolist()], height, width)
    return mask_utils.decode(mask_utils.merge(rles)).astype(bool)


def _decode(seg, h, w):
    if isinstance(seg, dict):
        return mask_utils.decode({"size": seg["size"], "counts": seg["counts"].encode()}).astype(bool)
    return mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects(seg, h, w))).astype(bool)


def _iou(a, b):
    return (a & b).sum() / max((a | b).sum(), 1)


shapes = st.lists(
    st.tuples(
        st.integers(0, 3), st.integers(2, 30), st.integers(2, 30), st.integers(2, 14), st.integers(2, 14)
    ),
    min_size=1,
    max_size=4,
)


@settings(max_examples=80, deadline=None)
@given(shapes)
def test_mask_to_polygon_traces_pixel_edges(parts):
    m = np.zeros((36, 36), np.uint8)
    for kind, x, y, a, b in parts:
        if kind == 0:
            cv2.rectangle(m, (x, y), (x + a, y + b), 1, -1)
        elif kind == 1:
            cv2.ellipse(m, (x, y), (a, b), 0, 0, 360, 1, -1)
        elif kind == 2:
            cv2.line(m, (x, y), (x + 2 * a, y + b), 1, 1)
        else:
            cv2.ellipse(m, (x, y), (a + 3, b + 3), 0, 0, 360, 1, -1)
            cv2.ellipse(m, (x, y), (2, 2), 0, 0, 360, 0, -1)  # a hole
    poly = convert.mask_to_polygon(m)
    assert _iou(_polygon_mask(poly, 36, 36), m.astype(bool)) >= 0.95


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 2**31 - 1), st.integers(1, 12))
def test_label_map_to_coco_to_label_map_is_exact(tmp_path_factory, seed, n):
    rng = np.random.default_rng(seed)
    m = np.zeros((40, 48), np.uint16)
    ids = rng.choice(np.arange(1, 60000), size=n, replace=False)
    for v in ids:  # random rectangles; later ones cover earlier ones, some vanish entirely
        y, x = rng.integers(0, 36), rng.integers(0, 44)
        m[y : y + rng.integers(1, 15), x : x + rng.integers(1, 15)] = v
    tmp = tmp_path_factory.mktemp("lm")
    (tmp / "labels").mkdir()
    cv2.imwrite(str(tmp / "labels" / "img.png"), m)
    ann = convert.label_maps_to_coco(tmp / "labels", tmp / "coco.json", category="cell")
    out = convert.coco_to_label_maps(ann, tmp / "back")
    back = cv2.imread(str(out[0]), cv2.IMREAD_UNCHANGED)
    present = np.unique(m)
    expected = np.searchsorted(present[present > 0], m) + 1
    expected[m == 0] = 0
    np.testing.assert_array_equal(back, expected)


def test_coco_to_yolo_to_coco_keeps_every_instance(tmp_path):
    generate(preset("hard", train_images=3, val_images=2, size=128), tmp_path / "coco")
    data_yaml = convert.coco_to_yolo(tmp_path / "coco", tmp_path / "yolo")
    spec = yaml.safe_load(data_yaml.read_text())
    assert spec["train"] == "images/train" and len(spec["names"]) == 8
    back = convert.yolo_to_coco(data_yaml, "val", tmp_path / "back.json")
    original = CocoIndex(resolve_source(tmp_path / "coco", "val"))
    converted = json.loads(back.read_text())
    by_image = {}
    for a in converted["annotations"]:
        by_image.setdefault(a["image_id"], []).append(a)
    total = 0
    for im, im_back in zip(original.images, converted["images"], strict=True):
        objs, anns = original.objects.get(im["id"], []), by_image.get(im_back["id"], [])
        assert len(objs) == len(anns)
        for o, a in zip(objs, anns, strict=True):
            assert a["category_id"] == o["label"]  # contiguous ids in both
            iou = _iou(_decode(a["segmentation"], im["height"], im["width"]), mask_utils.decode(o["rle"]) > 0)
            assert iou >= 0.95
            total += 1
    assert total > 20


def test_yolo_errors_name_file_and_line(tmp_path):
    (tmp_path / "images" / "val").mkdir(parents=True)
    (tmp_path / "labels" / "val").mkdir(parents=True)
    cv2.imwrite(str(tmp_path / "images" / "val" / "a.png"), np.zeros((8, 8, 3), np.uint8))
    (tmp_path / "labels" / "val" / "a.txt").write_text("0 0.1 0.1 0.5 0.1 0.5\n")
    (tmp_path / "data.yaml").write_text(yaml.safe_dump({"path": ".", "val": "images/val", "names": ["x"]}))
    with pytest.raises(DataError, match=r"a.txt:1: a polygon needs >= 3 x,y pairs"):
        convert.yolo_to_coco(tmp_path / "data.yaml", "val", tmp_path / "o.json")


def test_instance_mask_folders_to_coco(tmp_path):
    root = tmp_path / "stage1_train"
    for k, boxes in enumerate([[(2, 2, 8, 8), (10, 10, 14, 18)], [(0, 0, 3, 3)]]):
        sample = root / f"img{k}"
        (sample / "images").mkdir(parents=True)
        (sample / "masks").mkdir()
        cv2.imwrite(str(sample / "images" / f"img{k}.png"), np.full((20, 24, 3), 50, np.uint8))
        for j, (x0, y0, x1, y1) in enumerate(boxes):
            m = np.zeros((20, 24), np.uint8)
            m[y0:y1, x0:x1] = 255
            cv2.imwrite(str(sample / "masks" / f"m{j}.png"), m)
        cv2.imwrite(str(sample / "masks" / "empty.png"), np.zeros((20, 24), np.uint8))
    out = convert.instance_masks_to_coco(root, root / "instances_train.json")
    index = CocoIndex(resolve_source(out, "train", root))
    assert [len(index.objects[i]) for i in (1, 2)] == [2, 1]
    assert mask_utils.area(index.objects[1][1]["rle"]) == 4 * 8


def test_cityscapes_instance_ids_to_coco(tmp_path):
    m = np.zeros((32, 64), np.uint16)
    m[:, :] = 7  # road: not a thing class
    m[2:10, 2:20] = 26001  # car instance 1
    m[12:20, 2:20] = 26002  # car instance 2
    m[22:30, 30:60] = 24  # a group of people, not split: a crowd region
    m[2:12, 40:48] = 24000  # person instance 0
    gt = tmp_path / "gtFine" / "val" / "aachen"
    gt.mkdir(parents=True)
    cv2.imwrite(str(gt / "aachen_000000_000019_gtFine_instanceIds.png"), m)
    img = tmp_path / "leftImg8bit" / "val" / "aachen"
    img.mkdir(parents=True)
    cv2.imwrite(str(img / "aachen_000000_000019_leftImg8bit.png"), np.zeros((32, 64, 3), np.uint8))
    doc = json.loads(convert.cityscapes_to_coco(tmp_path, "val", tmp_path / "cs.json").read_text())
    names = {c["id"]: c["name"] for c in doc["categories"]}
    got = sorted((names[a["category_id"]], a["iscrowd"], a["area"]) for a in doc["annotations"])
    assert got == [("car", 0, 144), ("car", 0, 144), ("person", 0, 80), ("person", 1, 240)]
    assert doc["images"][0]["file_name"] == "aachen/aachen_000000_000019_leftImg8bit.png"


def test_lvis_json_reads_as_coco_and_evaluates_federated(tmp_path):
    rle = mask_utils.encode(np.asfortranarray(np.pad(np.ones((4, 4), np.uint8), 2)))
    seg = {"size": [8, 8], "counts": rle["counts"].decode()}
    lvis = {
        "images": [
            {
                "id": 1,
                "height": 8,
                "width": 8,
                "coco_url": "http://x/val2017/000000000001.jpg",
                "neg_category_ids": [2],
            }
        ],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 1, "segmentation": seg, "bbox": [2, 2, 4, 4], "area": 16}
        ],
        "categories": [{"id": 1, "name": "a", "frequency": "f"}, {"id": 2, "name": "b", "frequency": "r"}],
    }
    src = tmp_path / "lvis_v1_val.json"
    src.write_text(json.dumps(lvis))
    doc = json.loads(convert.lvis_to_coco(src, tmp_path / "coco.json").read_text())
    assert doc["images"][0]["file_name"] == "000000000001.jpg"
    assert doc["annotations"][0]["iscrowd"] == 0 and doc["images"][0]["neg_category_ids"] == [2]
    result = {"image_id": 1, "category_id": 1, "score": 0.9, "segmentation": seg}
    stats = coco_evaluate(tmp_path / "coco.json", [result], ("segm",))["segm"]
    assert stats["APf"] == pytest.approx(1.0) and "AR300" in stats
