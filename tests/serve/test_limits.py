"""The limits that keep one request from taking the server's memory (issue 28): pixels per image tied
to the model's input (large JPEGs decoded at a reduced scale), images and pixels per request, decodes at
once, a deadline for request headers, and 422 rather than 500 for hostile headers and parameters."""

from __future__ import annotations

import asyncio
import io
import socket
import struct
import threading
import time
import zlib

from PIL import Image
from test_serve import RealServer, Server, png_bytes, run, tiny_classifier

from visionzoo.serve import Classifier, ServeSettings, create_app


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def text_bomb_png() -> bytes:
    """An 8x8 PNG whose zTXt chunk inflates to 50 MB (Pillow refuses it with a ValueError while opening)."""
    header = struct.pack(">IIBBBBB", 8, 8, 8, 2, 0, 0, 0)
    text = png_chunk(b"zTXt", b"Comment\x00\x00" + zlib.compress(b"a" * (50 * 2**20), 9))
    pixels = zlib.compress(b"".join(b"\x00" + b"\x00" * 24 for _ in range(8)))
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header) + text + png_chunk(b"IDAT", pixels) + png_chunk(b"IEND", b"")


def image_bytes(size: tuple[int, int], format: str) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, (120, 60, 200)).save(buffer, format=format)
    return buffer.getvalue()


def sized_classifier(input_size=(224, 224), seen: list | None = None) -> Classifier:
    """The tiny stand-in with a card giving the model's input size; records the size of each decoded image."""
    tiny = tiny_classifier()
    card = {**tiny.card, "preprocessing": {"input_size": [3, *input_size]}}

    def prepare(image):
        if seen is not None:
            seen.append(image.size)
        return tiny.prepare(image)

    return Classifier("tiny", prepare, tiny.run, tiny.class_names, card)


def test_pixel_cap_per_image_is_tied_to_the_model_input_and_large_jpegs_decode_at_reduced_scale():
    seen: list[tuple[int, int]] = []
    classifier = sized_classifier((224, 224), seen)
    assert create_app(classifier).state.limits.image == 100 * 224 * 224  # 5,017,600: 2240x2240
    assert create_app(sized_classifier((384, 384))).state.limits.image == 100 * 384 * 384
    assert create_app(sized_classifier((8, 8))).state.limits.image == 4_000_000  # the floor

    async def scenario():
        async with Server(classifier) as client:
            png = await client.post("/v1/classify", content=image_bytes((2300, 2300), "PNG"))
            assert png.status_code == 422 and "limit of 5017600 pixels per image" in png.json()["error"]
            assert "224x224" in png.json()["error"]  # the reason names the rule
            jpeg = await client.post("/v1/classify", content=image_bytes((4000, 3000), "JPEG"))
            assert jpeg.status_code == 200, jpeg.text
            assert seen == [(2000, 1500)]  # libjpeg scaled by 1/2 while decoding: 12 Mpx were never held
            phone = io.BytesIO()  # an MPO (a JPEG with extra frames, as some phones write) scales the same way
            Image.new("RGB", (4000, 3000)).save(phone, format="MPO", save_all=True, append_images=[Image.new("RGB", (8, 8))])
            assert (await client.post("/v1/classify", content=phone.getvalue())).status_code == 200
            assert seen[-1] == (2000, 1500)
            strip = await client.post("/v1/classify", content=image_bytes((65535, 1), "PNG"))  # 17 GB once resized
            assert strip.status_code == 422 and "longer than 20:1" in strip.json()["error"]
            assert (await client.post("/v1/classify", content=image_bytes((2000, 100), "PNG"))).status_code == 200
            small = await client.post("/v1/classify", content=image_bytes((640, 480), "JPEG"))
            assert small.status_code == 200 and seen[-1] == (640, 480)  # under the cap: decoded in full
        async with Server(classifier, ServeSettings(max_image_pixels=10_000)) as client:
            tiny_cap = await client.post("/v1/classify", content=image_bytes((4000, 3000), "JPEG"))
            assert tiny_cap.status_code == 422 and "even at 1/8 scale (500x375)" in tiny_cap.json()["error"]
    run(scenario())


