"""The HTTP API through the ASGI app (httpx), every error status, batching and recovery."""

from __future__ import annotations

import asyncio
import io
import re
import struct
import zlib

import httpx
import numpy as np
import pytest
from PIL import Image

from visionzoo.serve import Classifier, ServeSettings, create_app, load_classifier, server_config


def png_bytes(size=48, colour=(200, 40, 40)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (size, size), colour).save(buffer, format="PNG")
    return buffer.getvalue()


def bomb_png(width=60000, height=60000) -> bytes:
    """A valid PNG header claiming 3.6 gigapixels, with almost no data behind it."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\x00" * 16)) + chunk(b"IEND", b"")


@pytest.fixture(scope="module")
def real_classifier() -> Classifier:
    import visionzoo

    return load_classifier(visionzoo.create_model("resnet18"))  # random weights: the mechanics, offline


def tiny_classifier(run=None, num_classes=4) -> Classifier:
    """A stand-in model (fast, controllable) with the real preprocessing path's shape."""
    names = [f"class{i}" for i in range(num_classes)]

    def prepare(image):
        return np.asarray(image.resize((8, 8)), dtype=np.float32).transpose(2, 0, 1) / 255

    def default_run(batch):
        scores = np.stack([batch[:, c % 3].mean((1, 2)) * (c + 1) for c in range(num_classes)], 1)
        exp = np.exp(scores - scores.max(1, keepdims=True))
        return exp / exp.sum(1, keepdims=True)

    card = {"architecture": "tiny", "weights": None, "format": "test", "preprocessing": {"input_size": [3, 8, 8]},
            "num_classes": num_classes, "classes": names}
    return Classifier("tiny", prepare, run or default_run, names, card)


class Server:
    """An app with its lifespan running, and an httpx client talking to it in-process."""

    def __init__(self, classifier: Classifier, settings: ServeSettings = ServeSettings()):
        self.app = create_app(classifier, settings)

    async def __aenter__(self):
        self._lifespan = self.app.router.lifespan_context(self.app)
        await self._lifespan.__aenter__()
        self.client = httpx.AsyncClient(transport=httpx.ASGITransport(app=self.app), base_url="http://test")
        return self.client

    async def __aexit__(self, *exc):
        await self.client.aclose()
        await self._lifespan.__aexit__(*exc)


def run(coro):
    return asyncio.run(coro)


def test_endpoints_with_a_real_model(real_classifier):
    async def scenario():
        async with Server(real_classifier) as client:
            assert (await client.get("/healthz")).json() == {"status": "ok"}
            assert (await client.get("/readyz")).status_code == 200
            card = (await client.get("/v1/model")).json()
            assert card["architecture"] == "resnet18" and card["preprocessing"]["input_size"] == [3, 224, 224]
            assert card["num_classes"] == 1000  # random weights carry no label set
            response = await client.post("/v1/classify?topk=3", content=png_bytes(), headers={"content-type": "image/png"})
            assert response.status_code == 200, response.text
            body = response.json()
            assert body["model"] == "resnet18" and body["latency_ms"] > 0
            assert [set(p) for p in body["predictions"]] == [{"index", "label", "prob"}] * 3
            probs = [p["prob"] for p in body["predictions"]]
            assert probs == sorted(probs, reverse=True)
            multipart = await client.post("/v1/classify", files={"file": ("x.png", png_bytes(), "image/png")})
            assert multipart.status_code == 200 and len(multipart.json()["predictions"]) == 5
            page = await client.get("/")
            assert page.status_code == 200 and "<html" in page.text
            assert not re.search(r"(src|href)=\"https?://", page.text), "the page must not load external assets"
    run(scenario())


def test_batch_endpoint_reports_each_image():
    async def scenario():
        async with Server(tiny_classifier()) as client:
            files = [("files", ("a.png", png_bytes(), "image/png")), ("files", ("b.txt", b"hello", "image/png")),
                     ("files", ("c.png", png_bytes(colour=(0, 0, 255)), "image/png"))]
            response = await client.post("/v1/classify/batch?topk=2", files=files)
            results = response.json()["results"]
            assert response.status_code == 200 and [r["name"] for r in results] == ["a.png", "b.txt", "c.png"]
            assert len(results[0]["predictions"]) == 2 and results[1]["status"] == 415
    run(scenario())


