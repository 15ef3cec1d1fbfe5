"""DINOv3 and SigLIP 2 as foundation backbones, end to end and offline, on random weights saved to local files:
`embed` -> `probe`, `train --adapt lora`, and a bake-off between them; and the catalogued weights resolved by
name from a Hugging Face cache made here (DINOv3's ConvNeXt students into the ConvNeXt family, the SigLIP 2
pair with its tokenizer for `zero-shot`).

The smallest variants of each (ViT-S/16 DINOv3, ViT-B/16 SigLIP 2 at 224) keep their real shapes, since a
weight file must fit the registered architecture; the images are tiny (32 px where a size can be chosen).
"""

from __future__ import annotations

import json
import os
import re

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

import visionzoo
from harness import cache_hub_repo
from visionzoo import cli
from visionzoo.factory import spec_of
from visionzoo.weights import default_weight

DINOV3 = "vit_small_patch16_dinov3"
SIGLIP = "vit_base_patch16_siglip_224"
WIDTHS = {DINOV3: 384, SIGLIP: 768}
SHAPES = "builtin:shapes?size=32&train=24&val=12"
QUIET = dict(workers=0, plots=False, tensorboard=False, progress=False)


@pytest.fixture(autouse=True)
def isolated_caches(tmp_path, monkeypatch, one_thread):
    """No test touches the user's caches or the network: HF cache and visionzoo cache in tmp_path, offline."""
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("VISIONZOO_CACHE", str(tmp_path / "vz-cache"))
    yield


@pytest.fixture(scope="module")
def weight_files(tmp_path_factory) -> dict[str, str]:
    """Random weights of each backbone, saved as the safetensors file a user would pass."""
    folder = tmp_path_factory.mktemp("weights")
    files = {}
    for seed, name in enumerate((DINOV3, SIGLIP)):
        torch.manual_seed(seed)
        files[name] = str(folder / f"{name}.safetensors")
        save_file({k: v.contiguous() for k, v in visionzoo.create_model(name).state_dict().items()}, files[name])
    return files


def _safetensors_bytes(state: dict[str, torch.Tensor], tmp_path) -> bytes:
    path = tmp_path / "tmp.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    data = path.read_bytes()
    path.unlink()
    return data


def _image_folder(root, per_class: int = 4, size: int = 40) -> None:
    """Two classes told apart by colour, so a probe on any features has something to find."""
    rng = np.random.default_rng(0)
    for channel, name in enumerate(("red", "green")):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            pixels = rng.integers(0, 60, (size, size, 3), dtype=np.uint8)
            pixels[..., channel] = rng.integers(170, 255, (size, size), dtype=np.uint8)
            Image.fromarray(pixels).save(root / name / f"{i}.png")


