"""CLIP: the text tower against open_clip's, the tokenizer, and zero-shot mechanics.

Zero-shot tests use randomly initialised towers made small (one block, narrow): they check
the arithmetic (shapes, template averaging, normalisation, the logit scale), not accuracy.
"""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
import torch.nn.functional as F

open_clip = pytest.importorskip("open_clip")

import visionzoo  # noqa: E402
from visionzoo.clip import (  # noqa: E402
    CLIP_MODELS,
    IMAGENET_TEMPLATES,
    ClipTextConfig,
    TextTransformer,
    ZeroShotClassifier,
    tokenize,
)
from visionzoo.factory import create_clip, spec_of, zero_shot_classifier  # noqa: E402

SMALL_TEXT = ClipTextConfig(width=64, layers=2, heads=4)
SMALL_IMAGE = {"img_size": 64, "depth": 1, "embed_dim": 64, "num_heads": 4}


def _reference_text_tower(name: str, **overrides) -> torch.nn.Module:
    """open_clip's text encoder with the configuration of open_clip model `name`."""
    from open_clip.transformer import QuickGELU
    from open_clip.transformer import TextTransformer as Reference

    config = open_clip.get_model_config(name.replace("-quickgelu", ""))
    text = {**config["text_cfg"], **overrides}
    return Reference(context_length=text["context_length"], vocab_size=text["vocab_size"], width=text["width"],
                     heads=text["heads"], layers=text["layers"], output_dim=overrides.get("output_dim",
                                                                                             config["embed_dim"]),
                     act_layer=QuickGELU if name.endswith("quickgelu") else torch.nn.GELU)


@pytest.mark.parametrize("name", list(CLIP_MODELS))
def test_text_tower_structure_matches_open_clip(name):
    _, config, embed_dim = CLIP_MODELS[name]
    with torch.device("meta"):
        reference = _reference_text_tower(name)
        ours = TextTransformer(config, embed_dim)
    expected = {k: tuple(v.shape) for k, v in reference.state_dict().items()}
    assert {k: tuple(v.shape) for k, v in ours.state_dict().items()} == expected


@pytest.mark.parametrize("name, layers", [("ViT-B-32", 12), ("ViT-B-32-quickgelu", 2)])
def test_text_tower_matches_open_clip_numerically(name, layers):
    _, config, embed_dim = CLIP_MODELS[name]
    torch.manual_seed(0)
    reference = _reference_text_tower(name, layers=layers).eval()
    ours = TextTransformer(dataclasses.replace(config, layers=layers), embed_dim).eval()
    ours.load_state_dict(reference.state_dict(), strict=True)  # same names: no key mapping needed
    tokens = tokenize(["a photo of a cat.", "a diagram", "an extremely long caption " * 20])
    with torch.no_grad():
        expected, actual = reference(tokens), ours(tokens)
    assert actual.shape == (3, embed_dim)
    assert float((actual - expected).abs().max() / expected.abs().max()) <= 1e-4


def test_text_tower_is_causal_and_pools_at_the_end_token():
    """Changing a token after the end token (padding) must not change the embedding."""
    torch.manual_seed(0)
    tower = TextTransformer(SMALL_TEXT, 32).eval()
    tokens = tokenize(["a photo of a dog"])
    padded = tokens.clone()
    end = int(tokens.argmax())
    padded[0, end + 1] = 123  # below the end token's id, so argmax still finds the end token
    with torch.no_grad():
        assert torch.allclose(tower(tokens), tower(padded), atol=1e-6)
        changed = tokens.clone()
        changed[0, 1] = 999  # a token before the end does change it
        assert not torch.allclose(tower(tokens), tower(changed), atol=1e-4)


def test_tokenizer_matches_open_clip():
    texts = ["a photo of a cat.", "Hello, WORLD!  ", "naïve café — 東京", "", "word " * 100]
    expected = open_clip.get_tokenizer("ViT-B-32")(texts)
    actual = tokenize(texts)
    assert actual.shape == (5, 77) and actual.dtype == torch.long
    assert torch.equal(actual, expected)
    assert actual[4, -1] == 49407  # a text cut at the context length keeps its end token


def _small_clip() -> visionzoo.clip.CLIP:
    torch.manual_seed(0)
    return create_clip("ViT-B-32", text_config=SMALL_TEXT, **SMALL_IMAGE).eval()


def test_clip_model_logits_are_scaled_cosine_similarities():
    model = _small_clip()
    images, tokens = torch.randn(2, 3, 64, 64), tokenize(["a cat", "a dog", "a car"])
    with torch.no_grad():
        logits = model(images, tokens)
        image = F.normalize(model.visual(images), dim=-1)
        text = F.normalize(model.text(tokens), dim=-1)
    assert logits.shape == (2, 3)
    torch.testing.assert_close(logits, model.logit_scale.exp() * image @ text.T)