def test_images_and_pixels_per_request_are_capped():
    settings = ServeSettings(max_images=3, max_request_pixels=5_000)  # a 48x48 PNG is 2,304 pixels

    def files(count):
        return [("files", (f"{i}.png", png_bytes(), "image/png")) for i in range(count)]

    async def scenario():
        async with Server(tiny_classifier(), settings) as client:
            ok = await client.post("/v1/classify/batch", files=files(2))
            assert ok.status_code == 200 and all("predictions" in r for r in ok.json()["results"])
            many = await client.post("/v1/classify/batch", files=files(4))
            assert many.status_code == 413 and "more than 3 images" in many.json()["error"]
            pixels = await client.post("/v1/classify/batch", files=files(3))
            assert pixels.status_code == 413 and "6912 pixels" in pixels.json()["error"]
            assert "limit of 5000 per request" in pixels.json()["error"]
            assert (await client.post("/v1/classify", files=files(1))).status_code == 200
    run(scenario())


def test_concurrent_decodes_are_bounded():
    active, peak, lock = [0], [0], threading.Lock()
    tiny = tiny_classifier()

    def slow_prepare(image):
        with lock:
            active[0] += 1
            peak[0] = max(peak[0], active[0])
        time.sleep(0.15)
        with lock:
            active[0] -= 1
        return tiny.prepare(image)

    classifier = Classifier("tiny", slow_prepare, tiny.run, tiny.class_names, tiny.card)

    async def scenario():
        async with Server(classifier, ServeSettings(max_decodes=2)) as client:
            responses = await asyncio.gather(*(client.post("/v1/classify", content=png_bytes()) for _ in range(8)))
            assert all(r.status_code == 200 for r in responses)
    run(scenario())
    assert peak[0] == 2, f"{peak[0]} images were decoded at once with max_decodes=2"


def test_hostile_headers_and_parameters_get_422_not_500():
    async def scenario():
        async with Server(tiny_classifier()) as client:
            bomb = await client.post("/v1/classify", content=text_bomb_png())
            assert bomb.status_code == 422 and "header" in bomb.json()["error"], bomb.text
            batch = await client.post("/v1/classify/batch", files=[("f", ("t.png", text_bomb_png(), "image/png"))])
            assert batch.status_code == 200 and batch.json()["results"][0]["status"] == 422
            for topk in ("²", "٣", "1e3", "-1", ""):  # '²' and '٣' pass str.isdigit but not int()
                answer = await client.post("/v1/classify", params={"topk": topk}, content=png_bytes())
                assert answer.status_code == 422 and "topk" in answer.json()["error"], (topk, answer.text)
            broken_form = await client.post("/v1/classify", content=b"--x\r\nnonsense",
                                            headers={"content-type": "multipart/form-data; boundary=x"})
            assert broken_form.status_code in (413, 415, 422) and "error" in broken_form.json()
            assert (await client.post("/v1/classify", content=png_bytes())).status_code == 200
    run(scenario())


def test_model_card_shows_no_server_paths(tmp_path):
    import visionzoo
    from visionzoo.serve import load_classifier

    tiny = tiny_classifier()
    card = {**tiny.card, "weights": "/srv/private/models/m.onnx", "classes": ["T-shirt/top", "bag"],
            "notes": "trained from C:\\Users\\me\\data\\train"}
    hand_made = Classifier("tiny", tiny.prepare, tiny.run, ["T-shirt/top", "bag"], card)
    folder = tmp_path / "private-folder" / "saved"
    visionzoo.save_model(visionzoo.create_model("resnet18", num_classes=3), folder)
    saved = load_classifier(str(folder))  # a saved model without a weight name carries its folder

    async def card_of(classifier):
        async with Server(classifier) as client:
            response = await client.get("/v1/model")
            return response.text, response.json()

    text, shown = run(card_of(hand_made))
    assert "/srv/private" not in text and "Users" not in text
    assert shown["weights"] == "m.onnx" and shown["classes"] == ["T-shirt/top", "bag"]
    assert shown["notes"] == "trained from train"
    text, shown = run(card_of(saved))
    assert str(tmp_path) not in text and shown["weights"] == "saved"


def test_docs_are_off_by_default():
    async def scenario():
        async with Server(tiny_classifier()) as client:
            assert (await client.get("/docs")).status_code == 404
            assert (await client.get("/openapi.json")).status_code == 404
        async with Server(tiny_classifier(), ServeSettings(docs=True)) as client:
            assert (await client.get("/docs")).status_code == 200
            assert (await client.get("/openapi.json")).status_code == 200
    run(scenario())


