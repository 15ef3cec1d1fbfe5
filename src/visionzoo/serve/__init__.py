"""`visionzoo serve`: an HTTP API with dynamic batching, and a web page to try a model.

Requests are decoded and preprocessed in worker threads, then queued; one batching task
takes up to `max_batch` queued images, waiting at most `max_wait_ms` for more after the
first, and runs the model once for all of them in a thread, so throughput grows with load.

Every failure a client can cause is a JSON error with the right status, and the server keeps
serving: 413 body over the limit (counted while reading, so a huge upload never fills memory;
the excess is read and discarded up to `max_discard_mb`, so clients that send the whole body
before reading the reply, as urllib and requests do, get the 413 and not a connection reset),
415 not an image (by content, not declared type), 422 truncated image or decompression bomb,
503 with Retry-After when the queue is full, 408 for a client that sends too slowly, 500 for
an exception inside the model (the next request runs normally).

A model trained by visionzoo answers by its head facts (`visionzoo.heads`): calibrated
probabilities, `"unknown": true` below its OOD threshold (`ServeSettings.reject`), and for a
multi-label model `"labels"`, the classes over their thresholds.
"""

from __future__ import annotations

import asyncio
import io
import time
from dataclasses import dataclass
from importlib import resources
from typing import Any, Callable

import numpy as np

from visionzoo.errors import SettingError, require_extra

for _module in ("fastapi", "uvicorn", "python_multipart"):  # one line naming the pip install when one is missing
    require_extra(_module, "serve", "visionzoo serve")
from fastapi import FastAPI, Request  # noqa: E402 (module level: FastAPI resolves endpoint annotations by name here)
from fastapi.responses import HTMLResponse, JSONResponse  # noqa: E402

__all__ = ["ServeSettings", "Classifier", "DynamicBatcher", "create_app", "load_classifier"]


@dataclass(frozen=True)
class ServeSettings:
    max_batch: int = 32
    max_wait_ms: float = 5.0
    max_upload_mb: float = 10.0
    queue: int = 256
    read_timeout_s: float = 30.0  # a client must finish sending its body within this time
    # A body over max_upload_mb is still read, and thrown away, up to this many MB before the 413:
    # clients that send the whole body before reading the reply (Python's urllib, requests) would
    # otherwise get a connection reset instead. Beyond it the connection is closed unread.
    max_discard_mb: float = 256.0
    max_topk: int = 100
    reject: bool = True  # answer "unknown" below the model's OOD threshold, when it has one

    def __post_init__(self):
        if (self.max_batch < 1 or self.queue < 1 or self.max_wait_ms < 0 or self.max_upload_mb <= 0
                or self.max_discard_mb < 0):
            raise SettingError(f"invalid serve settings: {self}")


class Classifier:
    """A model with its preprocessing: `prepare(image) -> array`, `__call__(batch) -> probabilities`.

    Built by `load_classifier` from a registered name, a saved model or an ONNX file; the two
    halves are split so decoding runs per request while the model runs per batch. With
    `returns_logits`, `run` gives raw logits and `head` (see `visionzoo.heads`) says what they mean.
    """

    def __init__(self, name: str, prepare: Callable[[Any], np.ndarray], run: Callable[[np.ndarray], np.ndarray],
                 class_names: list[str] | None, card: dict[str, Any], *, head: dict[str, Any] | None = None,
                 returns_logits: bool = False):
        self.name = name
        self.prepare = prepare
        self.run = run
        self.class_names = class_names
        self.card = card
        self.explainer: Callable[[Any], dict[str, Any]] | None = None  # image -> heat map (PyTorch models only)
        self.head = head
        self.returns_logits = returns_logits

    def answer(self, name: str, output: np.ndarray, topk: int, reject: bool = True) -> dict[str, Any]:
        """`{"predictions": [...]}` for one image's model output, plus `"labels"` / `"unknown"` by the head."""
        if self.returns_logits:
            from visionzoo.heads import result_record

            record = result_record(name, output, self.class_names, topk, self.head, reject=reject)
            record.pop("path")
            return record
        order = np.argsort(-output)[:topk]
        return {"predictions": [{"index": int(i), "label": self.label(int(i)), "prob": float(output[i])} for i in order]}

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        return self.run(batch)

    def label(self, index: int) -> str:
        if self.class_names and index < len(self.class_names):
            return self.class_names[index]
        return str(index)


