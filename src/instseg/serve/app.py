"""The HTTP server: one loaded model, a bounded pool of inference workers, limits on what a client sends.

- ``POST /v1/predict``: a multipart upload in the form field ``image``; form fields
  ``score_threshold`` (default: the server's ``--min-score``) and ``masks``
  (``rle``, ``polygons`` or ``png``). Answers the instances as JSON.
- ``GET /v1/model``: family, classes, input; ``GET /healthz``; ``GET /metrics``
  (Prometheus text: requests by endpoint and status, latency histograms, queue depth).
- ``GET /``: the web page (``static/index.html``).
- With a SAM model, ``POST /v1/embed`` (the form field ``image``) and ``POST /v1/prompt`` (JSON:
  ``image_id``, ``points``, ``labels``, ``box``, ``multimask``, ``refine``, ``masks``): the
  embedding is computed once per image and each prompt runs the decoder only (``prompts.py``).

The model loads once. Inference runs in ``workers`` threads; at most ``queue``
more requests wait for one, and the next gets 503 with ``Retry-After``. Bodies
over ``max_upload_bytes`` are cut off with 413 while they stream in; images are
checked against the pixel limit from their header before decoding (413), an
unknown format is 415 and a corrupt file 400, each with a JSON ``detail`` line.
The server never fetches a URL a client gives it: it takes uploaded bytes only.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from importlib import resources
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from PIL import Image, UnidentifiedImageError
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from starlette.formparsers import MultiPartException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from instseg.data.images import ImageTooLarge, decode_image, max_pixels
from instseg.errors import DataError, PromptError
from instseg.predictor import Predictor
from instseg.prompt_predictor import PromptPredictor
from instseg.serve.prompts import EmbeddingCache, Prompt, UnknownImage, image_id, parse_prompt
from instseg.serve.responses import prediction_json
from instseg.version import __version__

MASK_FORMATS = ("rle", "polygons", "png")


@dataclass(frozen=True)
class ServeConfig:
    workers: int = 1  # inference threads (each uses the model's own intra-op threads)
    queue: int = 8  # requests that may wait for a worker before 503
    max_upload_bytes: int = 32 * 2**20
    max_pixels: int = 0  # decoded image size limit; 0: the toolkit's (INSTSEG_MAX_PIXELS)
    min_score: float = 0.5  # default score_threshold of /v1/predict (the model's own still applies below)
    embedding_bytes: int = 512 * 2**20  # SAM: image embeddings kept for /v1/prompt


class ClientError(Exception):
    def __init__(self, status: int, detail: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.status, self.detail, self.headers = status, detail, headers or {}


class BodyLimit:
    """ASGI middleware: a request body larger than ``limit`` bytes is answered 413 as soon as it is,
    whether the client declared its length or streams it chunked."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers", [])).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            await _send_json(
                send, 413, f"request body of {int(declared)} bytes is over the limit of {self.limit}"
            )
            return
        seen = 0
        started = False

        async def limited_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise _BodyTooLarge
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except _BodyTooLarge:
            if not started:
                await _send_json(send, 413, f"request body is over the limit of {self.limit} bytes")


class _BodyTooLarge(Exception):
    pass


