"""The smallest sensible input per family for the interface tests, and any overrides a
family needs to run at it (a window size that divides the feature map, say).

Keyed by family name; families not listed run at 64x64 with no overrides.
"""

from __future__ import annotations

from typing import Any

DEFAULT_SMALL_SIZE = 64

SMALL_INPUTS: dict[str, tuple[int, dict[str, Any]]] = {
}


def small_input(family: str) -> tuple[int, dict[str, Any]]:
    return SMALL_INPUTS.get(family, (DEFAULT_SMALL_SIZE, {}))