def load_classifier(spec, pretrained: bool | str | None = None, threads: int | None = None,
                    runtime: str | None = None) -> Classifier:
    """A Classifier from a registered model name (with `pretrained` weights, default: the default weights),
    a saved model folder, an nn.Module, or an exported .onnx or OpenVINO .xml file (see `visionzoo.resolve`;
    an exported file runs without PyTorch, by `runtime`: onnxruntime, openvino or openvino-bf16, by default
    the file's own: onnxruntime for .onnx, OpenVINO for .xml)."""
    from visionzoo.deploy.runtimes import EXPORTED_SUFFIXES, ExportedClassifier, OnnxClassifier, preprocess_image
    from visionzoo.resolve import resolve_model

    if threads and not (isinstance(spec, str) and spec.endswith(EXPORTED_SUFFIXES)):
        import torch

        torch.set_num_threads(threads)
    model = resolve_model(spec, pretrained, allow_onnx=True, onnx_threads=threads, runtime=runtime)
    if isinstance(model, ExportedClassifier):
        exported = model
        card = {"architecture": exported.name, "weights": str(spec),
                "format": "onnx" if str(spec).endswith(".onnx") else "openvino",
                "runtime": "onnxruntime" if isinstance(exported, OnnxClassifier) else f"openvino-{exported.precision}",
                "preprocessing": exported.preprocessing, "num_classes": len(exported.class_names or []),
                "classes": exported.class_names, "head": exported.head}
        return Classifier(exported.name, lambda image: preprocess_image(image, exported.preprocessing),
                          exported.predict_logits, exported.class_names, card, head=exported.head,
                          returns_logits=True)

    import torch

    from visionzoo.factory import class_names as model_class_names
    from visionzoo.factory import data_config, find_spec, model_name, transforms
    from visionzoo.metrics.calibration import head_of

    transform = transforms(model, train=False)
    names = model_class_names(model)
    config = {k: (list(v) if isinstance(v, tuple) else v) for k, v in data_config(model).items()}
    made = find_spec(model)
    card = {"architecture": model_name(model),
            "weights": made.weights if made else None,
            "format": "pytorch", "preprocessing": config, "num_classes": getattr(model, "num_classes", None),
            "classes": list(names) if names else None, "head": head_of(model)}

    def prepare(image) -> np.ndarray:
        return transform(image).numpy()

    def run(batch: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            logits = model(torch.from_numpy(batch))
        return logits.float().numpy()

    classifier = Classifier(card["architecture"], prepare, run, card["classes"], card, head=card["head"],
                            returns_logits=True)
    from visionzoo.diagnose.explanation import serving_explainer

    classifier.explainer = serving_explainer(model, transform, config, names)  # for POST /v1/explain
    return classifier


class QueueFull(Exception):
    pass


class DynamicBatcher:
    """Gathers concurrent requests into batches for one model; counts its model calls."""

    def __init__(self, classifier: Classifier, settings: ServeSettings):
        self.classifier = classifier
        self.settings = settings
        self.queue: asyncio.Queue | None = None
        self.task: asyncio.Task | None = None
        self.model_calls = 0
        self.batch_sizes: list[int] = []

    def start(self) -> None:
        self.queue = asyncio.Queue(maxsize=self.settings.queue)
        self.task = asyncio.get_running_loop().create_task(self._worker())

    async def stop(self) -> None:
        if self.task:
            self.task.cancel()
            try:
                await self.task
            except asyncio.CancelledError:
                pass
        self.task = None

    @property
    def ready(self) -> bool:
        return self.task is not None and not self.task.done()

    async def submit(self, array: np.ndarray) -> np.ndarray:
        if self.queue is None:
            raise RuntimeError("the batcher is not running")
        future = asyncio.get_running_loop().create_future()
        try:
            self.queue.put_nowait((array, future))
        except asyncio.QueueFull:
            raise QueueFull() from None
        return await future

    async def _worker(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            items = [await self.queue.get()]
            deadline = loop.time() + self.settings.max_wait_ms / 1e3
            while len(items) < self.settings.max_batch:
                remaining = deadline - loop.time()
                try:
                    items.append(self.queue.get_nowait() if remaining <= 0 else
                                 await asyncio.wait_for(self.queue.get(), remaining))
                except (TimeoutError, asyncio.QueueEmpty):
                    break
            live = [(array, future) for array, future in items if not future.cancelled()]
            if not live:
                continue
            try:
                batch = np.stack([array for array, _ in live])
                self.model_calls += 1
                self.batch_sizes.append(len(live))
                probs = await loop.run_in_executor(None, self.classifier, batch)
            except Exception as error:  # the model failed: these requests get 500, the server goes on
                for _, future in live:
                    if not future.done():
                        future.set_exception(ModelError(f"{type(error).__name__}: {error}"))
                continue
            for (_, future), row in zip(live, probs):
                if not future.done():
                    future.set_result(row)


class ModelError(Exception):
    pass


def _page() -> str:
    return resources.files("visionzoo.serve").joinpath("page.html").read_text()


def create_app(classifier: Classifier, settings: ServeSettings = ServeSettings()):
    """The FastAPI application serving `classifier`."""
    from contextlib import asynccontextmanager

    from PIL import Image, UnidentifiedImageError

    from visionzoo.data.decode import ImageDecodeError, decode_image

    batcher = DynamicBatcher(classifier, settings)
    limit = int(settings.max_upload_mb * 2**20)
    discard_limit = max(limit, int(settings.max_discard_mb * 2**20))

    @asynccontextmanager
    async def lifespan(app):
        batcher.start()
        yield
        await batcher.stop()

    app = FastAPI(title="visionzoo", lifespan=lifespan, docs_url="/docs", redoc_url=None)
    app.state.batcher = batcher

    class ApiError(Exception):
        def __init__(self, status: int, message: str, headers: dict[str, str] | None = None):
            self.status, self.message, self.headers = status, message, headers

    @app.exception_handler(ApiError)
    async def api_error(request: Request, error: ApiError):
        return JSONResponse({"error": error.message, "status": error.status}, status_code=error.status,
                            headers=error.headers)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, error: Exception):
        return JSONResponse({"error": f"internal error: {type(error).__name__}", "status": 500}, status_code=500)

    async def read_body(request: Request) -> bytes:
        declared = request.headers.get("content-length")
        declared = int(declared) if declared and declared.isdigit() else None
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

    async def images_from(request: Request) -> list[tuple[str, bytes]]:
        body = await read_body(request)
        content_type = request.headers.get("content-type", "")
        if content_type.startswith("multipart/form-data"):
            request._body = body  # Starlette parses the form from the body we already read, within the limit
            form = await request.form()
            files = [(getattr(v, "filename", None) or key, await v.read()) for key, v in form.multi_items()
                     if hasattr(v, "read")]
            if not files:
                raise ApiError(422, "the multipart form holds no file; send the image as a file field")
            return files
        if not body:
            raise ApiError(422, "empty request body; send an image as the body or as a multipart file")
        return [("body", body)]

    def prepare(name: str, data: bytes) -> np.ndarray:
        try:
            with Image.open(io.BytesIO(data)) as probe:
                probe.format  # identified by its content, whatever the client declared
        except (UnidentifiedImageError, OSError):
            raise ApiError(415, f"{name} is not an image (JPEG, PNG, WebP, GIF, BMP or TIFF content expected)")
        except Image.DecompressionBombError as error:
            raise ApiError(422, f"{name} refused: {error}")
        try:
            image = decode_image(data, path=name)
        except ImageDecodeError as error:
            raise ApiError(422, f"{name} cannot be decoded: {error.reason}")
        return classifier.prepare(image)

    def parse_topk(request: Request) -> int:
        raw = request.query_params.get("topk", "5")
        if not raw.isdigit() or not 1 <= int(raw) <= settings.max_topk:
            raise ApiError(422, f"topk must be an integer from 1 to {settings.max_topk}, got {raw!r}")
        return int(raw)

    async def classify_one(name: str, data: bytes, topk: int) -> dict[str, Any]:
        array = await asyncio.get_running_loop().run_in_executor(None, prepare, name, data)
        try:
            probs = await batcher.submit(array)
        except QueueFull:
            raise ApiError(503, "the server is at capacity; retry shortly", {"Retry-After": "1"}) from None
        except ModelError as error:
            raise ApiError(500, f"the model failed on this batch ({error}); the server is still running") from None
        return classifier.answer(name, probs, topk, settings.reject)

    @app.post("/v1/classify")
    async def classify(request: Request):
        start = time.perf_counter()
        topk = parse_topk(request)
        images = await images_from(request)
        if len(images) != 1:
            raise ApiError(422, f"/v1/classify takes one image, got {len(images)}; use /v1/classify/batch")
        answer = await classify_one(*images[0], topk)
        return {**answer, "model": classifier.name,
                "latency_ms": round((time.perf_counter() - start) * 1e3, 3)}

    @app.post("/v1/classify/batch")
    async def classify_batch(request: Request):
        start = time.perf_counter()
        topk = parse_topk(request)
        images = await images_from(request)

        async def one(name: str, data: bytes) -> dict[str, Any]:
            try:
                return {"name": name, **await classify_one(name, data, topk)}
            except ApiError as error:
                return {"name": name, "error": error.message, "status": error.status}

        results = await asyncio.gather(*(one(name, data) for name, data in images))
        return {"results": list(results), "model": classifier.name,
                "latency_ms": round((time.perf_counter() - start) * 1e3, 3)}

    @app.post("/v1/explain")
    async def explain(request: Request):
        """The Grad-CAM heat map of the top class over the image: JSON with a base64 PNG, or ?format=png."""
        start = time.perf_counter()
        if classifier.explainer is None:
            raise ApiError(501, f"{classifier.name} cannot be explained here: /v1/explain needs the gradients of a "
                                "PyTorch model of a visionzoo family, and grad-cam (pip install 'visionzoo[audit]')")
        images = await images_from(request)
        if len(images) != 1:
            raise ApiError(422, f"/v1/explain takes one image, got {len(images)}")
        name, data = images[0]
        prepare(name, data)  # the same checks and errors as /v1/classify
        image = decode_image(data, path=name)
        result = await asyncio.get_running_loop().run_in_executor(None, classifier.explainer, image)
        if request.query_params.get("format") == "png":
            from fastapi.responses import Response

            return Response(result["png"], media_type="image/png")
        import base64

        return {"index": result["index"], "label": result["label"], "prob": result["prob"], "method": "gradcam",
                "heatmap": "data:image/png;base64," + base64.b64encode(result["png"]).decode(),
                "model": classifier.name, "latency_ms": round((time.perf_counter() - start) * 1e3, 3)}

    @app.get("/v1/model")
    async def model_card():
        return classifier.card

    @app.get("/healthz")
    async def healthz():
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz():
        if not batcher.ready:
            raise ApiError(503, "the model worker is not running", {"Retry-After": "1"})
        return {"status": "ready", "model": classifier.name}

    @app.get("/", response_class=HTMLResponse)
    async def page():
        return HTMLResponse(_page())

    return app
