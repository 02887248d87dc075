"""A served SAM over real HTTP: /v1/embed once per image, /v1/prompt per click, the same masks as the
prompt predictor in process; bad prompts and unknown images answered with one JSON line."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator

import numpy as np
import pycocotools.mask as mask_utils
import pytest
import torch
from PIL import Image

from instseg.models.sam.model import SAM
from instseg.predictor import Predictor
from instseg.prompt_predictor import PromptPredictor
from instseg.serve.prompts import EmbeddingCache, parse_prompt
from tests.models.test_sam import TINY

pytest.importorskip("uvicorn")
from instseg.models.sam.model import OBJECT
from instseg.serve.app import ServeConfig, create_app
from tests.serve.http import Running, multipart, request


@pytest.fixture(scope="module")
def model() -> SAM:
    torch.manual_seed(0)
    return SAM(TINY).eval()


@pytest.fixture(scope="module")
def served(model) -> Iterator[str]:
    predictor = Predictor(model, "sam", {}, list(OBJECT), "cpu", {})
    running = Running(create_app(predictor, ServeConfig(workers=1, queue=4)))
    yield running.url
    running.stop()


def png(seed: int, size: tuple[int, int] = (60, 90)) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def post_json(url: str, body: object) -> tuple[int, dict]:
    status, _, data = request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    return status, json.loads(data)


def embed(url: str, data: bytes) -> dict:
    body, headers = multipart({"image": ("a.png", data)})
    status, _, answer = request(f"{url}/v1/embed", body, headers)
    assert status == 200, answer
    return json.loads(answer)


def test_prompts_answer_what_the_predictor_answers_in_process(served, model):
    data = png(0)
    first = embed(served, data)
    assert (first["width"], first["height"], first["cached"]) == (90, 60, False)
    assert embed(served, data)["cached"] and embed(served, data)["image_id"] == first["image_id"]
    local = PromptPredictor(model, "cpu")
    local.set_image(np.asarray(Image.open(io.BytesIO(data))))
    asks = [
        ({"points": [[20, 30]], "labels": [1], "multimask": True}, {"points": [[20, 30]], "labels": [1]}),
        ({"box": [5, 5, 50, 40]}, {"box": [5, 5, 50, 40], "multimask": False}),
        (
            {"points": [[20, 30], [40, 12]], "labels": [1, 0], "refine": True},
            {"points": [[20, 30], [40, 12]], "labels": [1, 0], "multimask": False},
        ),
    ]
    for remote, here in asks:
        if remote.get("refine"):
            here["mask_input"] = local.logits[0][:1]
        status, answer = post_json(f"{served}/v1/prompt", {"image_id": first["image_id"], **remote})
        expected = local.predict(**here)
        assert status == 200, answer
        assert len(answer["instances"]) == len(expected) == (3 if remote.get("multimask") else 1)
        masks = np.stack([mask_utils.decode(i["mask"]) for i in answer["instances"]]).astype(bool)
        assert np.array_equal(masks, expected.masks.numpy())
        scores = [i["score"] for i in answer["instances"]]
        assert np.allclose(scores, expected.scores.numpy(), atol=1e-5)


def test_bad_prompts_and_unknown_images_get_one_json_line(served):
    key = embed(served, png(1))["image_id"]
    cases = [
        ({"image_id": "nope", "points": [[1, 1]]}, 404, "embed the image"),
        ({"image_id": key}, 400, "give points"),
        ({"image_id": key, "points": [[1, 1]], "labels": [7]}, 400, "labels"),
        ({"image_id": key, "points": [[500, 1]]}, 400, "outside the 90x60 image"),
        ({"image_id": key, "box": [1, 2, 3]}, 400, "box"),
        ({"image_id": key, "points": "x"}, 400, "points"),
        ({"image_id": key, "points": [[1, 1]], "multimask": "yes"}, 400, "multimask"),
        ({"image_id": key, "points": [[1, 1]], "url": "http://example.com"}, 400, "unknown fields"),
        ({"image_id": key, "points": [[1, 1]], "masks": "svg"}, 400, "masks must be one of"),
        ([1, 2], 400, "JSON object"),
    ]
    for body, status, words in cases:
        got, answer = post_json(f"{served}/v1/prompt", body)
        assert (got, set(answer)) == (status, {"detail"}), (body, answer)
        assert words in answer["detail"], (body, answer)
    status, _, answer = request(f"{served}/v1/prompt", b"{not json", {"Content-Type": "application/json"})
    assert status == 400 and "JSON" in json.loads(answer)["detail"]
    fresh = embed(served, png(2))["image_id"]
    status, answer = post_json(f"{served}/v1/prompt", {"image_id": fresh, "points": [[1, 1]], "refine": True})
    assert status == 400 and "no previous answer" in answer["detail"]
    status, _, model = request(f"{served}/v1/model")
    assert json.loads(model)["prompts"] is True


def test_a_model_without_prompts_says_so(tmp_path):
    import instseg

    running = Running(create_app(instseg.load("nuclei", device="cpu")))
    try:
        status, answer = post_json(f"{running.url}/v1/prompt", {"image_id": "x", "points": [[1, 1]]})
        assert status == 404 and "takes no prompts" in answer["detail"]
        assert json.loads(request(f"{running.url}/v1/model")[2])["prompts"] is False
    finally:
        running.stop()


def test_the_embedding_cache_drops_the_least_recently_used_within_its_bytes(model):
    cache = EmbeddingCache(PromptPredictor(model, "cpu"), max_bytes=1)  # room for the newest only
    image = torch.randint(0, 256, (3, 40, 50), dtype=torch.uint8)
    cache.embed("a", image)
    cache.embed("b", image)
    assert list(cache.states) == ["b"]
    cache.max_bytes = 10 * cache.bytes()
    cache.embed("a", image)
    cache.embed("b", image)  # a hit: b becomes the most recent
    assert list(cache.states) == ["a", "b"]
    assert cache.prompt(parse_prompt({"image_id": "a", "points": [[3, 4]]})).masks.shape == (1, 40, 50)
    assert list(cache.states) == ["b", "a"]
