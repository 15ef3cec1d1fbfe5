"""The smallest sensible input per family for the interface tests, and any overrides a
family needs to run at it (a window size that divides the feature map, say).

Keyed by family name; families not listed run at 64x64 with no overrides.
"""

from __future__ import annotations

from typing import Any

DEFAULT_SMALL_SIZE = 64

SMALL_INPUTS: dict[str, tuple[int, dict[str, Any]]] = {
    "eva02": (56, {"img_size": 56}),  # fixed-size position table: build at the test size (4x4 patches of 14)
    # ViTs: fixed-size position table, built at the test size (4x4 patches of 16, 2x2 of 32; 4x4 of 14)
    "vit": (64, {"img_size": 64}),
    "deit": (64, {"img_size": 64}),
    "clip": (64, {"img_size": 64}),
    "dinov2": (56, {"img_size": 56}),
    "siglip2": (64, {"img_size": 64}),
    # attention windows and their bias tables are built for img_size: build at the test size
    "efficientvit_msra": (64, {"img_size": 64}),
    # Swin: masks are built for img_size; 4x4 windows tile the 16x16 and 8x8 maps, and shrink to the 4x4 / 2x2 ones
    "swin": (64, {"img_size": 64, "window_size": 4}),
    # MaxViT: window and grid are img_size / 32 = 2, which divides every stage map (16, 8, 4, 2)
    "maxvit": (64, {"img_size": 64}),
    # Inception v3's unpadded stem and grid reductions leave no map below 75 px (1x1 at Mixed_7a)
    "inception_v3": (75, {}),
    # DenseNet: 32 px (a 1x1 last map) keeps the 120-200 layer networks' backward pass quick
    "densenet": (32, {}),
}


def small_input(family: str) -> tuple[int, dict[str, Any]]:
    return SMALL_INPUTS.get(family, (DEFAULT_SMALL_SIZE, {}))
