"""Parameter counts and multiply-accumulates, measured rather than typed in.

Both are computed on the `meta` device, so even the largest variants cost no memory
and little time. Results are cached on disk (keyed by a fingerprint of the package's
model code and the variant's config), so `visionzoo list` is instant after its first run.
"""

from __future__ import annotations

import hashlib
import json
import os
from functools import lru_cache
from pathlib import Path

import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode

__all__ = ["count_params", "count_gmacs", "model_complexity"]


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_gmacs(model: nn.Module, input_size: tuple[int, int, int]) -> float:
    """Multiply-accumulates of one forward pass on one image, in billions.

    FlopCounterMode counts a multiply-accumulate as two floating-point operations.
    """
    device = next(model.parameters()).device
    x = torch.zeros((1, *input_size), device=device)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(x)
    finally:
        model.train(was_training)
    return counter.get_total_flops() / 2 / 1e9


def _cache_dir() -> Path:
    root = os.environ.get("VISIONZOO_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "visionzoo")
    return Path(root)


@lru_cache(maxsize=1)
def _code_fingerprint() -> str:
    """Hash of the source that decides a model's shape: any edit invalidates the cache."""
    package = Path(__file__).parent
    digest = hashlib.sha256()
    for path in sorted([*package.glob("models/*.py"), *package.glob("layers/*.py"), package / "registry.py"]):
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def model_complexity(name: str) -> dict[str, float | int]:
    """`{"params": int, "gmacs": float}` for a registered variant at its default input size."""
    from visionzoo.registry import create_model, get_card

    card = get_card(name)
    key = hashlib.sha256(f"{_code_fingerprint()}|{torch.__version__}|{card.name}|{card.config!r}|"
                         f"{card.input_size}|{card.num_classes}".encode()).hexdigest()[:24]
    cache_file = _cache_dir() / "complexity" / f"{card.name}-{key}.json"
    try:
        return json.loads(cache_file.read_text())
    except (OSError, ValueError):
        pass
    with torch.device("meta"):
        model = create_model(name)
    result = {"params": count_params(model), "gmacs": round(count_gmacs(model, card.input_size), 4)}
    try:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache_file.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(result))
        tmp.replace(cache_file)
    except OSError:
        pass  # a read-only home still gets correct, merely uncached, answers
    return result
