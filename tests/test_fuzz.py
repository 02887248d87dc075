"""Fuzzing the entry points that read users' files: COCO annotations, RLE, images, checkpoint headers
and result files. The property everywhere: a case ends in a result or in one of the toolkit's own
errors (``InstsegError``), never another exception, a hang (the deadline) or a silently wrong
result; and a dataset that ``data check`` passes trains without a data error.

``make test`` runs a small, derandomised example budget; ``benchmarks/fuzz.py`` runs the same
properties with a large one (``INSTSEG_FUZZ_EXAMPLES``) under a memory limit.
"""

from __future__ import annotations

import copy
import io
import json
import os
import zlib
from collections import Counter
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pycocotools.mask as mask_utils
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from safetensors.torch import load_file, save_file

from instseg.data.check import check_dataset
from instseg.data.coco import CocoIndex, CocoSource, check_annotation
from instseg.data.datasets import CocoTrainDataset
from instseg.data.images import read_image
from instseg.data.segmentation import check_rle, compressed_counts
from instseg.data.transforms import TrainTransform
from instseg.engine.checkpoint import WEIGHTS
from instseg.engine.pretrained import bundled_checkpoint
from instseg.errors import InstsegError
from instseg.eval.report import EvalOptions, evaluate_results
from instseg.predictor import Predictor
from tests.conftest import write_tiny_coco

EXAMPLES = int(os.environ.get("INSTSEG_FUZZ_EXAMPLES", "40"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=timedelta(seconds=30),  # a hang is a failure
    derandomize=EXAMPLES <= 100,  # make test is reproducible; the large run explores
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
)
OUTCOMES: Counter[tuple[str, str]] = Counter()  # (entry point, "ok" | "refused"), read by benchmarks/fuzz.py

NASTY = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-1000, 1000),
    st.sampled_from([2**31, 2**63, -(2**63), 10**30, 100000]),
    st.sampled_from([0.5, -0.0, float("nan"), float("inf"), float("-inf"), 1e30, -1e30]),
    st.text(max_size=8),
    st.sampled_from(["", "zzzz", "0", "../../../outside.png", "/etc/passwd", "PPYo0", "\x00", "a.png"]),
    st.lists(st.integers(-5, 5000), max_size=8),
    st.lists(st.floats(allow_nan=True, allow_infinity=True), max_size=8),
    st.lists(st.lists(st.floats(-1e6, 1e6), max_size=10), max_size=3),
    st.dictionaries(st.sampled_from(["size", "counts", "id"]), st.integers(-5, 100), max_size=3),
)


def _record(entry: str, ok: bool) -> None:
    OUTCOMES[entry, "ok" if ok else "refused"] += 1


@pytest.fixture(scope="module", autouse=True)
def _report_outcomes():
    yield
    if report := os.environ.get("INSTSEG_FUZZ_REPORT"):
        Path(report).write_text(json.dumps({f"{e} {o}": n for (e, o), n in sorted(OUTCOMES.items())}))


def _mutate(doc: Any, data: st.DataObject) -> Any:
    """One random change somewhere in a JSON document: a value replaced by a nasty one, a key
    deleted, a record duplicated, or the whole document replaced."""
    if data.draw(st.integers(0, 30)) == 0:
        return data.draw(NASTY)
    node, path = doc, []
    while isinstance(node, dict | list) and node and data.draw(st.booleans()):
        key = data.draw(
            st.sampled_from(sorted(node, key=str) if isinstance(node, dict) else range(len(node)))
        )
        path.append((node, key))
        node = node[key]
    if not path:
        return doc
    parent, key = path[-1]
    op = data.draw(st.sampled_from(["set", "set", "set", "delete", "duplicate"]))
    if op == "set":
        parent[key] = data.draw(NASTY)
    elif op == "delete":
        del parent[key]
    elif isinstance(parent, list):
        parent.append(copy.deepcopy(parent[key]))
    return doc


def _mutated(base: Any, data: st.DataObject, most: int) -> Any:
    """A copy of ``base`` with 1 to ``most`` random changes."""
    doc = copy.deepcopy(base)
    for _ in range(data.draw(st.integers(1, most))):
        doc = _mutate(doc, data)
    return doc


# ---- COCO annotation files ------------------------------------------------------------------


@pytest.fixture(scope="module")
def coco_base(tmp_path_factory) -> tuple[Path, dict[str, Any]]:
    root = write_tiny_coco(tmp_path_factory.mktemp("fuzz_coco"), n_train=3, n_val=1)
    return root, json.loads((root / "annotations" / "instances_train.json").read_text())


