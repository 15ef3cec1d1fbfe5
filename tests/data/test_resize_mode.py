"""Photos that are not square (issue 33): the resize modes' pixels, the same in PyTorch and in the
torch-free runtimes' preprocessing, carried from training to the saved model and the exported
file; rectangular input sizes for a convolutional net, and the error for a model that cannot."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

import visionzoo
from visionzoo.data.config import resolve_data_config
from visionzoo.data.resize import fill_colour, letterbox_box, resize_mode_of
from visionzoo.data.transforms import eval_transform, eval_view, train_transform
from visionzoo.deploy.runtimes import preprocess_image
from visionzoo.errors import SettingError

MEAN = (0.485, 0.456, 0.406)


def _photo(width: int, height: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(40, 220, (height, width, 3), dtype=np.uint8))


def _config(mode: str, size=(3, 16, 16)) -> dict:
    return resolve_data_config({"resize_mode": mode, "crop_pct": 0.875, "interpolation": "bicubic"}, input_size=size)


@pytest.mark.parametrize("width, height", [(40, 20), (20, 40)])
def test_letterbox_keeps_the_whole_photo_and_pads_with_the_mean_colour(width, height):
    view = eval_view(_config("letterbox"))(Image.new("RGB", (width, height), (200, 10, 10)))
    new_width, new_height, left, top = letterbox_box(width, height, 16, 16)
    assert (new_width, new_height) == ((16, 8) if width > height else (8, 16)) and (left, top) == (
        (0, 4) if width > height else (4, 0))
    inside = view[:, top:top + new_height, left:left + new_width]
    assert inside.tolist() == torch.tensor([200, 10, 10], dtype=torch.uint8).view(3, 1, 1).expand_as(inside).tolist()
    bars = torch.ones(16, 16, dtype=torch.bool)
    bars[top:top + new_height, left:left + new_width] = False
    assert tuple(view[:, 0, 0].tolist()) == fill_colour(MEAN) == (124, 116, 104)
    assert (view[:, bars] == torch.tensor(fill_colour(MEAN), dtype=torch.uint8)[:, None]).all()
    normalised = eval_transform(_config("letterbox"))(Image.new("RGB", (width, height), (200, 10, 10)))
    assert normalised[:, bars].abs().max() < 0.01  # the bars normalise to about zero


def test_squash_stretches_and_crop_cuts():
    photo = Image.new("RGB", (40, 20), (0, 0, 0))
    photo.paste((255, 255, 255), (0, 0, 5, 20))  # a white strip at the left edge
    squashed = eval_view(_config("squash"))(photo)
    cropped = eval_view(_config("crop"))(photo)
    assert squashed[0, 8, 0] > 200  # the strip is kept, squeezed
    assert cropped[0, 8, 0] < 50  # the centre crop cut it off


@pytest.mark.parametrize("mode", ["letterbox", "squash", "crop"])
@pytest.mark.parametrize("size", [(3, 16, 16), (3, 16, 24), (3, 24, 16)])
def test_pytorch_and_torch_free_preprocessing_give_the_same_pixels(mode, size):
    config = _config(mode, size)
    for photo in (_photo(50, 20), _photo(21, 47, seed=1), _photo(30, 30, seed=2)):
        pytorch = eval_transform(config)(photo)
        torch_free = torch.from_numpy(preprocess_image(photo, config))
        assert pytorch.shape == (3, *size[1:])
        torch.testing.assert_close(pytorch, torch_free, atol=1e-6, rtol=0)


def test_tensor_images_letterbox_like_photos():
    """Arrays in memory (generated data, caches) take torchvision's resize with the same geometry."""
    photo = Image.new("RGB", (40, 20), (30, 160, 90))
    tensor = torch.from_numpy(np.asarray(photo).copy()).permute(2, 0, 1)
    assert torch.equal(eval_view(_config("letterbox"))(tensor), eval_view(_config("letterbox"))(photo))


@pytest.mark.parametrize("preset", ["none", "crop", "light", "strong"])
def test_every_augmentation_preset_gives_the_asked_shape(preset):
    image = train_transform(_config("letterbox"), preset, (16, 24))(_photo(37, 80))
    assert image.shape == (3, 16, 24) and image.dtype == torch.float32


def test_weights_that_say_squash_resolve_to_squash_unless_told():
    assert resize_mode_of(resolve_data_config({"crop_mode": "squash"})) == "squash"
    assert resize_mode_of(resolve_data_config({"crop_mode": "squash"}, {"resize_mode": "letterbox"})) == "letterbox"
    assert resize_mode_of(resolve_data_config()) == "crop"
    # a config resolved once (crop by default) then given weights that squash: squash
    assert resize_mode_of(resolve_data_config(resolve_data_config(), {"crop_mode": "squash"})) == "squash"
    with pytest.raises(SettingError, match="unknown resize mode 'pad'"):
        resolve_data_config({"resize_mode": "pad"})


