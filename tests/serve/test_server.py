"""The HTTP server, tested over real HTTP: a uvicorn server on 127.0.0.1 and a stdlib client."""

from __future__ import annotations

import base64
import json
import threading
import time
import zlib
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pycocotools.mask as mask_utils
import pytest
import torch

import instseg
from instseg.structures import Category, Instances

pytest.importorskip("uvicorn")
from instseg.serve.app import ServeConfig, create_app
from tests.serve.http import Running, multipart, post_predict, post_streaming, request

DEMO_VAL = Path(instseg.__file__).parent / "assets" / "dsb2018_mini" / "val"


def png_header(width: int, height: int) -> bytes:
    """A PNG that declares width x height in its header and holds one tiny, wrong-sized data chunk."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return len(data).to_bytes(4, "big") + kind + data + zlib.crc32(kind + data).to_bytes(4, "big")

    ihdr = width.to_bytes(4, "big") + height.to_bytes(4, "big") + bytes([8, 2, 0, 0, 0])
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 16))
        + chunk(b"IEND", b"")
    )


@pytest.fixture(scope="module")
def nuclei():
    return instseg.load("nuclei", device="cpu")


@pytest.fixture(scope="module")
def served(nuclei) -> Iterator[str]:
    config = ServeConfig(workers=1, queue=4, max_upload_bytes=2 * 2**20, max_pixels=4000 * 4000)
    running = Running(create_app(nuclei, config))
    yield running.url
    running.stop()


@pytest.fixture(scope="module")
def image_file() -> Path:
    return sorted(DEMO_VAL.glob("*.png"))[2]


def test_health_model_and_page(served):
    assert request(f"{served}/healthz")[0] == 200
    status, _, body = request(f"{served}/v1/model")
    model = json.loads(body)
    assert (
        status == 200 and model["family"] == "yolact" and model["classes"] == [{"id": 1, "name": "nucleus"}]
    )
    status, headers, page = request(f"{served}/")
    assert status == 200 and headers["content-type"].startswith("text/html") and b"v1/predict" in page


def test_predict_matches_in_process_prediction_in_every_mask_format(served, nuclei, image_file):
    data = image_file.read_bytes()
    expected = nuclei.predict(str(image_file), min_score=0.5)
    assert len(expected) > 0
    status, rle = post_predict(served, {"image": ("a.png", data)})
    assert status == 200 and len(rle["instances"]) == len(expected)
    masks = np.stack([mask_utils.decode(d["mask"]) for d in rle["instances"]]).astype(bool)
    assert masks.shape == tuple(expected.masks.shape) and np.array_equal(masks, expected.masks.numpy())
    assert [d["score"] for d in rle["instances"]] == pytest.approx(expected.scores.tolist(), abs=1e-5)

    status, poly = post_predict(
        served, {"image": ("a.png", data), "masks": "polygons", "score_threshold": "0.7"}
    )
    assert status == 200 and len(poly["instances"]) == int((expected.scores >= 0.7).sum())
    assert all(d["polygons"] and len(d["polygons"][0]) >= 6 for d in poly["instances"])

    status, png = post_predict(served, {"image": ("a.png", data), "masks": "png"})
    labels = cv2.imdecode(
        np.frombuffer(base64.b64decode(png["label_map_png"]), np.uint8), cv2.IMREAD_UNCHANGED
    )
    assert status == 200 and labels.dtype == np.uint16 and labels.shape == (png["height"], png["width"])
    assert set(np.unique(labels)) - {0} <= set(range(1, len(png["instances"]) + 1))
    assert len(np.unique(labels)) > len(png["instances"]) // 2  # most instances own pixels


@pytest.mark.parametrize(
    ("fields", "status", "words"),
    [
        ({"other": "x"}, 400, "no file in the form field 'image'"),
        ({"image": ("a.png", b"")}, 400, "empty"),
        ({"image": ("a.png", b"definitely not an image" * 10)}, 415, "not an image format"),
        ({"image": ("a.png", png_header(64, 64))}, 400, "cannot read image"),
        ({"image": ("a.png", png_header(100_000, 100_000))}, 413, "limit"),
        ({"image": ("a.png", png_header(5000, 5000))}, 413, "more than the limit of 16000000 pixels"),
        ({"image": ("a.png", "IMAGE"), "score_threshold": "high"}, 400, "score_threshold must be a number"),
        ({"image": ("a.png", "IMAGE"), "score_threshold": "7"}, 400, "must be in [0, 1]"),
        ({"image": ("a.png", "IMAGE"), "masks": "svg"}, 400, "masks must be one of"),
    ],
)
def test_bad_requests_get_a_clear_4xx(served, image_file, fields, status, words):
    fields = {k: (v[0], image_file.read_bytes()) if v == ("a.png", "IMAGE") else v for k, v in fields.items()}
    got, body = post_predict(served, fields)
    assert got == status and words in body["detail"]


def test_oversized_and_non_multipart_bodies(served):
    status, _, body = request(f"{served}/v1/predict", b"x" * 100, {"Content-Type": "application/json"})
    assert status == 415 and "multipart/form-data" in json.loads(body)["detail"]
    big, headers = multipart({"image": ("a.png", b"\0" * (3 * 2**20))})
    status, body = post_streaming(f"{served}/v1/predict", big, headers)
    assert status == 413 and "over the limit" in json.loads(body)["detail"]


def test_metrics_count_requests_by_status(served, image_file):
    post_predict(served, {"image": ("a.png", b"nope" * 20)})
    status, headers, body = request(f"{served}/metrics")
    text = body.decode()
    assert status == 200 and headers["content-type"].startswith("text/plain")
    assert 'instseg_requests_total{endpoint="/v1/predict",status="415"}' in text
    assert "instseg_request_seconds_bucket" in text and "instseg_queue_depth" in text


class Blocking:
    """A predictor whose predictions wait for a release, to fill the workers and the queue."""

    family = "test"
    categories = (Category(1, "thing"),)

    def __init__(self) -> None:
        self.release = threading.Event()

    def predict(self, image, min_score=None, cropped=False):
        self.release.wait(timeout=30)
        empty = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0), "scores": torch.zeros(0)}
        return Instances.from_output(empty, tuple(image.shape[-2:]))


def test_a_full_queue_answers_503_with_retry_after(image_file):
    blocking = Blocking()
    running = Running(create_app(blocking, ServeConfig(workers=1, queue=1)))  # type: ignore[arg-type]
    data = image_file.read_bytes()
    results: list[int] = []
    try:
        # two requests occupy the worker and the queue slot
        threads = [
            threading.Thread(
                target=lambda: results.append(post_predict(running.url, {"image": ("a.png", data)})[0])
            )
            for _ in range(2)
        ]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 20
        while True:
            text = request(f"{running.url}/metrics")[2].decode()
            if "instseg_queue_depth 1.0" in text:
                break
            assert time.monotonic() < deadline, "the queue never filled"
            time.sleep(0.05)
        body, headers = multipart({"image": ("a.png", data)})
        status, response_headers, payload = request(f"{running.url}/v1/predict", body, headers)
        assert status == 503 and response_headers["retry-after"] == "1"
        assert "busy" in json.loads(payload)["detail"]
    finally:
        blocking.release.set()
        for t in threads:
            t.join(timeout=30)
        running.stop()
    assert results == [200, 200]
