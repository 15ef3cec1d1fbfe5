"""Test-time augmentation everywhere, one way: predict's averaged probabilities equal a hand
computation, the exported predictors average the mirror in one batch, and serve's `?tta=1` does the
same through its batcher."""

from __future__ import annotations

import asyncio
import io

import httpx
import numpy as np
import pytest
import torch
from PIL import Image

import visionzoo
from visionzoo.cli import main
from visionzoo.deploy.runtimes.exported import ExportedClassifier
from visionzoo.errors import SettingError
from visionzoo.evaluation import tta_logits
from visionzoo.prediction import predict, predict_images
from visionzoo.serve import Classifier, create_app

CLASSES = ["left", "middle", "right"]


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("tta") / "model"
    model = visionzoo.create_model("mobilenetv3_small_050", num_classes=3)
    visionzoo.save_model(model, folder, classes=CLASSES, preprocessing={**visionzoo.data_config(model),
                                                                        "input_size": (3, 32, 32)})
    return folder


@pytest.fixture(scope="module")
def lopsided_image(tmp_path_factory):
    """Bright on the left only, so that its mirror is another image to the model."""
    pixels = np.zeros((40, 40, 3), dtype=np.uint8)
    pixels[:, :12] = (250, 200, 20)
    pixels[5:30, 20:26] = (10, 90, 240)
    path = tmp_path_factory.mktemp("images") / "lopsided.png"
    Image.fromarray(pixels).save(path)
    return path


def _by_label(result):
    return {p["label"]: p["prob"] for p in result["predictions"]}


def test_predict_tta_equals_the_softmax_of_the_hand_averaged_logits(tiny_model, lopsided_image):
    model = visionzoo.load_model(tiny_model).eval()
    x = visionzoo.transforms(model)(Image.open(lopsided_image).convert("RGB"))[None]
    with torch.no_grad():
        plain, mirrored = model(x), model(x.flip(-1))
        zoom = torch.nn.functional.interpolate(x, size=(40, 40), mode="bilinear", align_corners=False)[..., 4:36, 4:36]
        zoomed, zoomed_mirror = model(zoom), model(zoom.flip(-1))
    by_hand = torch.softmax((plain + mirrored) / 2, 1)[0]
    by_hand_scaled = torch.softmax(((plain + mirrored) / 2 + (zoomed + zoomed_mirror) / 2) / 2, 1)[0]
    paths = [str(lopsided_image)]
    [without] = predict_images(model, paths, topk=3)
    [with_tta] = predict_images(model, paths, topk=3, tta=True)
    [with_scale] = predict_images(model, paths, topk=3, tta=True, tta_scales=[1.25])
    for name, index in zip(CLASSES, range(3)):
        assert with_tta["predictions"] and _by_label(with_tta)[name] == pytest.approx(float(by_hand[index]), abs=1e-5)
        assert _by_label(with_scale)[name] == pytest.approx(float(by_hand_scaled[index]), abs=1e-5)
        assert _by_label(without)[name] == pytest.approx(float(torch.softmax(plain, 1)[0, index]), abs=1e-5)
    assert _by_label(without) != pytest.approx(_by_label(with_tta), abs=1e-4)  # the mirror did change the answer
    with pytest.raises(SettingError, match="above 1"):
        tta_logits(model, x, flip=True, scales=[0.8])


def test_cli_predict_tta_and_its_refusals(tiny_model, lopsided_image, capsys):
    import json

    assert main(["predict", str(tiny_model), str(lopsided_image), "--tta", "--json"]) == 0
    [printed] = json.loads(capsys.readouterr().out)
    [expected] = predict(tiny_model, [lopsided_image], tta=True)
    assert _by_label(printed) == pytest.approx(_by_label(expected), abs=1e-6)
    assert main(["predict", str(tiny_model), str(lopsided_image), "--tta-scale", "1.2"]) == 2
    assert "add --tta" in capsys.readouterr().err


class _LinearExport(ExportedClassifier):
    """An exported predictor whose graph is a fixed linear map of the pixels, one image a call."""

    def __init__(self):
        self.preprocessing, self.class_names, self.name, self.max_batch = {}, CLASSES, "linear", 1
        self.weights = np.random.default_rng(0).normal(size=(3, 3 * 4 * 4)).astype(np.float32)
        self.calls = 0

    def logits(self, batch):
        self.calls += 1
        return batch.reshape(len(batch), -1) @ self.weights.T


def test_exported_predictors_average_the_mirror_in_one_pass():
    export = _LinearExport()
    batch = np.random.default_rng(1).normal(size=(2, 3, 4, 4)).astype(np.float32)
    expected = (export.logits(batch) + export.logits(batch[..., ::-1].copy())) / 2
    export.calls = 0
    np.testing.assert_allclose(export.predict_logits(batch, tta=True), expected, rtol=1e-5)
    assert export.calls == 4  # max_batch 1: the four views, one call each


def test_serve_tta_query_averages_the_mirror():
    def prepare(image):
        return np.asarray(image.resize((4, 4)), dtype=np.float32).transpose(2, 0, 1) / 255

    export = _LinearExport()

    def run(batch):
        return export.logits(batch)

    classifier = Classifier("linear", prepare, run, CLASSES, {"architecture": "linear", "classes": CLASSES},
                            returns_logits=True)
    pixels = np.zeros((4, 4, 3), dtype=np.uint8)
    pixels[:, :2] = 255
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    array = prepare(Image.fromarray(pixels))
    logits = (run(array[None]) + run(array[None, ..., ::-1].copy())) / 2
    expected = np.exp(logits[0] - logits[0].max()) / np.exp(logits[0] - logits[0].max()).sum()

    async def scenario():
        app = create_app(classifier)
        async with app.router.lifespan_context(app):
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as client:
                answer = await client.post("/v1/classify?tta=1&topk=3", content=buffer.getvalue(),
                                           headers={"content-type": "image/png"})
                bad = await client.post("/v1/classify?tta=maybe", content=buffer.getvalue(),
                                        headers={"content-type": "image/png"})
                return answer, bad

    answer, bad = asyncio.run(scenario())
    assert answer.status_code == 200, answer.text
    got = {p["label"]: p["prob"] for p in answer.json()["predictions"]}
    for index, name in enumerate(CLASSES):
        assert got[name] == pytest.approx(float(expected[index]), abs=1e-5)
    assert bad.status_code == 422 and "tta" in bad.json()["error"]
