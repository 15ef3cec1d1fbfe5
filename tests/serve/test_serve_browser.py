"""The web page in a real browser: Debian's Chromium driven by Playwright, against a live server.

Playwright never downloads a browser here: it launches /usr/bin/chromium (installed by .ci/run
with apt-get). Under CI (VISIONZOO_REQUIRE_SHARED_DATA=1) a missing browser is a failure, not a skip.
The screenshot is kept in artifacts/serve-page.png (and artifacts/serve-page-phone.png).
"""

from __future__ import annotations

import os
import shutil
import socket
import threading
import time
from pathlib import Path

import pytest

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARTIFACTS = Path(__file__).resolve().parents[2] / "artifacts"
CHROMIUM_FLAGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def _require_browser():
    missing = None
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        missing = "the playwright package is not installed (dev extra)"
    if missing is None and not os.path.exists(CHROMIUM):
        missing = f"Chromium is not installed at {CHROMIUM} (apt-get install -y chromium)"
    if missing:
        if os.environ.get("VISIONZOO_REQUIRE_SHARED_DATA") == "1":
            pytest.fail(missing + "; CI must run the browser test")
        pytest.skip(missing)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def live_server():
    import uvicorn

    import visionzoo
    from visionzoo.serve import create_app, load_classifier

    model = visionzoo.create_model("resnet18", num_classes=5).eval()
    visionzoo.with_spec(model, class_names=["tabby cat", "espresso", "golden retriever", "red fox", "mountain bike"])
    app = create_app(load_classifier(model))
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 60
    while not server.started:
        if time.time() > deadline:
            raise RuntimeError("the test server did not start within 60 s")
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=10)


def _photo(path: Path) -> Path:
    import numpy as np
    from PIL import Image

    y, x = np.mgrid[0:160, 0:200]
    pixels = np.stack([(x * 255 // 200), (y * 255 // 160), np.full_like(x, 90)], -1).astype(np.uint8)
    Image.fromarray(pixels).save(path)
    return path


def test_page_uploads_an_image_and_shows_predictions(live_server, tmp_path):
    _require_browser()
    from playwright.sync_api import sync_playwright

    ARTIFACTS.mkdir(exist_ok=True)
    image = _photo(tmp_path / "photo.png")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_FLAGS)
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 800})
            page.goto(live_server + "/")
            page.wait_for_function("document.getElementById('model-name').textContent.includes('resnet18')")
            page.set_input_files("#file", str(image))
            page.wait_for_selector(".prediction >> nth=4", timeout=60_000)
            rows = page.locator(".prediction")
            assert rows.count() == 5
            labels = {rows.nth(i).locator(".label").inner_text() for i in range(5)}
            assert labels == {"tabby cat", "espresso", "golden retriever", "red fox", "mountain bike"}
            assert page.locator("#preview").is_visible()
            assert "answered in" in page.locator("#status").inner_text()
            page.screenshot(path=str(ARTIFACTS / "serve-page.png"), full_page=True)

            # an error from the API is shown in words
            bad = tmp_path / "notes.jpg"
            bad.write_text("this is not an image")
            page.set_input_files("#file", str(bad))
            page.wait_for_function("document.getElementById('error').textContent.length > 0")
            assert "not an image" in page.locator("#error").inner_text()

            phone = browser.new_page(viewport={"width": 390, "height": 844})
            phone.goto(live_server + "/")
            phone.set_input_files("#file", str(image))
            phone.wait_for_selector(".prediction >> nth=4", timeout=60_000)
            width = phone.evaluate("document.documentElement.scrollWidth")
            assert width <= 390, f"the page scrolls sideways on a phone ({width}px wide)"
            phone.screenshot(path=str(ARTIFACTS / "serve-page-phone.png"), full_page=True)
        finally:
            browser.close()
    assert (ARTIFACTS / "serve-page.png").stat().st_size > 10_000
