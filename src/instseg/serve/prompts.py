"""Prompting a served SAM: image embeddings kept by id, so that each click costs only the decoder.

``POST /v1/embed`` runs the image encoder once and answers an ``image_id`` (a hash of the uploaded
bytes: the same file again is a cache hit); ``POST /v1/prompt`` takes JSON naming that id with
clicks, labels, a box and whether to refine the previous answer, and answers masks as
``/v1/predict`` does. Embeddings are kept up to ``max_bytes`` together, the least recently used
dropped first (the newest always stays). One ``PromptPredictor`` serves every image: each call
swaps its image's state in under a lock, so inference workers share one model.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from torch import Tensor

from instseg.errors import PromptError
from instseg.prompt_predictor import PromptPredictor
from instseg.structures import Instances

MAX_POINTS = 64  # clicks in one prompt


@dataclass
class ImageState:
    embedding: Tensor
    original: tuple[int, int]
    resized: tuple[int, int]
    logits: Tensor | None = None  # the last answer's, the mask prompt of a refinement


@dataclass(frozen=True)
class Prompt:
    image_id: str
    points: list[list[float]] | None
    labels: list[float] | None
    box: list[float] | None
    multimask: bool
    refine: bool


class UnknownImage(KeyError):
    pass


def image_id(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:24]


class EmbeddingCache:
    def __init__(self, predictor: PromptPredictor, max_bytes: int = 512 * 2**20) -> None:
        self.predictor, self.max_bytes = predictor, max_bytes
        self.states: OrderedDict[str, ImageState] = OrderedDict()
        self.lock = threading.Lock()

    def embed(self, key: str, image: Tensor) -> dict[str, Any]:
        """The image's embedding under ``key`` (computed unless cached); ``image`` is uint8 ``[3, H, W]``."""
        started = time.perf_counter()
        with self.lock:
            cached = key in self.states
            if cached:
                self.states.move_to_end(key)
            else:
                p = self.predictor
                p.set_image(image.float().div_(255.0))
                self.states[key] = ImageState(p.embedding, p.original, p.resized)
                while len(self.states) > 1 and self.bytes() > self.max_bytes:
                    self.states.popitem(last=False)
            height, width = self.states[key].original
        seconds = round(time.perf_counter() - started, 4)
        return {"image_id": key, "width": width, "height": height, "cached": cached, "seconds": seconds}

    def bytes(self) -> int:
        return sum(s.embedding.numel() * s.embedding.element_size() for s in self.states.values())

    def prompt(self, prompt: Prompt) -> Instances:
        """One prompt on an embedded image; ``PromptError`` for a prompt the predictor refuses."""
        with self.lock:
            state = self.states.get(prompt.image_id)
            if state is None:
                raise UnknownImage(prompt.image_id)
            self.states.move_to_end(prompt.image_id)
            p = self.predictor
            p.embedding, p.original, p.resized, p.logits = (
                state.embedding,
                state.original,
                state.resized,
                None,
            )
            if prompt.refine and state.logits is None:
                raise PromptError("refine: this image has no previous answer to refine")
            mask_input = state.logits if prompt.refine else None
            found = p.predict(prompt.points, prompt.labels, prompt.box, mask_input, prompt.multimask)
            state.logits = p.logits[0][:1]
            return found


def parse_prompt(body: Any) -> Prompt:
    """The JSON body of ``/v1/prompt``; ``PromptError`` names the field that is wrong."""
    if not isinstance(body, dict):
        raise PromptError("the body must be a JSON object")
    unknown = set(body) - {"image_id", "points", "labels", "box", "multimask", "refine", "masks"}
    if unknown:
        raise PromptError(f"unknown fields {sorted(unknown)}")
    key = body.get("image_id")
    if not isinstance(key, str) or not key:
        raise PromptError("image_id: the id /v1/embed answered is required")
    points, labels, box = body.get("points"), body.get("labels"), body.get("box")
    if points is not None and (not isinstance(points, list) or len(points) > MAX_POINTS):
        raise PromptError(f"points: a list of at most {MAX_POINTS} [x, y] pairs")
    if points is None and box is None:
        raise PromptError("give points (with labels) or a box")
    flags = {name: body.get(name, False) for name in ("multimask", "refine")}
    for name, value in flags.items():
        if not isinstance(value, bool):
            raise PromptError(f"{name}: true or false, got {value!r}")
    return Prompt(key, points, labels, box, flags["multimask"], flags["refine"])
