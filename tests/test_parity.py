"""Every registered variant against its reference implementation (see harness.py)."""

from __future__ import annotations

import pytest

import visionzoo
from harness import NUMERIC_PARAM_LIMIT, check_numeric_parity, check_structure_parity, parameter_count

ALL_MODELS = visionzoo.list_models()


@pytest.mark.parametrize("name", ALL_MODELS)
def test_structure_matches_reference(name):
    check_structure_parity(name)


@pytest.mark.parametrize("name", [n for n in ALL_MODELS if parameter_count(n) <= NUMERIC_PARAM_LIMIT])
def test_outputs_match_reference(name):
    check_numeric_parity(name)


@pytest.mark.parametrize("name", ALL_MODELS)
def test_parameter_count_matches_reference(name):
    import torch

    from harness import reference_model

    with torch.device("meta"):
        reference = reference_model(name)
    assert parameter_count(name) == sum(p.numel() for p in reference.parameters())