# --- embed -> probe ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", [DINOV3, SIGLIP])
def test_embed_then_probe_from_the_cli(name, weight_files, tmp_path, capsys):
    """`visionzoo embed MODEL --pretrained FILE` then `probe`: the cached embeddings are the backbone's
    pooled features under the file's weights (a random initialisation would differ), and both probes run."""
    _image_folder(tmp_path / "images")
    out = tmp_path / "features.safetensors"
    assert cli.main(["embed", name, "--pretrained", weight_files[name], "--data", str(tmp_path / "images"),
                     "--out", str(out), "--batch-size", "8", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["images"] == 8 and summary["dim"] == WIDTHS[name] and summary["classes"] == 2

    from visionzoo.data import decode_image
    from visionzoo.embed.embeddings import load_embeddings
    from visionzoo.factory import data_config, transforms

    features = load_embeddings(out)
    assert features.embeddings.shape == (8, WIDTHS[name]) and features.classes == ["green", "red"]
    model = visionzoo.create_model(name, pretrained=weight_files[name]).eval()
    image = transforms(model)(decode_image(features.paths[0])).unsqueeze(0)
    assert image.shape[-1] == data_config(model)["input_size"][-1]
    with torch.no_grad():
        torch.testing.assert_close(model(image)[0], features.embeddings[0], rtol=1e-4, atol=1e-4)

    assert cli.main(["probe", "--features", str(out), "--method", "linear", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["method"] == "linear" and 0.0 <= report["top1"] <= 1.0 and report["num_eval"] >= 1
    assert np.array(report["confusion"]).sum() == report["num_eval"]
    assert cli.main(["probe", "--features", str(out), "--method", "knn", "--json"]) == 0
    assert 0.0 <= json.loads(capsys.readouterr().out)["top1"] <= 1.0


# --- LoRA ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", [DINOV3, SIGLIP])
def test_lora_fine_tune_adapts_the_registered_targets(name, weight_files, tmp_path):
    """`train --adapt lora` from the weight file at 32 px: only the adapter and the new head train, the
    adapter wraps the family's registered LoRA targets, and the frozen base is the file's."""
    from safetensors.torch import load_file

    from visionzoo.registry import family_facts, get_card
    from visionzoo.weights.lora import ADAPTER_FILE

    result = visionzoo.train(name, SHAPES, pretrained=weight_files[name], out=tmp_path / "run", epochs=1,
                             batch_size=8, image_size=32, adapt="lora", lora_rank=2, lr=1e-2, **QUIET)
    summary = json.loads((result.run_dir / "summary.json").read_text())
    assert summary["adapt"] == "lora" and 0 < summary["trainable_params"] < summary["total_params"] / 20
    best = result.run_dir / "best"
    assert (best / ADAPTER_FILE).exists() and not (best / "model.safetensors").exists()
    adapter = load_file(best / ADAPTER_FILE)
    targets = family_facts(get_card(name).family).lora_targets  # peft's module-name patterns
    adapted = {key.split(".lora_A")[0] for key in adapter if ".lora_A" in key}
    attention = {module for module in adapted if re.search(targets.attention, module)}
    assert len(attention) == 2 * 12, sorted(adapted)[:4]  # qkv and proj of each of the 12 blocks
    assert all(re.search(targets.mlp, module) for module in adapted - attention), sorted(adapted - attention)

    loaded, base = visionzoo.load_model(best), load_file(weight_files[name])
    compared = 0
    for key, value in loaded.state_dict().items():
        plain = key.replace(".base_layer.", ".")
        if "lora_" in key or "modules_to_save" in key or key.startswith("head") or plain not in base:
            continue
        if key.endswith("pos_embed"):  # resampled to the 32 px run: 2x2 patches
            continue
        torch.testing.assert_close(value, base[plain], rtol=0, atol=0, msg=key)
        compared += 1
    assert compared > 50
    assert any(v.abs().sum() > 0 for k, v in loaded.state_dict().items() if "lora_B" in k), "the adapter did not train"


# --- bake-off ------------------------------------------------------------------------------------


def test_bakeoff_between_dinov3_and_siglip2(weight_files, tmp_path, monkeypatch):
    """`advise --data ... --candidates DINOV3,SIGLIP --weights NAME=FILE`: both are built for the 32 px run
    (SigLIP's position table resampled), embedded and scored from their files, and the winner is the one the
    probe ranks first. Latency and the winner's export are stubbed and nothing is fine-tuned (--finetune-top
    0): test_bakeoff.py tests those on small CNNs, and a ViT-B's would take minutes here."""
    import visionzoo.choose.bakeoff.result as bakeoff_result

    exported = []
    monkeypatch.setattr(bakeoff_result, "export_winner", lambda c, *args: (exported.append(c.name), ("", ""))[1])
    result = visionzoo.advise(data=SHAPES, target="cpu", candidates=[DINOV3, SIGLIP], weights=weight_files,
                              out=tmp_path / "bakeoff", cache_dir=tmp_path / "embeddings", image_size=32,
                              finetune_top=0, measure_fn=lambda candidate, target, size: (1.0, "eager"),
                              progress=False)
    shape = result.as_dict()
    rows = {c["name"]: c for c in shape["candidates"]}
    assert set(rows) == {DINOV3, SIGLIP}
    for name, row in rows.items():
        assert os.path.samefile(row["weights"], weight_files[name])
        assert 0.0 <= row["probe_top1"] <= 1.0 and set(row["scores"]) == {"logme", "knn_loo", "linear"}
        assert row["finetune_top1"] is None
    assert result.embedded == 2 * (24 + 12)
    winner = shape["winner"]
    assert winner["name"] in rows and winner["scored_by"] != "fine-tune" and exported == [winner["name"]]


# --- catalogued weights by name, from a Hugging Face cache ---------------------------------------


def test_convnext_loads_dinov3_distilled_weights_by_name(tmp_path):
    """`convnext_tiny.dinov3_lvd1689m` from the Hub cache (timm's layout, no classifier): the features match
    timm's ConvNeXt on the same weights, the weights' preprocessing is recorded, and the family's ranking
    keeps its ImageNet classifier weights (this entry is a feature backbone)."""
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    reference = timm.create_model("convnext_tiny", num_classes=0).eval()
    cache_hub_repo(os.environ["HF_HUB_CACHE"], "timm/convnext_tiny.dinov3_lvd1689m",
                {"model.safetensors": _safetensors_bytes(reference.state_dict(), tmp_path)})
    model = visionzoo.create_model("convnext_tiny", pretrained="convnext_tiny.dinov3_lvd1689m", num_classes=0).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference(x), rtol=1e-5, atol=1e-5)
    spec = spec_of(model)
    assert spec.weights == "convnext_tiny.dinov3_lvd1689m" and spec.class_names is None
    assert visionzoo.data_config(model)["crop_pct"] == 1.0

    from visionzoo.choose.candidates import candidate_pool

    usable, _ = candidate_pool(names=["convnext_tiny"])
    assert [c.weights for c in usable] == [default_weight("convnext_tiny").name]


def test_convnext_dinov3_weights_show_in_info(capsys):
    assert cli.main(["info", "convnext_tiny", "--json"]) == 0
    weights = {w["name"]: w for w in json.loads(capsys.readouterr().out)["weights"]}
    entry = weights["convnext_tiny.dinov3_lvd1689m"]
    assert entry["license"] == "dinov3-license" and entry["num_classes"] == 0 and "imagenet" not in entry


SIGLIP_PAIR = "ViT-B-16-SigLIP2"
SMALL_TEXT = {"width": 64, "heads": 4, "layers": 2, "vocab_size": 64}
SMALL_IMAGE = {"img_size": 32, "depth": 2, "embed_dim": 64, "num_heads": 4}
WORDS = "a photo of the cat dog car".split()


def _small_pair(pretrained=False, create_clip=None):
    from visionzoo.factory import create_clip as real_create_clip
    from visionzoo.siglip_text import SigLipTextConfig

    return (create_clip or real_create_clip)(SIGLIP_PAIR, pretrained=pretrained, text_config=SigLipTextConfig(**SMALL_TEXT),
                       **SMALL_IMAGE).eval()


def _tokenizer_files(folder) -> dict[str, bytes]:
    """A tiny word-level tokenizer in Gemma's special-token layout (pad 0, eos 1), as the Hub repo ships one."""
    tokenizers = pytest.importorskip("tokenizers")
    vocab = {"<pad>": 0, "<eos>": 1, "<bos>": 2, "<unk>": 3, **{w: i + 4 for i, w in enumerate(WORDS)}}
    tokenizer = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    tokenizer.post_processor = tokenizers.processors.TemplateProcessing(single="$A <eos>",
                                                                        special_tokens=[("<eos>", 1)])
    tokenizer.save(str(folder / "tokenizer.json"))
    config = json.dumps({"pad_token": "<pad>", "eos_token": "<eos>", "padding_side": "right"}).encode()
    return {"tokenizer.json": (folder / "tokenizer.json").read_bytes(), "tokenizer_config.json": config}


@pytest.fixture
def siglip_cache(tmp_path):
    """The Hub repo timm/ViT-B-16-SigLIP2 in the HF cache: open_clip's file (image tower under
    `visual.trunk.`) of a small pair, and the tokenizer."""
    torch.manual_seed(0)
    pair = _small_pair()
    with torch.no_grad():
        pair.logit_bias.fill_(-2.5)
    state = {("visual.trunk." + k[len("visual."):] if k.startswith("visual.") else k): v
             for k, v in pair.state_dict().items()}
    cache_hub_repo(os.environ["HF_HUB_CACHE"], "timm/ViT-B-16-SigLIP2",
                {"open_clip_model.safetensors": _safetensors_bytes(state, tmp_path), **_tokenizer_files(tmp_path)})
    return pair


def test_siglip2_pair_resolves_by_catalog_name_offline(siglip_cache):
    images, tokens = torch.randn(2, 3, 32, 32), torch.randint(4, SMALL_TEXT["vocab_size"], (3, 64))
    with torch.no_grad():
        expected = siglip_cache(images, tokens)
    for pretrained in (True, "ViT-B-16-SigLIP2.webli", "hf-hub:timm/ViT-B-16-SigLIP2"):
        pair = _small_pair(pretrained)
        assert spec_of(pair).weights == (pretrained if isinstance(pretrained, str) and pretrained.startswith("hf-hub:")
                                         else "ViT-B-16-SigLIP2.webli")
        with torch.no_grad():
            torch.testing.assert_close(pair(images, tokens), expected, rtol=0, atol=0)
        config = visionzoo.data_config(pair)
        assert config["resize_mode"] == "squash" and config["mean"] == (0.5,) * 3


def test_siglip2_zero_shot_finds_the_tokenizer_in_the_catalogued_repo(siglip_cache, tmp_path, monkeypatch, capsys):
    import visionzoo.factory

    built, real_create_clip = [], visionzoo.factory.create_clip

    def small_create_clip(name, pretrained=False, **_):  # the small pair stands in for the full one
        built.append((name, pretrained))
        return _small_pair(pretrained, real_create_clip)

    monkeypatch.setattr(visionzoo.factory, "create_clip", small_create_clip)
    image = tmp_path / "image.png"
    Image.new("RGB", (40, 30), (20, 140, 90)).save(image)
    for pretrained in ("default", "ViT-B-16-SigLIP2.webli"):
        code = cli.main(["zero-shot", str(image), "--labels", "cat,dog,car", "--model", SIGLIP_PAIR,
                         "--pretrained", pretrained, "--template", "a photo of the {}", "--json"])
        captured = capsys.readouterr()
        assert code == 0, captured.err
        rows = json.loads(captured.out)
        assert len(rows) == 1 and len(rows[0]["top"]) == 3
        assert all(0.0 < t["probability"] < 1.0 for t in rows[0]["top"])
    assert built == [(SIGLIP_PAIR, True), (SIGLIP_PAIR, "ViT-B-16-SigLIP2.webli")]


def test_siglip2_pair_not_cached_says_where_to_put_it():
    from visionzoo.weights import WeightsNotAvailableError

    with pytest.raises(WeightsNotAvailableError, match="open_clip_model.safetensors.*timm/ViT-B-16-SigLIP2"):
        _small_pair(True)