def test_zero_shot_class_weight_is_normalised_mean_of_normalised_prompts():
    model = _small_clip()
    templates = ["a photo of a {}.", "a drawing of a {}.", "{}"]
    classes = ["cat", "dog"]
    classifier = zero_shot_classifier(model, classes, templates=templates)
    with torch.no_grad():
        expected = []
        for name in classes:
            prompts = F.normalize(model.text(tokenize([t.format(name) for t in templates])), dim=-1)
            expected.append(F.normalize(prompts.mean(dim=0), dim=0))
        expected = torch.stack(expected) * model.logit_scale.exp()
    assert isinstance(classifier, ZeroShotClassifier)
    assert classifier.head.weight.shape == (2, 512)
    torch.testing.assert_close(classifier.head.weight, expected)
    # averaging normalised prompts differs from embedding one prompt: the ensemble is really used
    single = zero_shot_classifier(model, classes, templates=templates[:1])
    assert not torch.allclose(single.head.weight, classifier.head.weight)


def test_zero_shot_classifier_has_the_shared_interface():
    model = _small_clip()
    classifier = zero_shot_classifier(model, ["cat", "dog", "car"], templates=["a photo of a {}."])
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        logits = classifier(x)
        pooled = classifier.forward_head(classifier.forward_features(x), pre_logits=True)
        clip_logits = model(x, tokenize(["a photo of a cat.", "a photo of a dog.", "a photo of a car."]))
    assert logits.shape == (2, 3) and classifier.num_classes == 3
    assert pooled.shape == (2, classifier.num_features)
    torch.testing.assert_close(pooled.norm(dim=-1), torch.ones(2))  # unit image embeddings
    torch.testing.assert_close(logits, clip_logits)  # one template: exactly CLIP's logits
    classifier.reset_classifier(5)
    assert classifier(x).shape == (2, 5)
    classifier.reset_classifier(0)
    assert classifier(x).shape == (2, classifier.num_features)


def test_zero_shot_classifier_saves_and_loads(tmp_path):
    from visionzoo.factory import load_model, save_model

    classifier = zero_shot_classifier(_small_clip(), ["cat", "dog", "car"], templates=["a photo of a {}."])
    save_model(classifier, tmp_path / "zs")
    loaded = load_model(tmp_path / "zs")
    assert isinstance(loaded, ZeroShotClassifier) and spec_of(loaded).class_names == ("cat", "dog", "car")
    assert spec_of(loaded).data_config == spec_of(classifier).data_config
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), classifier(x), rtol=0, atol=0)


def test_default_templates_are_the_80_imagenet_ones():
    assert len(IMAGENET_TEMPLATES) == 80 and len(set(IMAGENET_TEMPLATES)) == 80
    assert all(t.count("{}") == 1 for t in IMAGENET_TEMPLATES)


def test_zero_shot_rejects_bad_templates_and_names():
    model = _small_clip()
    with pytest.raises(ValueError, match="no '\\{\\}'"):
        zero_shot_classifier(model, ["cat"], templates=["a photo"])
    with pytest.raises(ValueError, match="unknown CLIP model"):
        create_clip("ViT-X-99")


def test_zero_shot_cli(tmp_path, monkeypatch, capsys):
    from PIL import Image

    from visionzoo import cli

    paths = []
    for i, colour in enumerate([(255, 0, 0), (0, 0, 255)]):
        path = tmp_path / f"image{i}.png"
        Image.new("RGB", (80, 60), colour).save(path)
        paths.append(str(path))
    # a small random CLIP stands in for the published weights
    monkeypatch.setattr("visionzoo.factory.create_clip", lambda name, pretrained=False: _small_clip())
    code = cli.main(["zero-shot", *paths, "--labels", "red,blue,green", "--pretrained", "none",
                     "--template", "a {} square", "--json"])
    assert code == 0
    rows = json.loads(capsys.readouterr().out)
    assert [row["image"] for row in rows] == paths
    for row in rows:
        assert {t["label"] for t in row["top"]} <= {"red", "blue", "green"} and len(row["top"]) == 3
        assert abs(sum(t["probability"] for t in row["top"]) - 1.0) < 1e-5
    assert cli.main(["zero-shot", paths[0], "--labels", "red"]) == 2  # one label is a usage error


def test_zero_shot_classifier_predicts_and_exports_like_any_model(tmp_path):
    """The zero-shot head is an ordinary classifier: the PyTorch predictor and the ONNX export take it."""
    pytest.importorskip("onnxruntime")
    from PIL import Image

    from visionzoo.deploy.export import export_model
    from visionzoo.deploy.runtimes import OnnxClassifier
    from visionzoo.factory import create_clip, zero_shot_classifier
    from visionzoo.prediction import predict_images

    torch.manual_seed(0)
    classifier = zero_shot_classifier(create_clip("ViT-B-32", pretrained=False), ["cat", "dog", "car"],
                                      templates=["a photo of a {}."])
    Image.new("RGB", (64, 64), (200, 10, 10)).save(tmp_path / "x.png")
    eager = predict_images(classifier, [str(tmp_path / "x.png")], topk=3)[0]["predictions"]
    assert {p["label"] for p in eager} == {"cat", "dog", "car"}
    report = export_model(classifier, tmp_path / "zs.onnx")
    assert report.verified
    exported = OnnxClassifier(tmp_path / "zs.onnx").predict_files([tmp_path / "x.png"], topk=3)[0]["predictions"]
    assert [p["label"] for p in exported] == [p["label"] for p in eager]
    assert exported[0]["prob"] == pytest.approx(eager[0]["prob"], abs=1e-4)