def test_error_statuses_are_json_and_the_server_keeps_serving():
    settings = ServeSettings(max_upload_mb=0.05)

    async def scenario():
        async with Server(tiny_classifier(), settings) as client:
            big = await client.post("/v1/classify", content=b"\xff" * 100_000)
            assert big.status_code == 413 and "limit" in big.json()["error"]

            async def stream():  # no Content-Length: the limit is enforced while reading
                for _ in range(100):
                    yield b"\x00" * 4096
            streamed = await client.post("/v1/classify", content=stream())
            assert streamed.status_code == 413

            text = await client.post("/v1/classify", content=b"just some text", headers={"content-type": "image/jpeg"})
            assert text.status_code == 415 and "not an image" in text.json()["error"]

            truncated = await client.post("/v1/classify", content=png_bytes(64)[:60])
            assert truncated.status_code in (415, 422)
            jpeg = io.BytesIO()
            noise = np.random.default_rng(0).integers(0, 255, (128, 128, 3), dtype=np.uint8)
            Image.fromarray(noise).save(jpeg, format="JPEG")  # noisy: the cut lands in the scan data
            cut = await client.post("/v1/classify", content=jpeg.getvalue()[: len(jpeg.getvalue()) // 2])
            assert cut.status_code == 422, cut.text

            bomb = await client.post("/v1/classify", content=bomb_png())
            assert bomb.status_code == 422 and "pixels" in bomb.json()["error"]

            empty = await client.post("/v1/classify", content=b"")
            assert empty.status_code == 422
            bad_topk = await client.post("/v1/classify?topk=zero", content=png_bytes())
            assert bad_topk.status_code == 422

            ok = await client.post("/v1/classify", content=png_bytes())
            assert ok.status_code == 200
    run(scenario())


def test_slow_client_gets_408():
    async def scenario():
        async with Server(tiny_classifier(), ServeSettings(read_timeout_s=0.2)) as client:
            async def trickle():
                yield png_bytes()[:10]
                await asyncio.sleep(1.0)
                yield b"rest"
            response = await client.post("/v1/classify", content=trickle())
            assert response.status_code == 408 and "did not arrive" in response.json()["error"]
    run(scenario())


def test_concurrent_requests_are_batched():
    calls = []

    def slow_run(batch):
        calls.append(len(batch))
        import time
        time.sleep(0.05)
        return tiny_classifier().run(batch)

    async def scenario():
        async with Server(tiny_classifier(slow_run), ServeSettings(max_batch=8, max_wait_ms=20)) as client:
            responses = await asyncio.gather(*(client.post("/v1/classify", content=png_bytes()) for _ in range(24)))
            assert all(r.status_code == 200 for r in responses)
    run(scenario())
    assert sum(calls) == 24
    assert len(calls) < 24 and max(calls) > 1, f"batch sizes {calls}"
    assert max(calls) <= 8


def test_full_queue_gives_503_with_retry_after():
    import threading

    release = threading.Event()

    def blocking_run(batch):
        release.wait(5)
        return tiny_classifier().run(batch)

    async def scenario():
        async with Server(tiny_classifier(blocking_run), ServeSettings(max_batch=1, queue=1, max_wait_ms=0)) as client:
            tasks = [asyncio.create_task(client.post("/v1/classify", content=png_bytes())) for _ in range(6)]
            await asyncio.sleep(0.5)
            release.set()
            responses = await asyncio.gather(*tasks)
            statuses = sorted(r.status_code for r in responses)
            assert 503 in statuses and 200 in statuses, statuses
            rejected = next(r for r in responses if r.status_code == 503)
            assert rejected.headers["retry-after"] == "1" and "capacity" in rejected.json()["error"]
    run(scenario())


def test_model_exception_then_next_request_succeeds():
    failures = [True]

    def flaky_run(batch):
        if failures and failures.pop():
            raise RuntimeError("out of memory in the model")
        return tiny_classifier().run(batch)

    async def scenario():
        async with Server(tiny_classifier(flaky_run)) as client:
            first = await client.post("/v1/classify", content=png_bytes())
            assert first.status_code == 500 and "out of memory" in first.json()["error"]
            assert "Traceback" not in first.text
            second = await client.post("/v1/classify", content=png_bytes())
            assert second.status_code == 200
    run(scenario())


def test_onnx_model_serves_too(tmp_path):
    pytest.importorskip("onnxruntime")
    import torch

    import visionzoo
    from visionzoo.deploy.export import export_model

    model = visionzoo.create_model("resnet18", num_classes=3).eval()
    visionzoo.with_spec(model, class_names=["a", "b", "c"])
    export_model(model, tmp_path / "m.onnx", img_size=64, verify=False)
    classifier = load_classifier(str(tmp_path / "m.onnx"))
    assert classifier.name == "resnet18"

    async def scenario():
        async with Server(classifier) as client:
            card = (await client.get("/v1/model")).json()
            assert card["format"] == "onnx" and card["classes"] == ["a", "b", "c"]
            response = await client.post("/v1/classify?topk=3", content=png_bytes())
            assert {p["label"] for p in response.json()["predictions"]} == {"a", "b", "c"}
    run(scenario())
    del torch


class RealServer:
    """The app under a real uvicorn server on 127.0.0.1 (a free port), in a thread."""

    def __init__(self, classifier: Classifier, settings: ServeSettings):
        import socket
        import threading

        import uvicorn

        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        config = server_config(create_app(classifier, settings), settings, "127.0.0.1", self.port,
                               log_level="warning", lifespan="on")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> str:
        import time

        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.02)
        return f"http://127.0.0.1:{self.port}"

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(timeout=10)


@pytest.mark.parametrize("chunked", [False, True])
def test_oversized_body_gets_413_from_python_clients(chunked):
    """urllib sends the whole body before it reads the reply; it must get the 413, not a reset."""
    import json
    import urllib.error
    import urllib.request

    settings = ServeSettings(max_upload_mb=0.25)
    body = b"\x00" * (24 * 2**20)  # 96x the limit, well past what the sockets buffer
    with RealServer(tiny_classifier(), settings) as url:
        data = iter([body[i:i + 65536] for i in range(0, len(body), 65536)]) if chunked else body
        headers = {"Content-Type": "application/octet-stream"}
        if chunked:
            headers["Transfer-Encoding"] = "chunked"
        request = urllib.request.Request(f"{url}/v1/classify", data=data, headers=headers, method="POST")
        with pytest.raises(urllib.error.HTTPError) as caught:
            urllib.request.urlopen(request, timeout=30)
        assert caught.value.code == 413
        assert "limit" in json.loads(caught.value.read())["error"]
        with urllib.request.urlopen(f"{url}/healthz", timeout=10) as ok:  # and the server goes on
            assert ok.status == 200


def test_model_card_reports_the_weights_name(tmp_path, monkeypatch):
    """The card's weights come from the model's spec: a catalogued weight by its name (they were
    once read with getattr from a dict, so the name was always missing)."""
    import torch
    from safetensors.torch import save_file

    import visionzoo
    from visionzoo.weights.files import weights_home

    monkeypatch.setenv("VISIONZOO_CACHE", str(tmp_path / "vz-cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    folder = weights_home() / "timm" / "resnet18.tv_in1k"  # where a hand-placed catalogued weight is found offline
    folder.mkdir(parents=True)
    torch.manual_seed(0)
    save_file(visionzoo.create_model("resnet18").state_dict(), str(folder / "model.safetensors"))

    async def card_of(classifier):
        async with Server(classifier) as client:
            return (await client.get("/v1/model")).json()

    card = run(card_of(load_classifier("resnet18", pretrained="resnet18.tv_in1k")))
    assert card["weights"] == "resnet18.tv_in1k" and card["preprocessing"]["interpolation"] == "bilinear"
    assert card["classes"][281] == "tabby"  # the weight's label set names the outputs
    saved = visionzoo.save_model(visionzoo.create_model("resnet18", pretrained="resnet18.tv_in1k"), tmp_path / "saved")
    saved_card = run(card_of(load_classifier(str(saved))))  # a saved folder serves its own weights
    assert saved_card["weights"] == "saved" and saved_card["base_weights"] == "resnet18.tv_in1k"
    assert run(card_of(load_classifier(visionzoo.create_model("resnet18"))))["weights"] is None  # random init


def test_a_fine_tuned_run_is_named_by_its_folder_not_by_its_base_weights(tmp_path):
    """Issue 30: the page named the base weights file as the weights of the fine-tuned run it served."""
    import visionzoo
    from visionzoo.serve.classifier import served_folder

    model = visionzoo.create_model("resnet18", num_classes=2)
    visionzoo.with_spec(model, class_names=["ants", "bees"], weights="/weights/resnet18_base.safetensors")
    visionzoo.save_model(model, tmp_path / "ants-run" / "best")
    for spec in (tmp_path / "ants-run", tmp_path / "ants-run" / "best"):  # a run folder serves its best/
        card = load_classifier(str(spec)).card
        assert card["weights"] == "ants-run/best" and card["base_weights"].endswith("resnet18_base.safetensors")
    assert served_folder("resnet18") is None and served_folder(model) is None

    async def page_and_card():
        async with Server(load_classifier(str(tmp_path / "ants-run"))) as client:
            return (await client.get("/")).text, (await client.get("/v1/model")).json()

    page, card = run(page_and_card())
    assert card["weights"] == "ants-run/best" and card["base_weights"] == "resnet18_base.safetensors"
    assert '"trained from"' in page  # the page's card shows the base weights under their own name


@pytest.mark.parametrize(("classes", "shown"), [(2, 2), (4, 4), (5, 5), (10, 5), (None, 5)])
def test_the_page_titles_its_bars_with_the_top_k_it_asks_for(classes, shown):
    """Issue 30: 'Top 5' over the bars of a 2-class model; the page asks for and titles min(5, classes)."""
    classifier = tiny_classifier(num_classes=classes or 3)
    classifier.card["num_classes"] = classes

    async def page():
        async with Server(classifier) as client:
            return (await client.get("/")).text

    html = run(page())
    assert f'<h2 id="top-title">Top {shown}</h2>' in html and f"const TOP_K = {shown};" in html
    assert "{{" not in html and "topk=5" not in html
