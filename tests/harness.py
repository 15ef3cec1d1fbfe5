"""The parity harness every family uses: our model against its reference implementation.

The reference named on the model card ("timm:NAME" or "torchvision:NAME") is built with
random weights; its state_dict is loaded into ours with strict=True, and both run in eval
mode on the same random input. Outputs must agree to 1e-4 of the reference's largest
magnitude. Models above NUMERIC_PARAM_LIMIT are compared by state_dict keys and shapes
on the meta device instead (numeric runs of them would not fit the suite's time budget).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

import visionzoo
from visionzoo.registry import get_card

NUMERIC_PARAM_LIMIT = 100_000_000
RELATIVE_TOLERANCE = 1e-4

# Keyword arguments the reference needs to be the same network as ours (and nothing else).
REFERENCE_KWARGS: dict[str, dict[str, Any]] = {
    "torchvision:googlenet": {"aux_logits": True, "init_weights": True},
    "torchvision:inception_v3": {"aux_logits": True, "init_weights": True},
}


# Numeric parity at a smaller input than the default, for convolutional models whose default
# resolution makes a CPU forward slow: a CNN computes the same function at any size.
PARITY_INPUT_SIZE: dict[str, int] = {
}


def reference_model(name: str, **kwargs: Any) -> nn.Module:
    card = get_card(name)
    library, ref_name = card.reference_library, card.reference_name
    kwargs = {**REFERENCE_KWARGS.get(card.reference, {}), **kwargs}
    if library == "timm":
        import timm

        return timm.create_model(ref_name, pretrained=False, **kwargs)
    if library == "torchvision":
        import torchvision.models

        return torchvision.models.get_model(ref_name, weights=None, **kwargs)
    raise ValueError(f"no reference builder for library '{library}' (model '{name}')")


def max_relative_difference(ours: torch.Tensor, reference: torch.Tensor) -> float:
    scale = reference.abs().max().clamp_min(1e-12)
    return float((ours - reference).abs().max() / scale)


def check_numeric_parity(name: str, *, batch: int = 2, input_size: tuple[int, int, int] | None = None,
                         ours_kwargs: dict | None = None, ref_kwargs: dict | None = None) -> float:
    torch.manual_seed(0)
    reference = reference_model(name, **(ref_kwargs or {})).eval()
    ours = visionzoo.create_model(name, **(ours_kwargs or {})).eval()
    ours.load_state_dict(reference.state_dict(), strict=True)
    size = input_size or get_card(name).input_size
    if input_size is None and name in PARITY_INPUT_SIZE:
        size = (size[0], PARITY_INPUT_SIZE[name], PARITY_INPUT_SIZE[name])
    x = torch.randn(batch, *size)
    with torch.no_grad():
        expected = reference(x)
        actual = ours(x)
    assert actual.shape == expected.shape, f"{name}: output shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    difference = max_relative_difference(actual, expected)
    assert difference <= RELATIVE_TOLERANCE, f"{name}: max |diff| / max |ref| = {difference:.2e}"
    return difference


def check_structure_parity(name: str, **kwargs: Any) -> None:
    with torch.device("meta"):
        reference = reference_model(name, **kwargs)
        ours = visionzoo.create_model(name, **kwargs)
    expected = {k: tuple(v.shape) for k, v in reference.state_dict().items()}
    actual = {k: tuple(v.shape) for k, v in ours.state_dict().items()}
    missing = sorted(set(expected) - set(actual))
    unexpected = sorted(set(actual) - set(expected))
    assert not missing and not unexpected, (
        f"{name}: missing {len(missing)} keys {missing[:5]}, unexpected {len(unexpected)} {unexpected[:5]}")
    mismatched = {k: (actual[k], expected[k]) for k in expected if actual[k] != expected[k]}
    assert not mismatched, f"{name}: {len(mismatched)} shape mismatches, e.g. {list(mismatched.items())[:5]}"
    # meta state_dicts load with strict=True exactly when keys and shapes agree
    ours.load_state_dict(reference.state_dict(), strict=True)


def parameter_count(name: str) -> int:
    return visionzoo.model_info(name)["params"]
