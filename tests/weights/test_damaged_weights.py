"""Issue 28: a weight file that is damaged, or that does not fit the model, is the user's to fix: a
one-line usage error naming the file and what is wrong, never "this is a bug in visionzoo"."""

from __future__ import annotations

import json
import struct
import subprocess
import sys

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

import visionzoo
from visionzoo.errors import UsageError
from visionzoo.weights import DamagedWeightsError, WeightsMismatchError

NAME = "resnet18"


@pytest.fixture(autouse=True)
def offline(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("VISIONZOO_CACHE", str(tmp_path / "vz-cache"))


@pytest.fixture(scope="module")
def state_dict() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return {k: v.contiguous() for k, v in visionzoo.create_model(NAME).state_dict().items()}


def _saved(state: dict[str, torch.Tensor], path) -> bytes:
    save_file(state, str(path))
    return path.read_bytes()


def _split(raw: bytes) -> tuple[dict, bytes]:
    """(header, data) of a safetensors file: an 8-byte little-endian length, the JSON header, the data."""
    length = struct.unpack("<Q", raw[:8])[0]
    return json.loads(raw[8:8 + length]), raw[8 + length:]


def _joined(header: dict, data: bytes) -> bytes:
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + data


def _refused(path, error_type: type[Exception]) -> str:
    with pytest.raises(error_type) as info:
        visionzoo.create_model(NAME, pretrained=str(path))
    message = str(info.value)
    assert isinstance(info.value, UsageError) and isinstance(info.value, ValueError)
    assert str(path) in message and "\n" not in message
    return message


def test_a_header_that_is_not_json(tmp_path, state_dict):
    _, data = _split(_saved(state_dict, tmp_path / "good.safetensors"))
    path = tmp_path / "bad_header.safetensors"
    path.write_bytes(struct.pack("<Q", 16) + b"{not json at all" + data)
    assert "its header is not valid JSON" in _refused(path, DamagedWeightsError)


def test_a_header_length_beyond_the_file(tmp_path, state_dict):
    raw = _saved(state_dict, tmp_path / "good.safetensors")
    path = tmp_path / "long_header.safetensors"
    path.write_bytes(struct.pack("<Q", 10**12) + raw[8:])
    assert "its header claims 1,000,000,000,000 bytes" in _refused(path, DamagedWeightsError)
    path.write_bytes(b"abc")  # shorter than the header's length field
    assert "3 bytes long, too short for a safetensors header" in _refused(path, DamagedWeightsError)


def test_a_truncated_file(tmp_path, state_dict):
    raw = _saved(state_dict, tmp_path / "good.safetensors")
    path = tmp_path / "truncated.safetensors"
    path.write_bytes(raw[: len(raw) // 2])
    assert "(truncated)" in _refused(path, DamagedWeightsError)


def test_offsets_that_disagree_with_the_shape(tmp_path, state_dict):
    header, data = _split(_saved(state_dict, tmp_path / "good.safetensors"))
    header["fc.bias"]["shape"] = [999]  # 999 float32 values where the offsets hold 1000
    path = tmp_path / "bad_offsets.safetensors"
    path.write_bytes(_joined(header, data))
    message = _refused(path, DamagedWeightsError)
    assert "tensor 'fc.bias' of shape (999,) and dtype F32 needs 3,996 bytes" in message
    assert "give 4,000" in message


def test_wrong_shapes(tmp_path, state_dict):
    path = tmp_path / "wrong_shape.safetensors"
    _saved({**state_dict, "layer1.0.conv1.weight": torch.zeros(64, 64, 1, 1)}, path)
    assert "1 shape-mismatched (layer1.0.conv1.weight: checkpoint (64, 64, 1, 1) vs model (64, 64, 3, 3))" \
        in _refused(path, WeightsMismatchError)


def test_missing_and_extra_keys(tmp_path, state_dict):
    path = tmp_path / "missing.safetensors"
    _saved({k: v for k, v in state_dict.items() if k != "layer2.0.bn1.weight"}, path)
    assert "1 missing (layer2.0.bn1.weight)" in _refused(path, WeightsMismatchError)
    path = tmp_path / "extra.safetensors"
    _saved({**state_dict, "projection.weight": torch.zeros(3, 3)}, path)
    assert "1 unexpected (projection.weight)" in _refused(path, WeightsMismatchError)


def test_a_truncated_pickle_based_checkpoint(tmp_path, state_dict):
    path = tmp_path / "truncated.pth"
    torch.save(state_dict, path)
    path.write_bytes(path.read_bytes()[:4096])
    assert "damaged or truncated" in _refused(path, DamagedWeightsError)


def test_the_cli_prints_one_line_and_no_traceback(tmp_path, state_dict):
    from PIL import Image

    raw = _saved(state_dict, tmp_path / "good.safetensors")
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(raw[: len(raw) // 3])
    image = tmp_path / "photo.png"
    Image.fromarray(np.full((32, 32, 3), 128, np.uint8)).save(image)
    result = subprocess.run([sys.executable, "-m", "visionzoo.cli", "predict", NAME, str(image), "--pretrained",
                             str(broken)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr and "this is a bug" not in result.stderr
    [line] = result.stderr.strip().splitlines()
    assert str(broken) in line and "truncated" in line
