"""The routes: `create_app(classifier, settings)` is the FastAPI application serving one classifier.

A request goes: body (read within `max_upload_mb` and `read_timeout_s`) -> uploads (a raw body, or a
multipart form's files, at most `max_images`) -> probes (each image's header: per-image and per-request
pixel caps, before any pixel is decoded) -> decode and preprocess in the decode pool -> the batcher.
"""

from __future__ import annotations

import asyncio
import base64
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass
from importlib import resources
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from starlette.exceptions import HTTPException

from visionzoo.serve.batcher import DynamicBatcher, ModelError, QueueFull
from visionzoo.serve.classifier import Classifier, public_card
from visionzoo.serve.errors import ApiError
from visionzoo.serve.images import DecodePool, decode_upload, probe_upload
from visionzoo.serve.settings import PixelLimits, ServeSettings

__all__ = ["create_app", "page_html"]


@dataclass
class Service:
    """What the routes share: the model, the settings and the limits they imply, the batcher, the decoders."""

    classifier: Classifier
    settings: ServeSettings
    limits: PixelLimits
    batcher: DynamicBatcher
    decoders: DecodePool

    def prepare(self, name: str, data: bytes) -> np.ndarray:
        return self.classifier.prepare(decode_upload(name, data, self.limits))


async def read_body(request: Request, settings: ServeSettings) -> bytes:
    """The body, counted while reading so a huge upload never fills memory; 413 over the limit, 408 too slow."""
    limit = int(settings.max_upload_mb * 2**20)
    discard_limit = max(limit, int(settings.max_discard_mb * 2**20))
    declared = request.headers.get("content-length")
    declared = int(declared) if declared and declared.isascii() and declared.isdigit() else None
    chunks, size = [], 0

    async def consume():
        nonlocal size
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                chunks.clear()  # over the limit: the rest is counted and discarded, never kept
                if size > discard_limit:
                    return
            elif chunk:
                chunks.append(chunk)

    if declared is not None and declared > discard_limit:  # too large even to discard: closed unread
        raise ApiError(413, f"request body of {declared} bytes is over the {settings.max_upload_mb:g} MB limit")
    try:
        await asyncio.wait_for(consume(), settings.read_timeout_s)
    except TimeoutError:
        if size > limit:
            raise ApiError(413, f"request body is over the {settings.max_upload_mb:g} MB limit") from None
        raise ApiError(408, f"the request body did not arrive within {settings.read_timeout_s:g} s") from None
    if size > limit:
        shown = f" of {declared} bytes" if declared is not None else ""
        raise ApiError(413, f"request body{shown} is over the {settings.max_upload_mb:g} MB limit")
    return b"".join(chunks)


async def read_uploads(request: Request, settings: ServeSettings) -> list[tuple[str, bytes]]:
    """(name, bytes) of each image sent: the raw body, or each file of a multipart form (at most `max_images`)."""
    body = await read_body(request, settings)
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        if not body:
            raise ApiError(422, "empty request body; send an image as the body or as a multipart file")
        return [("body", body)]
    too_many = f"more than {settings.max_images} images in one request; send at most {settings.max_images}"
    request._body = body  # Starlette parses the form from the body we already read, within the limit
    try:  # max_files stops the parser at the first file over the cap
        form = await request.form(max_files=settings.max_images)
    except HTTPException as error:  # Starlette's answer to a malformed form, or one with too many files
        if "Too many files" in str(error.detail):
            raise ApiError(413, too_many) from None
        raise ApiError(422, f"malformed multipart form: {error.detail}") from None
    try:
        files = [(getattr(v, "filename", None) or key, await v.read()) for key, v in form.multi_items()
                 if hasattr(v, "read")]
    finally:
        await form.close()
    if not files:
        raise ApiError(422, "the multipart form holds no file; send the image as a file field")
    return files


async def probe_uploads(service: Service, uploads: list[tuple[str, bytes]]) -> list[int | ApiError]:
    """Each upload's decoded pixels (or why it is refused), read from the headers; 413 when all together
    are over the per-request cap, before any pixel is decoded."""
    probed = await asyncio.gather(*(service.decoders.run(probe_upload, name, data, service.limits)
                                    for name, data in uploads), return_exceptions=True)
    for result in probed:
        if not isinstance(result, (int, ApiError)):
            raise result
    total = sum(result for result in probed if isinstance(result, int))
    if total > service.limits.request:
        raise ApiError(413, f"the {len(uploads)} images of this request decode to {total} pixels, over this "
                            f"server's limit of {service.limits.request} per request; send fewer or smaller images")
    return probed


def parse_topk(request: Request, settings: ServeSettings) -> int:
    raw = request.query_params.get("topk", "5")
    if not (raw.isascii() and raw.isdigit()) or not 1 <= int(raw) <= settings.max_topk:  # '²' is a digit to isdigit
        raise ApiError(422, f"topk must be an integer from 1 to {settings.max_topk}, got {raw!r}")
    return int(raw)


def parse_tta(request: Request) -> bool:
    """`?tta=1`: average each image's output with its mirror's (both go through the batcher, as any image)."""
    raw = request.query_params.get("tta", "0").lower()
    if raw not in ("0", "1", "true", "false"):
        raise ApiError(422, f"tta must be 0 or 1, got {raw!r}")
    return raw in ("1", "true")