async def _send_json(send: Send, status: int, detail: str) -> None:
    body = json.dumps({"detail": detail}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class Metrics:
    """The server's Prometheus metrics, in a registry of its own (several apps may share a process)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "instseg_requests", "HTTP requests", ["endpoint", "status"], registry=self.registry
        )
        self.latency = Histogram(
            "instseg_request_seconds",
            "time from request to response",
            ["endpoint"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=self.registry,
        )
        self.inference = Histogram(
            "instseg_inference_seconds",
            "model time per image",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=self.registry,
        )
        self.queue = Gauge("instseg_queue_depth", "requests waiting for a worker", registry=self.registry)
        self.busy = Gauge("instseg_busy_workers", "workers running inference", registry=self.registry)


def create_app(predictor: Predictor, config: ServeConfig | None = None) -> FastAPI:
    """The app around a loaded ``predictor``; ``uvicorn.run(create_app(...))`` serves it."""
    config = config or ServeConfig()
    pixel_limit = config.max_pixels or max_pixels()
    executor = ThreadPoolExecutor(max_workers=config.workers, thread_name_prefix="instseg-infer")
    metrics = Metrics()
    state = {"in_flight": 0}
    prompts = predictor.family == "sam" and hasattr(predictor.model, "decode")

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        executor.shutdown(wait=False, cancel_futures=True)

    app = FastAPI(title="instseg", version=__version__, docs_url="/docs", redoc_url=None, lifespan=lifespan)
    page = (resources.files("instseg") / "serve" / "static" / "index.html").read_text()
    app.add_middleware(BodyLimit, limit=config.max_upload_bytes)  # added first: inside the counting one

    @app.middleware("http")
    async def count(request: Request, call_next: Any) -> Response:
        started = time.perf_counter()
        endpoint = request.url.path if request.url.path in _ENDPOINTS else "other"
        try:
            response = await call_next(request)
        except Exception:  # an unexpected failure is still one JSON line, counted as 500
            response = JSONResponse({"detail": "internal error"}, status_code=500)
        metrics.requests.labels(endpoint, str(response.status_code)).inc()
        metrics.latency.labels(endpoint).observe(time.perf_counter() - started)
        return response

    @app.exception_handler(ClientError)
    async def client_error(_: Request, exc: ClientError) -> JSONResponse:
        return JSONResponse({"detail": exc.detail}, status_code=exc.status, headers=exc.headers)

    @app.get("/", response_class=HTMLResponse)
    async def index() -> HTMLResponse:
        return HTMLResponse(page)

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/metrics")
    async def prometheus() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/model")
    async def model_info() -> dict[str, Any]:
        return {
            "family": predictor.family,
            "classes": [{"id": c.id, "name": c.name} for c in predictor.categories],
            "input": "an image file of any size (PNG, JPEG, TIFF, BMP, WebP); RGB, grey or 16-bit",
            "max_upload_bytes": config.max_upload_bytes,
            "max_pixels": pixel_limit,
            "default_score_threshold": config.min_score,
            "mask_formats": list(MASK_FORMATS),
            "prompts": cache is not None,
            "instseg_version": __version__,
        }

    async def bounded(work: Any, *args: Any) -> JSONResponse:
        """``work(*args)`` on an inference worker, or 503 when the workers and the queue are full."""
        if state["in_flight"] >= config.workers + config.queue:
            raise ClientError(503, "the server is busy; retry shortly", {"Retry-After": "1"})
        state["in_flight"] += 1
        metrics.queue.set(max(state["in_flight"] - config.workers, 0))
        try:
            out = await asyncio.get_running_loop().run_in_executor(executor, work, *args)
            return JSONResponse(out)  # plain JSON types already: FastAPI's encoder walk is skipped
        finally:
            state["in_flight"] -= 1
            metrics.queue.set(max(state["in_flight"] - config.workers, 0))

    @app.post("/v1/predict")
    async def predict(request: Request) -> JSONResponse:
        upload, options = await _read_form(request)
        threshold = _score_threshold(options.get("score_threshold"), config.min_score)
        masks = _mask_format(options.get("masks", "rle"))
        image = _decode(upload, pixel_limit)
        return await bounded(_infer, predictor, image, threshold, masks, metrics)

    cache = EmbeddingCache(PromptPredictor(predictor.model), config.embedding_bytes) if prompts else None

    def promptable() -> EmbeddingCache:
        if cache is None:
            raise ClientError(404, f"this server's model ({predictor.family}) takes no prompts")
        return cache

    @app.post("/v1/embed")
    async def embed(request: Request) -> JSONResponse:
        embeddings = promptable()
        upload, _ = await _read_form(request)
        image = _decode(upload, pixel_limit)
        return await bounded(embeddings.embed, image_id(upload), image)

    @app.post("/v1/prompt")
    async def prompt(request: Request) -> JSONResponse:
        embeddings = promptable()
        try:
            body = await request.json()
        except ValueError:
            raise ClientError(400, "the body must be JSON") from None
        try:
            asked = parse_prompt(body)
        except PromptError as exc:
            raise ClientError(400, str(exc)) from None
        masks = _mask_format(body.get("masks", "rle"))
        return await bounded(_answer_prompt, embeddings, asked, masks)

    return app


_ENDPOINTS = ("/", "/healthz", "/metrics", "/v1/model", "/v1/predict", "/v1/embed", "/v1/prompt")


def _mask_format(masks: Any) -> str:
    if masks not in MASK_FORMATS:
        raise ClientError(400, f"masks must be one of {', '.join(MASK_FORMATS)}, got {masks!r}")
    return masks


def _answer_prompt(embeddings: EmbeddingCache, asked: Prompt, masks: str) -> dict[str, Any]:
    started = time.perf_counter()
    try:
        instances = embeddings.prompt(asked)
    except UnknownImage:
        raise ClientError(
            404, f"unknown image_id {asked.image_id!r}: embed the image with POST /v1/embed first"
        ) from None
    except PromptError as exc:
        raise ClientError(400, str(exc)) from None
    out = prediction_json(instances, masks)  # type: ignore[arg-type]
    out["seconds"] = round(time.perf_counter() - started, 4)
    return out


async def _read_form(request: Request) -> tuple[bytes, dict[str, str]]:
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        raise ClientError(415, "send the image as multipart/form-data in the field 'image'")
    try:
        async with request.form(max_files=1, max_fields=8, max_part_size=4096) as form:
            upload = form.get("image")
            if upload is None or isinstance(upload, str):
                raise ClientError(400, "no file in the form field 'image'")
            data = await upload.read()
            options = {k: v for k, v in form.items() if isinstance(v, str)}
    except MultiPartException as exc:
        raise ClientError(400, f"malformed multipart body ({exc.message})") from None
    if not data:
        raise ClientError(400, "the uploaded file 'image' is empty")
    return data, options


def _score_threshold(value: str | None, default: float) -> float:
    if value is None or value == "":
        return default
    try:
        threshold = float(value)
    except ValueError:
        raise ClientError(400, f"score_threshold must be a number, got {value!r}") from None
    if not 0.0 <= threshold <= 1.0:
        raise ClientError(400, f"score_threshold must be in [0, 1], got {threshold}")
    return threshold


def _decode(data: bytes, pixel_limit: int) -> Any:
    try:
        with Image.open(io.BytesIO(data)) as probe:
            width, height = probe.size
    except UnidentifiedImageError:
        raise ClientError(415, "not an image format this server reads (PNG, JPEG, TIFF, BMP, WebP)") from None
    except Image.DecompressionBombError as exc:
        raise ClientError(413, f"image refused: {exc}") from None
    except Exception as exc:  # PIL raises many types for a damaged header
        raise ClientError(400, f"cannot read the image header ({exc})") from None
    if width * height > pixel_limit:
        raise ClientError(413, f"image is {width}x{height}, more than the limit of {pixel_limit} pixels")
    try:
        return decode_image(io.BytesIO(data), "upload")
    except ImageTooLarge as exc:
        raise ClientError(413, str(exc)) from None
    except DataError as exc:
        raise ClientError(400, str(exc)) from None


def _infer(
    predictor: Predictor, image: Any, threshold: float, masks: str, metrics: Metrics
) -> dict[str, Any]:
    metrics.busy.inc()
    try:
        started = time.perf_counter()
        instances = predictor.predict(image.float().div_(255.0), min_score=threshold, cropped=True)
        seconds = time.perf_counter() - started
        metrics.inference.observe(seconds)
    finally:
        metrics.busy.dec()
    out = prediction_json(instances, masks)  # type: ignore[arg-type]
    out["seconds"] = round(seconds, 4)
    return out
