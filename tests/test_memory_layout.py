"""One layout, one number: every command that runs a model for its outputs runs it in channels-last
memory (`visionzoo.factory.layout`), the layout a transfer run trains and validates in, so evaluate,
predict, explain, serve and embed compute train's validation logits to the bit.

Each command runs a model with a forward hook that records every (input, output); each output must
equal, exactly, what the channels-last copy of the model computes on that input, and the command must
leave the weights in channels-last (an NCHW run can match in the last bits on some inputs and thread
counts; `test_the_layout_moves_the_logits` shows where it does not).
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from PIL import Image

import visionzoo
from harness import perturb_constant_tensors
from visionzoo.factory import channels_last


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """val/ of two classes, three noisy non-square images each."""
    root = tmp_path_factory.mktemp("layout")
    rng = np.random.default_rng(0)
    for label in range(2):
        folder = root / "val" / f"class{label}"
        folder.mkdir(parents=True)
        for i in range(3):
            pixels = (rng.random((80 + 8 * i, 96, 3)) * 255).astype(np.uint8)
            Image.fromarray(pixels).save(folder / f"{i}.png")
    return root


def _model():
    torch.manual_seed(0)
    model = visionzoo.create_model("mobilenetv3_small_050", num_classes=2).eval()
    perturb_constant_tensors(model)
    return visionzoo.factory.with_spec(model, data_config={**visionzoo.data_config(model), "input_size": (3, 64, 64)})


def _recorded(model):
    """`model` with a hook that appends (input, output) of each forward call to the returned list."""
    calls = []
    model.register_forward_hook(lambda module, args, output: calls.append((args[0].detach(), output.detach())))
    return model, calls


def _weights_channels_last(model) -> bool:
    return all(p.is_contiguous(memory_format=torch.channels_last) for p in model.parameters() if p.dim() == 4)


def _check(calls, reference, model):
    """Every recorded output is the channels-last model's, to the bit, and the command left the model's
    weights in channels-last (an NCHW run can match on some inputs and thread counts)."""
    assert calls, "the command ran no forward pass"
    with torch.no_grad():
        for images, output in calls:
            assert torch.equal(output, reference(images)), "not the channels-last model's numbers"
    assert _weights_channels_last(model)


def test_the_layout_moves_the_logits():
    """Why one layout matters: the NCHW model's logits differ from the channels-last model's in the last bits."""
    model = _model()
    images = torch.randn(4, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert not torch.equal(model(images), channels_last(copy.deepcopy(model))(images))


@pytest.fixture
def models():
    """(the model a command gets, with its recorder; the channels-last reference)."""
    model = _model()
    reference = channels_last(copy.deepcopy(model))  # before the hook: a copy would record too
    return _recorded(model), reference


def test_evaluate(models, photos):
    (model, calls), reference = models
    visionzoo.evaluate(model, photos, batch_size=4)
    _check(calls, reference, model)


def test_predict(models, photos):
    (model, calls), reference = models
    visionzoo.predict(model, [str(photos / "val")], batch_size=4)
    _check(calls, reference, model)


def test_explain(models, photos):
    pytest.importorskip("pytorch_grad_cam")
    (model, calls), reference = models
    visionzoo.explain(model, [str(photos / "val" / "class0" / "0.png")], out=None)
    _check(calls, reference, model)


def test_serve(models, photos):
    from visionzoo.serve.classifier import load_classifier

    (model, calls), reference = models
    classifier = load_classifier(model)
    batch = np.stack([classifier.prepare(Image.open(p).convert("RGB")) for p in sorted(photos.rglob("*.png"))])
    classifier(batch)
    _check(calls, reference, model)


def test_embed(models, photos, tmp_path, monkeypatch):
    import visionzoo.embed.embeddings as embeddings
    from visionzoo.data.layout import scan_tree

    (model, _), reference = models
    calls, pooled_and_tokens = [], embeddings.pooled_and_tokens

    def recording(net, images, patch_tokens=False):
        pooled, tokens = pooled_and_tokens(net, images, patch_tokens)
        calls.append((images, pooled))
        return pooled, tokens

    monkeypatch.setattr(embeddings, "pooled_and_tokens", recording)
    embeddings.embed_samples(model, scan_tree(photos / "val", ["class0", "class1"]), ["class0", "class1"], tmp_path,
                             identity={"model": "m"}, data_config=visionzoo.data_config(model))
    _check(calls, lambda images: pooled_and_tokens(reference, images)[0], model)


def test_a_users_own_module_is_left_as_it_is():
    own = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3))
    assert channels_last(own) is own and own[0].weight.is_contiguous()
    assert _weights_channels_last(channels_last(_model()))


def test_the_weights_stay_trainable_when_converted_in_inference_mode():
    model = _model()
    with torch.inference_mode():
        channels_last(model)
    model(torch.randn(2, 3, 64, 64)).sum().backward()  # inference tensors cannot be saved for backward
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
