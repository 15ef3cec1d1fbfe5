"""SigLIP 2: the text tower and the pair against open_clip's, the tokenizer, and sigmoid zero-shot.

Parity runs on the same random weights: open_clip's `ViT-B-16-SigLIP2` configuration built offline
(`pretrained=None`) at width 64, two layers and a 64-token vocabulary, its timm image tower made
the same SigLIP ViT at 64 wide, two blocks, 32 px. The full-size pair is compared on the meta device.
The tokenizer is a tiny word-level `tokenizer.json` written by the `tokenizers` library here.
"""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

open_clip = pytest.importorskip("open_clip")
tokenizers = pytest.importorskip("tokenizers")

from visionzoo.cli import main  # noqa: E402
from visionzoo.data.decode import decode_image  # noqa: E402
from visionzoo.factory import create_clip, spec_of, transforms, zero_shot_classifier  # noqa: E402
from visionzoo.prediction import classify_images  # noqa: E402
from visionzoo.siglip_text import (  # noqa: E402
    SIGLIP_MODELS,
    SigLIP,
    SigLipTextConfig,
    SigLipTextTransformer,
    SigLipTokenizer,
)

NAME = "ViT-B-16-SigLIP2"
SMALL_TEXT = {"width": 64, "heads": 4, "layers": 2, "vocab_size": 64}
SMALL_IMAGE = {"img_size": 32, "depth": 2, "embed_dim": 64, "num_heads": 4}
WORDS = "a photo of the cat dog car diagram very long caption".split()


def _reference() -> torch.nn.Module:
    """open_clip's SigLIP 2 pair with random weights at the small sizes. open_clip builds its timm trunk
    by name only, so it is built as timm's `test_vit` and then replaced by the small SigLIP tower."""
    import timm

    config = open_clip.get_model_config(NAME)
    model = open_clip.create_model(NAME, pretrained=None, embed_dim=SMALL_IMAGE["embed_dim"],
                                   text_cfg={**config["text_cfg"], **SMALL_TEXT},
                                   vision_cfg={**config["vision_cfg"], "timm_model_name": "test_vit"})
    model.visual.trunk = timm.create_model(config["vision_cfg"]["timm_model_name"], pretrained=False,
                                           num_classes=0, **SMALL_IMAGE)
    return model.eval()


def _small_pair(**text_overrides) -> SigLIP:
    config = SigLipTextConfig(**{**SMALL_TEXT, **text_overrides})
    return create_clip(NAME, text_config=config, **SMALL_IMAGE).eval()


def _tokens(batch: int, vocab: int, length: int = 64) -> torch.Tensor:
    """Random ids, each row a text of random length followed by padding (id 0), as the tokenizer pads."""
    generator = torch.Generator().manual_seed(0)
    tokens = torch.randint(4, vocab, (batch, length), generator=generator)
    for row, used in enumerate(torch.randint(2, length, (batch,), generator=generator).tolist()):
        tokens[row, used:] = 0
    return tokens


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
    """A tiny tokenizer in Gemma's special-token layout (pad 0, eos 1, bos 2, unk 3), adding <eos>."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    folder = tmp_path_factory.mktemp("siglip_tokenizer")
    vocab = {"<pad>": 0, "<eos>": 1, "<bos>": 2, "<unk>": 3, **{w: i + 4 for i, w in enumerate(WORDS)}}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.post_processor = processors.TemplateProcessing(single="$A <eos>", special_tokens=[("<eos>", 1)])
    tokenizer.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast", "pad_token": "<pad>", "eos_token": "<eos>",
        "unk_token": "<unk>", "padding_side": "right"}))
    return folder


# --- towers and pair against open_clip ---------------------------------------------------------


def test_pair_structure_matches_open_clip_on_meta():
    """Every key and shape of the full-size pair, with open_clip's `visual.trunk.` as our `visual.`."""
    with torch.device("meta"):
        reference = open_clip.create_model(NAME, pretrained=None, device="meta")
        ours = create_clip(NAME)
    expected = {k.replace("visual.trunk.", "visual.", 1): tuple(v.shape) for k, v in reference.state_dict().items()}
    assert {k: tuple(v.shape) for k, v in ours.state_dict().items()} == expected
    assert isinstance(ours.text, SigLipTextTransformer) and ours.text.context_length == 64
    assert ours.text.config.vocab_size == 256000


