"""The complexity table shipped with the package (src/visionzoo/factory/complexity.json): complete,
current, in agreement with a fresh measurement, and the measured path still taken where a row is stale."""

from __future__ import annotations

import pytest

import visionzoo.factory.build as build
from visionzoo.factory import measure_complexity, model_complexity
from visionzoo.factory.complexity import complexity_key, shipped_complexity, shipped_table
from visionzoo.registry import get_card, list_models

REGENERATE = "run .venv/bin/python tools/make_complexity.py and commit src/visionzoo/factory/complexity.json"


def test_every_registered_model_has_a_current_row():
    table = shipped_table()
    missing = [name for name in list_models() if name not in table]
    stale = [name for name in list_models() if name in table and table[name]["key"] != complexity_key(get_card(name))]
    unknown = sorted(set(table) - set(list_models()))
    assert not missing, f"no complexity row for {missing}; {REGENERATE}"
    assert not stale, f"complexity rows measured from other code or cards: {stale}; {REGENERATE}"
    assert not unknown, f"complexity rows for models no longer registered: {unknown}; {REGENERATE}"


# Small variants of families built from different blocks (bottleneck convs, inverted residuals with
# squeeze-excite, ConvNeXt blocks, attention, windowed attention, reparameterizable branches).
SPOT_CHECKED = ["resnet18", "mobilenetv3_small_100", "efficientnet_lite0", "convnext_atto", "vit_tiny_patch16_224",
                "efficientvit_m0", "repvit_m0_9"]


@pytest.mark.parametrize("name", SPOT_CHECKED)
def test_shipped_rows_agree_with_a_fresh_measurement(name):
    assert shipped_complexity(get_card(name)) == measure_complexity(name)


def test_shipped_rows_are_read_without_measuring(monkeypatch):
    def measure(name):
        raise AssertionError(f"{name} measured although its row is current")

    monkeypatch.setattr(build, "measure_complexity", measure)
    assert model_complexity("resnet50") == {"params": 25_557_032, "gmacs": pytest.approx(4.1, abs=0.05)}


def test_a_stale_row_is_measured_instead(monkeypatch, tmp_path):
    monkeypatch.setenv("VISIONZOO_CACHE", str(tmp_path))
    table = {**shipped_table(), "resnet18": {"params": 1, "gmacs": 1.0, "key": "measured-from-older-code"}}
    monkeypatch.setattr("visionzoo.factory.complexity.shipped_table", lambda: table)
    assert shipped_complexity(get_card("resnet18")) is None
    assert model_complexity("resnet18")["params"] == 11_689_512  # torchvision's and timm's ResNet-18