def test_connections_sending_headers_slowly_are_closed():
    """Ten connections trickling a header byte every 0.1 s, and two sending nothing, against a real
    uvicorn with a 1 s header deadline: all are closed within a few seconds, and the server answers."""
    settings = ServeSettings(header_timeout_s=1.0)
    with RealServer(tiny_classifier(), settings) as url:
        port = int(url.rsplit(":", 1)[1])
        sockets = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(12)]
        for sock in sockets:
            sock.setblocking(False)
        for sock in sockets[:10]:
            sock.send(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        closed: set[int] = set()
        start = time.monotonic()
        while len(closed) < len(sockets) and time.monotonic() - start < 8:
            for index, sock in enumerate(sockets):
                if index in closed:
                    continue
                try:
                    if sock.recv(1024) == b"":
                        closed.add(index)
                        continue
                except BlockingIOError:
                    pass
                except OSError:
                    closed.add(index)
                    continue
                if index < 10:
                    try:
                        sock.send(b"X")  # one more byte of a header that never ends
                    except OSError:
                        closed.add(index)
            time.sleep(0.1)
        elapsed = time.monotonic() - start
        for sock in sockets:
            sock.close()
        assert len(closed) == len(sockets), f"{len(sockets) - len(closed)} slow connections still open after {elapsed:.1f} s"
        assert elapsed < 4
        import urllib.request

        with urllib.request.urlopen(f"{url}/healthz", timeout=5) as ok:
            assert ok.status == 200


def test_header_deadline_applies_to_each_request_on_a_kept_alive_connection():
    settings = ServeSettings(header_timeout_s=0.5, keep_alive_s=30)
    with RealServer(tiny_classifier(), settings) as url:
        port = int(url.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            assert b"200 OK" in sock.recv(4096)
            start = time.monotonic()
            sock.sendall(b"GET /healthz HTTP/1.1\r\n")
            data = b"x"
            while data and time.monotonic() - start < 5:
                try:
                    sock.sendall(b"X")
                    data = sock.recv(1024) if select_readable(sock, 0.1) else b"x"
                except OSError:
                    data = b""
            assert not data and time.monotonic() - start < 2
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:  # a body the app never reads
            sock.sendall(b"POST /no-such-route HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n")
            assert b"404" in sock.recv(4096)
            start, data = time.monotonic(), b"x"
            while data and time.monotonic() - start < 5:
                try:
                    sock.sendall(b"X")
                    data = sock.recv(1024) if select_readable(sock, 0.1) else b"x"
                except OSError:
                    data = b""
            assert not data and time.monotonic() - start < 2


def select_readable(sock: socket.socket, timeout: float) -> bool:
    import select

    return bool(select.select([sock], [], [], timeout)[0])



def test_serve_flags_set_the_limits(monkeypatch):
    import uvicorn

    import visionzoo.serve
    from visionzoo.cli import build_parser

    started = []
    monkeypatch.setattr(visionzoo.serve, "load_classifier", lambda *args, **kwargs: sized_classifier((224, 224)))
    monkeypatch.setattr(uvicorn.Server, "run", lambda server, *args, **kwargs: started.append(server.config))
    args = build_parser().parse_args(["serve", "tiny", "--max-images", "3", "--max-image-pixels", "1000000",
                                      "--max-request-pixels", "2000000", "--max-decodes", "2",
                                      "--header-timeout-s", "3", "--docs"])
    assert args.func(args) == 0
    [config] = started
    settings, limits = config.app.state.settings, config.app.state.limits
    assert (settings.max_images, settings.max_decodes, settings.docs) == (3, 2, True)
    assert (limits.image, limits.request) == (1_000_000, 2_000_000) and config.app.docs_url == "/docs"
    assert config.http.header_timeout_s == 3 and config.host == "127.0.0.1"
    args = build_parser().parse_args(["serve", "tiny"])
    assert args.func(args) == 0
    assert started[1].app.state.limits.image == 5_017_600 and started[1].app.docs_url is None


def test_the_page_writes_text_never_html():
    """Class names come from a model's files: the page sets them as text, so a name such as
    '<img src=x onerror=alert(1)>' shows as written and runs nothing."""
    from importlib import resources

    page = resources.files("visionzoo.serve").joinpath("page.html").read_text()
    assert "textContent" in page
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval("):
        assert sink not in page, sink