def test_text_tower_matches_open_clip_numerically():
    torch.manual_seed(0)
    reference = _reference().text
    ours = SigLipTextTransformer(SigLipTextConfig(**SMALL_TEXT), 64).eval()
    ours.load_state_dict(reference.state_dict(), strict=True)  # open_clip's names: no key mapping
    tokens = _tokens(3, SMALL_TEXT["vocab_size"])
    with torch.no_grad():
        expected, actual = reference(tokens), ours(tokens)
    assert actual.shape == (3, 64)
    assert float((actual - expected).abs().max() / expected.abs().max()) <= 1e-4


def test_text_tower_attends_both_ways_and_reads_the_last_position():
    """Unlike CLIP's causal tower, a change early in the text reaches the last position, and so
    does a change in the padding (SigLIP pools the last token, not an end-of-text token)."""
    torch.manual_seed(0)
    tower = SigLipTextTransformer(SigLipTextConfig(width=32, layers=1, heads=4, vocab_size=32), 16).eval()
    tokens = _tokens(1, 32)
    changed_padding = tokens.clone()
    changed_padding[0, -2] = 5
    with torch.no_grad():
        assert not torch.allclose(tower(tokens), tower(changed_padding), atol=1e-5)
        with pytest.raises(ValueError, match="context length"):
            tower(torch.zeros(1, 65, dtype=torch.long))


def test_open_clip_checkpoint_loads_and_pair_logits_match(tmp_path):
    """An open_clip state_dict (image tower under `visual.trunk.`) loads through the converter, and the
    pair's logits equal scale * cos + bias computed by open_clip's towers."""
    torch.manual_seed(0)
    reference = _reference()
    with torch.no_grad():
        reference.logit_scale.fill_(2.0)
        reference.logit_bias.fill_(-3.5)
    path = tmp_path / "open_clip_model.safetensors"
    save_file({k: v.contiguous() for k, v in reference.state_dict().items()}, str(path))
    ours = create_clip(NAME, pretrained=str(path), text_config=SigLipTextConfig(**SMALL_TEXT), **SMALL_IMAGE).eval()
    images, tokens = torch.randn(2, 3, 32, 32), _tokens(3, SMALL_TEXT["vocab_size"])
    with torch.no_grad():
        image = reference.encode_image(images, normalize=True)
        text = reference.encode_text(tokens, normalize=True)
        expected = reference.logit_scale.exp() * image @ text.T + reference.logit_bias
        actual = ours(images, tokens)
    assert actual.shape == (2, 3)
    assert torch.allclose(actual, expected, atol=1e-4, rtol=1e-4)
    assert float(ours.logit_bias.detach()) == -3.5


# --- tokenizer -----------------------------------------------------------------------------------


def test_tokenizer_matches_open_clip_hf_tokenizer(tokenizer_dir):
    """Cleaning, the end token, truncation and right padding to 64 as open_clip's HFTokenizer does
    with the same files (through transformers' AutoTokenizer)."""
    pytest.importorskip("transformers")
    from open_clip.tokenizer import HFTokenizer

    reference = HFTokenizer(str(tokenizer_dir), context_length=64, clean="canonicalize")
    ours = SigLipTokenizer(tokenizer_dir / "tokenizer.json", context_length=64)
    texts = ["A photo of the cat.", "a_diagram, of a DOG!", "very long caption " * 40, "zebra"]
    expected, actual = reference(texts), ours(texts)
    assert actual.shape == (4, 64) and actual.dtype == torch.long
    assert torch.equal(actual, expected)
    assert actual[0, :6].tolist() == [4, 5, 6, 7, 8, 1] and actual[0, 6:].eq(0).all()  # words, <eos>, padding
    assert actual[2, -1] == 1  # cut to fit, the end token kept


def test_tokenizer_says_what_is_missing(tmp_path):
    with pytest.raises(Exception, match="tokenizer.json"):
        SigLipTokenizer(tmp_path)


# --- sigmoid zero-shot -----------------------------------------------------------------------


def test_zero_shot_classifier_is_the_pair_read_per_label(tokenizer_dir):
    torch.manual_seed(0)
    pair = _small_pair()
    tokenizer = SigLipTokenizer(tokenizer_dir)
    labels = ["cat", "dog", "car"]
    with pytest.raises(ValueError, match="tokenizer"):
        zero_shot_classifier(pair, labels, templates=["a photo of the {}"])
    classifier = zero_shot_classifier(pair, labels, templates=["a photo of the {}"], tokenizer=tokenizer)
    assert classifier.sigmoid and spec_of(classifier).head == {"task": "multilabel"}
    assert spec_of(classifier).data_config["mean"] == (0.5, 0.5, 0.5)
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = pair(images, tokenizer([f"a photo of the {label}" for label in labels]))
        assert torch.allclose(classifier(images), expected, atol=1e-5)


