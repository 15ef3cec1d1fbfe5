"""The parameter count and multiply-accumulates of every registered variant, shipped with the package.

Measuring all of them on the `meta` device costs about half a CPU-minute (the FLOP counter traces each
forward), which `visionzoo list` and `advise` would pay on every fresh install and every edit of the
model code. So `complexity.json` beside this file holds the figures, written by

    .venv/bin/python tools/make_complexity.py

Each row carries the key of what decided it: the variant's card (config, builder defaults, input
size, classes) and the source of its family's module and of the models/ and layers/ modules it uses. A row whose key no longer
matches is not used (`visionzoo.factory.model_complexity` measures instead), and
tests/test_complexity.py fails until the table is regenerated, so it cannot go stale silently.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import sys
from functools import cache, lru_cache
from pathlib import Path

from visionzoo.registry import ModelCard

__all__ = ["SHIPPED_COMPLEXITY", "complexity_key", "shipped_complexity", "shipped_table"]

SHIPPED_COMPLEXITY = Path(__file__).with_name("complexity.json")
_BUILDING_PACKAGES = ("visionzoo.models", "visionzoo.layers")


@cache
def _source_digest(module_name: str) -> str:
    """Hash of a family's module and of every module of models/ and layers/ it builds from, followed
    through their imports: an edit elsewhere (another family, a layer it does not use) keeps its rows."""
    seen, pending = set(), [module_name]
    while pending:
        name = pending.pop()
        if name in seen or name not in sys.modules:
            continue
        seen.add(name)
        for value in vars(sys.modules[name]).values():
            used = value.__name__ if inspect.ismodule(value) else getattr(value, "__module__", None)
            if isinstance(used, str) and any(used == p or used.startswith(p + ".") for p in _BUILDING_PACKAGES):
                pending.append(used)
    digest = hashlib.sha256()
    for name in sorted(seen):
        digest.update(name.encode() + b"\0" + Path(inspect.getfile(sys.modules[name])).read_bytes())
    return digest.hexdigest()


def complexity_key(card: ModelCard) -> str:
    """What a variant's figures depend on, hashed: its card's facts and the source that builds it."""
    # The builder may be another family's network (EfficientNetV2 builds on EfficientNet's class), so the
    # module of the card's config, where such a family keeps its own blocks, is hashed too.
    modules = sorted({card.builder.__module__, type(card.config).__module__} - {"builtins"})
    facts = (f"{card.name}|{card.config!r}|{sorted(card.defaults.items())!r}|{tuple(card.input_size)}|"
             f"{card.num_classes}|{'|'.join(_source_digest(m) for m in modules)}")
    return hashlib.sha256(facts.encode()).hexdigest()[:24]


@lru_cache(maxsize=1)
def shipped_table() -> dict[str, dict]:
    """The rows of complexity.json by variant name (none when the file is absent)."""
    try:
        return json.loads(SHIPPED_COMPLEXITY.read_text())["models"]
    except (OSError, ValueError, KeyError):
        return {}


def shipped_complexity(card: ModelCard) -> dict[str, float | int] | None:
    """`{"params", "gmacs"}` of `card`'s variant from the shipped table, or None where the table has no
    row for it or its row was measured from other code or another card."""
    row = shipped_table().get(card.name)
    if row is None or row.get("key") != complexity_key(card):
        return None
    return {"params": int(row["params"]), "gmacs": float(row["gmacs"])}
