"""Every size a model can run at trains: the ViT-style families are built for the run's image size
(`factory.size_overrides`), weights published at the default size are resampled to it (position
embeddings, relative-position tables, per-offset attention biases), and a size a model cannot run at
is a one-line error before any work."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

import visionzoo
from visionzoo.errors import SettingError
from visionzoo.factory import size_overrides
from visionzoo.layers.pos_embed import resample_abs_pos_embed
from visionzoo.registry import get_card

# Tiny runs: no calibration, unknowns, plots or logs; what is tested is that the model is built and trained
# at the size asked for.
QUIET = {"workers": 0, "plots": False, "tensorboard": False, "progress": False, "calibrate": False, "reject": False}


def _photos(root: Path, train: int = 2, val: int = 1, side: int = 40) -> Path:
    """root/train/CLASS and root/val/CLASS of two colour classes, `side` px."""
    rng = np.random.default_rng(0)
    for split, count in (("train", train), ("val", val)):
        for label, name in enumerate(("cat", "dog")):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                pixels = (rng.random((side, side, 3)) * 80).astype(np.uint8)
                pixels[..., label] += 150
                Image.fromarray(pixels).save(folder / f"{i}.png")
    return root


def _default_size_weights(tmp_path: Path, name: str) -> Path:
    """Random weights of `name` at its default size and 1000 classes: how published weights come."""
    torch.manual_seed(0)
    path = tmp_path / f"{name}.safetensors"
    save_file(visionzoo.create_model(name).state_dict(), path)
    return path


# The smallest variant of each family whose structure depends on the input size, at a size it does not
# default to (patch-14 models at 28 px: a 2x2 grid of patches).
SMALL_RUNS = [
    ("vit_tiny_patch16_224", 32),
    ("deit_tiny_patch16_224", 32),
    ("deit_tiny_distilled_patch16_224", 32),  # two heads in training mode: both learn the labels
    ("swin_tiny_patch4_window7_224", 32),
    ("maxvit_tiny_tf_224", 32),
    ("eva02_tiny_patch14_224", 28),
    ("vit_small_patch14_reg4_dinov2", 28),
]


@pytest.mark.parametrize("name, size", SMALL_RUNS, ids=[name for name, _ in SMALL_RUNS])
def test_every_vit_style_family_trains_an_epoch_at_a_size_it_does_not_default_to(tmp_path, one_thread, name, size):
    data = _photos(tmp_path / "photos")
    result = visionzoo.train(name, data, out=tmp_path / "run", epochs=1, batch_size=4, image_size=size, **QUIET)
    assert result.best_metric is not None and len(result.history) == 1
    # the saved model is rebuilt at the size it was trained at, and runs there
    model = visionzoo.load_model(tmp_path / "run" / "last")
    assert tuple(visionzoo.data_config(model)["input_size"]) == (3, size, size)
    with torch.no_grad():
        assert model.eval()(torch.zeros(1, 3, size, size)).shape == (1, 2)


def test_weights_saved_at_the_default_size_are_resampled_for_a_run_at_another(tmp_path, one_thread):
    data, weights = _photos(tmp_path / "photos"), _default_size_weights(tmp_path, "vit_tiny_patch16_224")
    # lr 0: what last/ holds is what the model started from
    visionzoo.train("vit_tiny_patch16_224", data, pretrained=str(weights), out=tmp_path / "run", recipe="finetune",
                    epochs=1, batch_size=4, lr=0.0, image_size=32, **QUIET)
    trained = load_file(tmp_path / "run" / "last" / "model.safetensors")
    published = load_file(weights)
    assert published["pos_embed"].shape == (1, 1 + 14 * 14, 192) and trained["pos_embed"].shape == (1, 1 + 2 * 2, 192)
    torch.testing.assert_close(trained["pos_embed"], resample_abs_pos_embed(published["pos_embed"], (2, 2)))
    torch.testing.assert_close(trained["blocks.0.attn.qkv.weight"], published["blocks.0.attn.qkv.weight"])


@pytest.mark.parametrize("name, size, key", [
    ("deit_tiny_distilled_patch16_224", 48, "pos_embed"),  # two prefix tokens (class, distillation)
    # at 32 px the third stage's map is 2x2, and its 7x7 windows shrink to it
    ("swin_tiny_patch4_window7_224", 32, "layers.2.blocks.0.attn.relative_position_bias_table"),
    ("efficientvit_m0", 64, "stages.0.blocks.0.mixer.m.attn.attention_biases"),
])
def test_position_tables_of_default_size_weights_fit_a_model_built_for_another_size(tmp_path, one_thread, name,
                                                                                    size, key):
    weights = _default_size_weights(tmp_path, name)
    model = visionzoo.create_model(name, num_classes=2, pretrained=str(weights), **size_overrides(get_card(name), size))
    published, fitted = load_file(weights)[key], model.state_dict()[key]
    assert fitted.shape != published.shape
    with torch.no_grad():
        assert model.eval()(torch.zeros(1, 3, size, size)).shape == (1, 2)


def test_efficientvit_m_keeps_the_offsets_a_smaller_window_still_has(tmp_path, one_thread):
    weights = _default_size_weights(tmp_path, "efficientvit_m0")
    key = "stages.0.blocks.0.mixer.m.attn.attention_biases"
    # at 64 px the first stage's map is 4x4, so its window shrinks from 7x7 to 4x4 tokens
    model = visionzoo.create_model("efficientvit_m0", pretrained=str(weights), img_size=64)
    published = load_file(weights)[key].reshape(-1, 7, 7)  # (heads, |dy|, |dx|)
    torch.testing.assert_close(model.state_dict()[key], published[:, :4, :4].reshape(-1, 16))


@pytest.mark.parametrize("name, size, says", [
    ("maxvit_tiny_tf_224", 48, r"cannot run on 48 px images: MaxViT needs img_size to be a positive multiple of 32"
                               r".*try 64"),
    ("inception_v3", 64, r"cannot run on 64 px images: its feature maps shrink below its kernels; use 75 px or more"),
    ("vit_base_patch32_224", 16, r"cannot run on 16 px images: img_size \(16, 16\) is smaller than patch_size"),
])
def test_a_size_a_model_cannot_run_at_is_one_line_before_any_work(tmp_path, capsys, name, size, says):
    from visionzoo.cli import main

    data = _photos(tmp_path / "photos")
    with pytest.raises(SettingError, match=says):
        size_overrides(get_card(name), size)
    with pytest.raises(SettingError, match=says):
        visionzoo.train(name, data, out=tmp_path / "run", epochs=1, image_size=size, **QUIET)
    assert not (tmp_path / "run").exists()  # no run folder, no model built, no banner
    assert main(["train", "--model", name, "--data", str(data), "--image-size", str(size), "--epochs", "1",
                 "--out", str(tmp_path / "cli"), "--no-progress"]) == 2
    out, err = capsys.readouterr()
    assert "training" not in out and len(err.strip().splitlines()) == 1 and f"{size} px" in err
    assert not (tmp_path / "cli").exists()


def test_the_default_size_and_sizes_of_cnns_need_no_override():
    assert size_overrides(get_card("vit_tiny_patch16_224"), 224) == {}
    assert size_overrides(get_card("resnet18"), 32) == {}
    assert size_overrides(get_card("swin_tiny_patch4_window7_224"), 64) == {"img_size": 64}