@FUZZ
@given(data=st.data())
def test_a_coco_file_that_data_check_passes_trains(coco_base, data):
    root, base = coco_base
    doc = _mutated(base, data, 3)
    path = root / "annotations" / "fuzz.json"
    path.write_text(json.dumps(doc))
    report = check_dataset(path, images=root / "train")
    try:
        index = CocoIndex(CocoSource(path, root / "train"), keep_crowd=True)
    except InstsegError:
        assert not report.ok, "data check passed a file that the loader refuses"
        _record("coco", False)
        return
    samples = CocoTrainDataset(index, TrainTransform(hflip=False))
    for i in range(len(samples)):
        try:
            image, target = samples[i]
        except InstsegError:
            assert not report.ok, "data check passed a file whose samples cannot be read"
            _record("coco", False)
            return
        assert target["masks"].shape[-2:] == image.shape[-2:]
        assert len(target["masks"]) == len(target["labels"]) == len(target["boxes"])
    _record("coco", report.ok)


# ---- RLE ---------------------------------------------------------------------------------------


@FUZZ
@given(
    mask=st.lists(st.booleans(), min_size=48, max_size=48),
    cut=st.integers(0, 60),
    noise=st.lists(st.integers(0, 255), max_size=4),
    at=st.integers(0, 60),
)
def test_rle_counts_are_read_exactly_or_refused(mask, cut, noise, at):
    m = np.asfortranarray(np.array(mask, dtype=np.uint8).reshape(6, 8))
    counts = mask_utils.encode(m)["counts"]
    runs = compressed_counts(counts)
    assert runs.sum() == 48 and int(runs[1::2].sum()) == int(m.sum())  # exact on what pycocotools wrote
    mutated = counts[:cut] + bytes(noise) + counts[cut:][at:]
    rle = {"size": [6, 8], "counts": mutated}
    try:
        check_rle(rle, 6, 8)
    except ValueError:
        _record("rle", False)
        return
    decoded = mask_utils.decode(rle)  # only checked strings reach pycocotools
    assert decoded.shape == (6, 8)
    assert int(decoded.sum()) == int(compressed_counts(mutated)[1::2].sum())
    _record("rle", True)


@st.composite
def segmentations(draw) -> Any:
    """Near-valid segmentations of a 1..40 px image (polygons, uncompressed counts, RLE strings) with
    their sizes, or anything nasty."""
    height, width = draw(st.integers(1, 40)), draw(st.integers(1, 40))
    coordinate = st.floats(-45, 85, allow_nan=False)
    kind = draw(st.sampled_from(["polygons", "counts", "string", "nasty"]))
    if kind == "polygons":
        seg = draw(st.lists(st.lists(coordinate, min_size=4, max_size=14), min_size=1, max_size=3))
    elif kind == "counts":
        counts = draw(st.lists(st.integers(-2, height * width), max_size=6))
        seg = {"size": [height, width], "counts": [*counts, max(height * width - sum(counts), 0)]}
    elif kind == "string":
        mask = np.asfortranarray(
            draw(st.lists(st.booleans(), min_size=height * width, max_size=height * width))
        )
        counts = mask_utils.encode(np.asfortranarray(mask.reshape(width, height).T.astype(np.uint8)))[
            "counts"
        ]
        seg = {"size": [height, width], "counts": counts.decode()[: draw(st.integers(0, len(counts)))]}
    else:
        seg = draw(NASTY)
    return seg, height, width


@FUZZ
@given(case=segmentations())
def test_any_segmentation_is_an_rle_or_a_problem(case):
    segmentation, height, width = case
    ann = {"id": 1, "image_id": 1, "category_id": 1, "segmentation": segmentation}
    rle, problem = check_annotation(ann, {1: {"height": height, "width": width}}, {1: 1})
    if rle is not None:
        assert mask_utils.decode(rle).shape == (height, width)
    _record("segmentation", rle is not None)
    assert rle is not None or problem is not None


# ---- images ------------------------------------------------------------------------------------

MODES = ["RGB", "L", "1", "P", "RGBA", "LA", "I;16", "I", "F", "CMYK"]