def test_classify_images_gives_independent_sigmoid_probabilities(tokenizer_dir, tmp_path):
    from PIL import Image

    torch.manual_seed(0)
    pair = _small_pair()
    with torch.no_grad():
        pair.logit_bias.fill_(0.5)  # keep the probabilities away from 0 so the sum test means something
    labels = ["cat", "dog", "car"]
    classifier = zero_shot_classifier(pair, labels, templates=["a photo of the {}"],
                                      tokenizer=SigLipTokenizer(tokenizer_dir))
    image = tmp_path / "image.png"
    Image.new("RGB", (40, 30), (200, 40, 90)).save(image)
    top = classify_images(classifier, [str(image)], top_k=3)[0]["top"]
    with torch.no_grad():
        logits = classifier(transforms(classifier)(decode_image(str(image)))[None])[0]
    expected = {label: float(p) for label, p in zip(labels, logits.sigmoid())}
    assert {t["label"]: t["probability"] for t in top} == pytest.approx(expected, abs=1e-6)
    assert abs(sum(t["probability"] for t in top) - 1) > 1e-3  # not a softmax over the labels


def test_zero_shot_classifier_saves_and_loads(tokenizer_dir, tmp_path):
    import visionzoo

    torch.manual_seed(0)
    classifier = zero_shot_classifier(_small_pair(), ["cat", "dog"], templates=["a {}"],
                                      tokenizer=SigLipTokenizer(tokenizer_dir))
    visionzoo.save_model(classifier, tmp_path / "saved")
    loaded = visionzoo.load_model(tmp_path / "saved")
    images = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(loaded(images), classifier(images), atol=1e-5)
    assert loaded.sigmoid and spec_of(loaded).head == {"task": "multilabel"}


def test_cli_zero_shot_prints_independent_probabilities(tokenizer_dir, tmp_path, monkeypatch, capsys):
    """`visionzoo zero-shot --model ViT-B-16-SigLIP2`: the tokenizer found beside the weight file, the
    table says the probabilities are independent. A small pair stands in for the full one."""
    from PIL import Image

    import visionzoo.factory

    torch.manual_seed(0)
    small = _small_pair()
    weights = tmp_path / "open_clip_model.safetensors"
    save_file({k: v.contiguous() for k, v in small.state_dict().items()}, str(weights))
    (tmp_path / "tokenizer.json").write_text((tokenizer_dir / "tokenizer.json").read_text())
    built = []

    def fake_create_clip(name, pretrained=False, **_):
        built.append((name, pretrained))
        return create_clip(name, pretrained=pretrained, text_config=SigLipTextConfig(**SMALL_TEXT), **SMALL_IMAGE)

    monkeypatch.setattr(visionzoo.factory, "create_clip", fake_create_clip)
    image = tmp_path / "image.png"
    Image.new("RGB", (40, 30), (20, 140, 90)).save(image)
    code = main(["zero-shot", str(image), "--labels", "cat,dog,car", "--model", NAME, "--pretrained", str(weights),
                 "--template", "a photo of the {}"])
    out = capsys.readouterr().out
    assert code == 0 and built == [(NAME, str(weights))]
    assert "independent probabilities; they need not sum to 1" in " ".join(out.split())

    (tmp_path / "tokenizer.json").unlink()
    code = main(["zero-shot", str(image), "--labels", "cat,dog", "--model", NAME, "--pretrained", str(weights)])
    assert code == 2 and "--tokenizer" in capsys.readouterr().err


def test_siglip_models_table_names_registered_towers():
    from visionzoo.registry import list_models

    for image_name, text_config, embed_dim in SIGLIP_MODELS.values():
        assert image_name in list_models()
        assert text_config.width == embed_dim == 768


def test_pair_refuses_mismatched_widths():
    with torch.device("meta"):
        visual = create_clip(NAME).visual
        with pytest.raises(ValueError, match="features"):
            SigLIP(visual, SigLipTextTransformer(SigLipTextConfig(width=32, heads=4, layers=1, vocab_size=8), 32))