async def classify_one(service: Service, name: str, data: bytes, topk: int, tta: bool = False) -> dict[str, Any]:
    array = await service.decoders.run(service.prepare, name, data)
    try:
        if tta:  # the mirror as in `evaluation.tta_logits` (the last axis is the width)
            plain, mirrored = await asyncio.gather(service.batcher.submit(array),
                                                   service.batcher.submit(np.ascontiguousarray(array[..., ::-1])))
            probs = (plain + mirrored) / 2
        else:
            probs = await service.batcher.submit(array)
    except QueueFull:
        raise ApiError(503, "the server is at capacity; retry shortly", {"Retry-After": "1"}) from None
    except ModelError as error:
        raise ApiError(500, f"the model failed on this batch ({error}); the server is still running") from None
    return service.classifier.answer(name, probs, topk, service.settings.reject)


async def one_image(service: Service, request: Request, route: str) -> tuple[str, bytes]:
    uploads = await read_uploads(request, service.settings)
    if len(uploads) != 1:
        hint = "; use /v1/classify/batch" if route == "/v1/classify" else ""
        raise ApiError(422, f"{route} takes one image, got {len(uploads)}{hint}")
    [probed] = await probe_uploads(service, uploads)
    if isinstance(probed, ApiError):
        raise probed
    return uploads[0]


def since(start: float) -> float:
    return round((time.perf_counter() - start) * 1e3, 3)


def add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(request: Request, error: ApiError):
        return JSONResponse({"error": error.message, "status": error.status}, status_code=error.status,
                            headers=error.headers)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, error: Exception):
        return JSONResponse({"error": f"internal error: {type(error).__name__}", "status": 500}, status_code=500)


def add_classify_routes(app: FastAPI, service: Service) -> None:
    classifier = service.classifier

    @app.post("/v1/classify")
    async def classify(request: Request):
        start = time.perf_counter()
        topk, tta = parse_topk(request, service.settings), parse_tta(request)
        answer = await classify_one(service, *await one_image(service, request, "/v1/classify"), topk, tta)
        return {**answer, "model": classifier.name, "latency_ms": since(start)}

    @app.post("/v1/classify/batch")
    async def classify_batch(request: Request):
        start = time.perf_counter()
        topk, tta = parse_topk(request, service.settings), parse_tta(request)
        uploads = await read_uploads(request, service.settings)
        probed = await probe_uploads(service, uploads)

        async def one(name: str, data: bytes, probe: int | ApiError) -> dict[str, Any]:
            try:
                if isinstance(probe, ApiError):
                    raise probe
                return {"name": name, **await classify_one(service, name, data, topk, tta)}
            except ApiError as error:
                return {"name": name, "error": error.message, "status": error.status}

        results = await asyncio.gather(*(one(name, data, probe) for (name, data), probe in zip(uploads, probed)))
        return {"results": list(results), "model": classifier.name, "latency_ms": since(start)}

    @app.post("/v1/explain")
    async def explain(request: Request):
        """The Grad-CAM heat map of the top class over the image: JSON with a base64 PNG, or ?format=png."""
        start = time.perf_counter()
        if classifier.explainer is None:
            raise ApiError(501, f"{classifier.name} cannot be explained here: /v1/explain needs the gradients of a "
                                "PyTorch model of a visionzoo family, and grad-cam (pip install 'visionzoo[audit]')")
        name, data = await one_image(service, request, "/v1/explain")
        image = await service.decoders.run(decode_upload, name, data, service.limits)
        result = await asyncio.get_running_loop().run_in_executor(None, classifier.explainer, image)
        if request.query_params.get("format") == "png":
            return Response(result["png"], media_type="image/png")
        return {"index": result["index"], "label": result["label"], "prob": result["prob"], "method": "gradcam",
                "heatmap": "data:image/png;base64," + base64.b64encode(result["png"]).decode(),
                "model": classifier.name, "latency_ms": since(start)}


PAGE_TOP_K = 5  # the bars the page shows, at most


def page_html(card: dict[str, Any]) -> str:
    """The web page for a model of `card`: its bars titled and asked for as the top min(5, classes)."""
    classes = card.get("num_classes")
    top_k = min(PAGE_TOP_K, int(classes)) if classes else PAGE_TOP_K
    return resources.files("visionzoo.serve").joinpath("page.html").read_text().replace("{{TOP_K}}", str(top_k))


def add_info_routes(app: FastAPI, service: Service) -> None:
    page = page_html(service.classifier.card)

    @app.get("/v1/model")
    async def model_card():
        return public_card(service.classifier.card)

    @app.get("/healthz")
    async def healthz():
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz():
        if not service.batcher.ready:
            raise ApiError(503, "the model worker is not running", {"Retry-After": "1"})
        return {"status": "ready", "model": service.classifier.name}

    @app.get("/", response_class=HTMLResponse)
    async def index():
        return HTMLResponse(page)


def create_app(classifier: Classifier, settings: ServeSettings = ServeSettings()) -> FastAPI:
    """The FastAPI application serving `classifier` within the limits of `settings`."""
    service = Service(classifier, settings, settings.pixel_limits(classifier.input_size),
                      DynamicBatcher(classifier, settings), DecodePool(settings.max_decodes))

    @asynccontextmanager
    async def lifespan(app):
        service.decoders.start()
        service.batcher.start()
        yield
        await service.batcher.stop()
        service.decoders.stop()

    app = FastAPI(title="visionzoo", lifespan=lifespan, redoc_url=None,
                  docs_url="/docs" if settings.docs else None, openapi_url="/openapi.json" if settings.docs else None)
    app.state.batcher = service.batcher
    app.state.settings = settings
    app.state.limits = service.limits
    add_error_handlers(app)
    add_classify_routes(app, service)
    add_info_routes(app, service)
    return app