@st.composite
def image_files(draw) -> tuple[bytes, str]:
    mode = draw(st.sampled_from(MODES))
    fmt = draw(st.sampled_from(["PNG", "JPEG", "TIFF", "BMP", "WEBP"]))
    w, h = draw(st.integers(1, 24)), draw(st.integers(1, 24))
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    image = Image.fromarray((rng.random((h, w, 3)) * 255).astype(np.uint8)).convert(
        mode if mode not in ("I;16", "I", "F") else "L"
    )
    if mode in ("I;16", "I", "F"):
        image = image.convert("I").point(lambda v: v * 200).convert(mode) if mode != "I;16" else image
    exif = Image.Exif()
    exif[0x0112] = draw(st.sampled_from([1, 3, 6, 8, 0, 9, 65535]))
    buffer = io.BytesIO()
    try:
        image.save(buffer, fmt, exif=exif.tobytes()) if fmt in ("PNG", "JPEG", "WEBP") else image.save(
            buffer, fmt
        )
    except (OSError, ValueError, KeyError):  # the format cannot hold that mode
        buffer = io.BytesIO()
        image.convert("RGB").save(buffer, "PNG")
        fmt = "PNG"
    raw = bytearray(buffer.getvalue())
    edit = draw(st.sampled_from(["none", "truncate", "flip", "random", "huge"]))
    if edit == "truncate":
        raw = raw[: draw(st.integers(0, len(raw)))]
    elif edit == "flip":
        for _ in range(draw(st.integers(1, 8))):
            raw[draw(st.integers(0, len(raw) - 1))] = draw(st.integers(0, 255))
    elif edit == "random":
        raw = bytearray(draw(st.binary(max_size=256)))
    elif edit == "huge" and fmt == "PNG":
        side = draw(st.sampled_from([12000, 10**5]))  # over instseg's limit; over PIL's too
        raw[16:24] = side.to_bytes(4, "big") * 2
        raw[29:33] = zlib.crc32(bytes(raw[12:29])).to_bytes(4, "big")  # the IHDR's CRC
    return bytes(raw), fmt.lower()


@FUZZ
@given(case=image_files())
def test_any_image_file_reads_as_rgb_or_is_refused(tmp_path_factory, case):
    raw, suffix = case
    path = tmp_path_factory.getbasetemp() / f"fuzz.{suffix}"
    path.write_bytes(raw)
    try:
        image = read_image(path)
    except InstsegError as exc:
        assert str(path) in str(exc)
        _record("image", False)
        return
    assert image.dtype == torch.uint8 and image.ndim == 3 and image.shape[0] == 3
    _record("image", True)


# ---- checkpoint headers ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def checkpoint_base() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    from instseg.engine.checkpoint import load_meta

    file = bundled_checkpoint("nuclei")
    assert file is not None and file.name == WEIGHTS
    return load_file(str(file)), load_meta(file)


@FUZZ
@given(data=st.data())
def test_any_checkpoint_header_loads_and_predicts_or_is_refused(tmp_path_factory, checkpoint_base, data):
    weights, meta = checkpoint_base
    header = _mutated(meta, data, 2)
    text = json.dumps(header) if data.draw(st.integers(0, 20)) else data.draw(st.text(max_size=20))
    path = tmp_path_factory.getbasetemp() / "fuzz_checkpoint.safetensors"
    save_file(weights, str(path), metadata={"instseg": text})
    try:
        predictor = Predictor.from_checkpoint(path, "cpu")
        out = predictor.predict(torch.rand(3, 40, 48))
    except InstsegError:
        _record("checkpoint", False)
        return
    assert out.masks.shape[-2:] == (40, 48)
    _record("checkpoint", True)


# ---- result files ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def results_base(coco_base) -> tuple[Path, list[dict[str, Any]]]:
    root, _ = coco_base
    gt = root / "annotations" / "instances_train.json"
    index = CocoIndex(CocoSource(gt, root / "train"))
    results = []
    for image_id, objects in index.objects.items():
        for obj in objects:
            rle = {"size": obj["rle"]["size"], "counts": obj["rle"]["counts"].decode("ascii")}
            category = index.categories[obj["label"] - 1].id
            x, y, w, h = mask_utils.toBbox(obj["rle"]).tolist()
            results.append(
                {
                    "image_id": image_id,
                    "category_id": category,
                    "segmentation": rle,
                    "bbox": [x, y, w, h],
                    "score": 0.9,
                }
            )
    report = evaluate_results(gt, results, EvalOptions(iou_types=("segm",), matching=False))
    assert report.coco["segm"].stats["AP"] == pytest.approx(1.0)  # the unmutated file is scored exactly
    return gt, results


@FUZZ
@given(data=st.data())
def test_any_results_file_is_scored_or_refused(tmp_path_factory, results_base, data):
    gt, base = results_base
    results = _mutated(base, data, 2)
    if data.draw(st.booleans()) and isinstance(results, list) and results and isinstance(results[0], dict):
        seg = results[0].get("segmentation")
        if isinstance(seg, dict) and isinstance(seg.get("counts"), str):
            seg["counts"] = seg["counts"][: data.draw(st.integers(0, len(seg["counts"])))]  # truncated
    path = tmp_path_factory.getbasetemp() / "fuzz_results.json"
    path.write_text(json.dumps(results))
    try:
        report = evaluate_results(gt, path, EvalOptions(iou_types=("segm", "bbox"), matching=True))
    except InstsegError:
        _record("results", False)
        return
    assert 0.0 <= report.coco["segm"].stats["AP"] <= 1.0 or report.coco["segm"].stats["AP"] == -1
    _record("results", True)