def test_letterbox_predict_in_pytorch_equals_the_onnx_predictor(tmp_path):
    pytest.importorskip("onnxruntime")
    from visionzoo.deploy.export import export_model
    from visionzoo.deploy.runtimes import OnnxClassifier, onnx_metadata
    from visionzoo.factory import transforms

    torch.manual_seed(0)
    model = visionzoo.create_model("resnet18", num_classes=3).eval()
    # as a model trained at 32 px: its spec's preprocessing; the export records the mode asked for
    visionzoo.with_spec(model, class_names=["a", "b", "c"],
                        data_config={**visionzoo.data_config(model), "input_size": (3, 32, 32)})
    assert resize_mode_of(visionzoo.data_config(model)) == "crop"
    export_model(model, tmp_path / "m.onnx", resize_mode="letterbox", verify=False)
    assert visionzoo.data_config(model)["resize_mode"] == "letterbox"  # recorded on the model it exported
    assert json.loads(onnx_metadata(tmp_path / "m.onnx")["visionzoo.preprocessing"])["resize_mode"] == "letterbox"
    classifier = OnnxClassifier(tmp_path / "m.onnx")
    paths = []
    for i, (width, height) in enumerate([(64, 24), (20, 50)]):
        _photo(width, height, seed=i).save(tmp_path / f"{i}.png")
        paths.append(str(tmp_path / f"{i}.png"))
    from visionzoo.data.decode import decode_image

    for path in paths:  # the pixels each side feeds its network
        pytorch = transforms(model)(decode_image(path))
        torch_free = torch.from_numpy(preprocess_image(decode_image(path), classifier.preprocessing))
        assert pytorch.shape == (3, 32, 32)
        torch.testing.assert_close(pytorch, torch_free, atol=1e-6, rtol=0)
    by_pytorch = visionzoo.predict(model, paths, topk=3)
    by_onnx = classifier.predict_files(paths, topk=3)
    for ours, theirs in zip(by_pytorch, by_onnx):
        assert [p["index"] for p in ours["predictions"]] == [p["index"] for p in theirs["predictions"]]
        assert [p["prob"] for p in ours["predictions"]] == pytest.approx([p["prob"] for p in theirs["predictions"]],
                                                                         abs=1e-5)
    # the server, on the exported file and on the PyTorch model, prepares the same pixels
    from visionzoo.serve.classifier import load_classifier

    served_file, served_model = load_classifier(str(tmp_path / "m.onnx")), load_classifier(model)
    for served in (served_file, served_model):
        assert served.card["preprocessing"]["resize_mode"] == "letterbox"
        np.testing.assert_allclose(served.prepare(decode_image(paths[0])),
                                   transforms(model)(decode_image(paths[0])).numpy(), atol=1e-6, rtol=0)
    overridden = load_classifier(str(tmp_path / "m.onnx"), resize_mode="squash")
    assert overridden.card["preprocessing"]["resize_mode"] == "squash"
    # the mode travelled with the file: crop would have seen other pixels
    cropped = torch.from_numpy(preprocess_image(decode_image(paths[0]), {**classifier.preprocessing,
                                                                        "resize_mode": "crop"}))
    assert not torch.allclose(cropped, transforms(model)(decode_image(paths[0])))


def _photo_folders(root, sizes=((48, 20), (20, 44), (36, 30))):
    colours = {"red": (220, 30, 30), "blue": (30, 30, 220)}
    rng = np.random.default_rng(0)
    for name, colour in colours.items():
        for split, count in (("train", 6), ("val", 2)):
            (root / split / name).mkdir(parents=True)
            for i in range(count):
                width, height = sizes[i % len(sizes)]
                pixels = np.clip(np.array(colour) + rng.normal(0, 20, (height, width, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(root / split / name / f"{i}.png")
    return root


def test_a_letterbox_run_on_a_rectangular_size_keeps_both_in_the_saved_model(tmp_path, one_thread, capsys):
    from visionzoo.cli import main

    data = _photo_folders(tmp_path / "photos")
    assert main(["train", "resnet18", "--data", str(data), "--epochs", "1", "--batch-size", "4", "--workers", "0",
                 "--image-size", "16", "24", "--resize-mode", "letterbox", "--out", str(tmp_path / "run"),
                 "--no-progress", "--no-calibrate", "--no-reject"]) == 0
    assert "16x24px" in capsys.readouterr().err
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["data_config"]["resize_mode"] == "letterbox" and config["data_config"]["input_size"] == [3, 16, 24]
    model = visionzoo.load_model(tmp_path / "run" / "best")
    saved = visionzoo.data_config(model)
    assert saved["resize_mode"] == "letterbox" and tuple(saved["input_size"]) == (3, 16, 24)
    photo = str(data / "val" / "red" / "0.png")
    assert main(["predict", str(tmp_path / "run" / "best"), photo, "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert rows[0]["predictions"][0]["label"] in ("red", "blue")
    # and an override at prediction: another mode, the same shape of answer
    assert main(["predict", str(tmp_path / "run" / "best"), photo, "--json", "--resize-mode", "squash"]) == 0


def test_a_model_that_cannot_take_a_rectangle_says_so(tmp_path):
    with pytest.raises(SettingError, match=r"cannot run on 64x96 images: the swin family is built for square inputs"):
        visionzoo.train("swin_tiny_patch4_window7_224", "builtin:shapes?size=16&train=8&val=4", image_size=(64, 96),
                        out=tmp_path / "run", epochs=1, progress=False)
    assert not (tmp_path / "run").exists()  # before any work


@pytest.mark.parametrize("command", [["train", "resnet18", "--data", "d"], ["eval", "m", "--data", "d"],
                                     ["predict", "m", "x.jpg"], ["export", "m"], ["serve", "m"]])
def test_every_command_takes_the_resize_mode(command):
    from visionzoo.cli import build_parser

    parser = build_parser()
    assert parser.parse_args([*command, "--resize-mode", "letterbox"]).resize_mode == "letterbox"
    with pytest.raises(SystemExit):
        parser.parse_args([*command, "--resize-mode", "pad"])
