"""The parity harness every family uses: our model against its reference implementation.

The reference named on the model card ("timm:NAME" or "torchvision:NAME") is built with
random weights; its state_dict is loaded into ours with strict=True, and both run in eval
mode on the same random input. Tensors that are constant at initialisation (biases, norm
weights, BN statistics, layer scales) are first given random spread, so that no branch of the
network hides behind a zero or an identity (`perturb_constant_tensors`). Outputs must agree to 1e-4 of the reference's largest
magnitude. Models above NUMERIC_PARAM_LIMIT are compared by state_dict keys and shapes
on the meta device instead (numeric runs of them would not fit the suite's time budget).
"""

from __future__ import annotations

import functools
import os
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
    # EfficientNet B1-B7 and Lite1-4 (240-600 px by default). An even size keeps every map even, where
    # the tf_ variants' TensorFlow "SAME" padding of strided convolutions is asymmetric.
    **{f"{prefix}_{scale}": 128 for prefix in ("efficientnet", "tf_efficientnet")
       for scale in ("b1", "b2", "b3", "b4", "b5", "b6", "b7", "lite1", "lite2", "lite3", "lite4")},
    # the deeper DenseNets (densenet121 stays at 224 px) and Inception v3 (299 px by default)
    "densenet161": 128, "densenet169": 128, "densenet201": 128, "inception_v3": 139,
    # the larger ConvNeXts (convnext_tiny and smaller stay at 224 px)
    "convnext_small": 128, "convnext_base": 128, "convnextv2_base": 128,
    # EfficientNetV2 and MobileNetV4 above 240 px by default
    **{name: 128 for name in ("efficientnetv2_s", "efficientnetv2_m", "tf_efficientnetv2_s", "tf_efficientnetv2_m",
                              "tf_efficientnetv2_b1", "tf_efficientnetv2_b2", "tf_efficientnetv2_b3",
                              "mobilenetv4_conv_medium", "mobilenetv4_conv_large", "mobilenetv4_hybrid_medium",
                              "mobilenetv4_hybrid_large")},
    # FastViT (256 px by default) and MobileOne, whose unfused training branches (S0: six per block) make a
    # full-size CPU forward slow; 128 px keeps FastViT's attention stage at 4x4 tokens
    **{name: 128 for name in ("fastvit_t8", "fastvit_t12", "fastvit_s12", "fastvit_sa12", "mobileone_s0",
                              "mobileone_s1", "mobileone_s2", "mobileone_s3", "mobileone_s4")},
}

# Overrides applied to both the reference and ours for numeric parity (and the input follows
# `img_size`), for transformers whose default resolution makes a CPU forward slow: the weights
# are the same at any `img_size` except the position table, so a smaller grid checks the same
# function. EVA-02 at 112 px also exercises its rope rescaling (8x8 grid onto the 16x16 reference).
PARITY_OVERRIDES: dict[str, dict[str, Any]] = {
    "eva02_small_patch14_224": {"img_size": 112},
    "eva02_base_patch14_224": {"img_size": 112},
    "eva02_tiny_patch14_336": {"img_size": 112},
    "eva02_small_patch14_336": {"img_size": 112},
    "eva02_base_patch14_448": {"img_size": 112},
    # DINOv2 at 518 px (1370 tokens) takes about a minute per model on CPU; 224 px is a 16x16 grid
    "vit_small_patch14_dinov2": {"img_size": 224},
    "vit_base_patch14_dinov2": {"img_size": 224},
    "vit_small_patch14_reg4_dinov2": {"img_size": 224},
    "vit_base_patch14_reg4_dinov2": {"img_size": 224},
    # Swin and MaxViT (swin_tiny and maxvit_tiny stay at their default size); the window bias
    # tables shrink where a stage's map is smaller than the window, on both sides alike
    "swin_small_patch4_window7_224": {"img_size": 112},
    "swin_base_patch4_window7_224": {"img_size": 112},
    "swin_base_patch4_window12_384": {"img_size": 192},
    "maxvit_small_tf_224": {"img_size": 96},
    # DINOv3 runs at any size divisible by 16 (its rotary table follows the grid): a 4x4 grid here
    "vit_small_patch16_dinov3": {"img_size": 64},
    "vit_base_patch16_dinov3": {"img_size": 64},
    # SigLIP 2 B/16 towers: a 4x4 position table instead of 14x14 / 16x16
    "vit_base_patch16_siglip_224": {"img_size": 64},
    "vit_base_patch16_siglip_256": {"img_size": 64},
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
    if library == "airbench":
        return airbench_reference(card.config.widths, **kwargs)
    raise ValueError(f"no reference builder for library '{library}' (model '{name}')")


def airbench_reference(widths: tuple[int, int, int], num_classes: int = 10) -> nn.Module:
    """airbench's `make_net94` at these widths with fp32 weights on the CPU (its builder calls `.half()` and
    `.cuda()`, made no-ops while it runs); skips the test when the airbench package is not installed."""
    import pytest

    airbench94 = pytest.importorskip("airbench.lib_airbench94", reason="airbench is not installed "
                                     "(pip install airbench==0.1.8): no reference for the airbench family")
    if num_classes != 10:
        raise ValueError(f"airbench's make_net94 has 10 outputs, asked for {num_classes}")
    cuda, half = nn.Module.cuda, nn.Module.half
    nn.Module.cuda = nn.Module.half = lambda self, *args, **kwargs: self
    try:
        net = airbench94.make_net94(widths=dict(zip(("block1", "block2", "block3"), widths)))
    finally:
        nn.Module.cuda, nn.Module.half = cuda, half
    return net.float().to(memory_format=torch.contiguous_format)


def perturb_constant_tensors(model: nn.Module, scale: float = 0.1) -> int:
    """Give every tensor that is constant at initialisation some random spread, in place.

    Fresh models hide much of their computation: zero biases, unit norm weights, BN statistics at
    0 and 1, layer scales at 1e-6 (which make whole residual branches invisible in the output),
    zero-initialised attention biases. Those are exactly the tensors whose handling must match, so
    the reference gets `c + scale * noise` for each of them before its weights are copied into ours.
    Running variances stay positive. Conv and linear weights are redrawn with variance-preserving
    scale. Returns how many constant tensors were changed.
    """
    generator = torch.Generator().manual_seed(1234)
    changed = 0
    with torch.no_grad():
        # Variance-preserving weights first: some reference inits (torchvision's GoogLeNet: std 0.01)
        # shrink the signal to nothing over depth, so the output would be the last bias whatever
        # the network in between computed.
        for module in model.modules():
            if isinstance(module, (nn.Linear, nn.modules.conv._ConvNd)) and module.weight.numel() > 0:
                fan_in = module.weight[0].numel()
                module.weight.copy_(torch.randn(module.weight.shape, generator=generator) / fan_in**0.5)
        for name, tensor in model.state_dict().items():
            if not tensor.is_floating_point() or tensor.numel() == 0:
                continue
            if tensor.numel() > 1 and tensor.max() != tensor.min():
                continue
            noise = torch.randn(tensor.shape, generator=generator, dtype=tensor.dtype) * scale
            tensor.add_(noise.abs() if name.endswith("running_var") else noise)
            changed += 1
    return changed


def max_relative_difference(ours: torch.Tensor, reference: torch.Tensor) -> float:
    scale = reference.abs().max().clamp_min(1e-12)
    return float((ours - reference).abs().max() / scale)


def check_numeric_parity(name: str, *, batch: int = 2, input_size: tuple[int, int, int] | None = None,
                         ours_kwargs: dict | None = None, ref_kwargs: dict | None = None) -> float:
    torch.manual_seed(0)
    overrides = PARITY_OVERRIDES.get(name, {})
    reference = reference_model(name, **{**overrides, **(ref_kwargs or {})}).eval()
    perturb_constant_tensors(reference)
    ours = visionzoo.create_model(name, **{**overrides, **(ours_kwargs or {})}).eval()
    ours.load_state_dict(reference.state_dict(), strict=True)
    size = input_size or get_card(name).input_size
    if input_size is None and "img_size" in overrides:
        size = (size[0], overrides["img_size"], overrides["img_size"])
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


@functools.cache
def parameter_count(name: str) -> int:
    """Counted on the meta device (model_info would also count multiply-adds, by a forward pass)."""
    with torch.device("meta"):
        return sum(p.numel() for p in visionzoo.create_model(name).parameters())


# Size words in model names: variants that differ only in them (and in numbers) share their code.
_SIZE_WORDS = "atto|femto|pico|nano|tiny|small|base|medium|large|huge|giant|so400m|s|m|l|xl"
# Variants whose code path the smallest of their kind lacks: bottleneck ResNets, MobileNetV3-Large's
# stages, MobileOne-S0's four branches per convolution.
_ALSO_NUMERIC = ("resnet50", "mobilenetv3_large_100", "mobileone_s0")


def _kind(name: str) -> str:
    import re

    stripped = re.sub(rf"(?<![a-z])({_SIZE_WORDS})(?![a-z])", "#", name)
    return f"{get_card(name).family}:{re.sub(r'[0-9]+', '#', stripped)}"


def numeric_parity_models() -> list[str]:
    """The variants whose outputs are compared with the reference on real tensors: with
    VISIONZOO_PARITY=all, every one under NUMERIC_PARAM_LIMIT; by default the smallest of each kind
    (a family's variants that differ only in size words and numbers run the same code) and
    `_ALSO_NUMERIC`. Every variant's structure and parameter count are checked on the meta device."""
    import os

    small = sorted((n for n in visionzoo.list_models() if parameter_count(n) <= NUMERIC_PARAM_LIMIT),
                   key=lambda n: (parameter_count(n), n))
    if os.environ.get("VISIONZOO_PARITY") == "all":
        return small
    smallest: dict[str, str] = {}
    for name in small:
        smallest.setdefault(_kind(name), name)
    return sorted(set(smallest.values()) | set(_ALSO_NUMERIC))


def cache_hub_repo(cache: os.PathLike, repo: str, files: dict[str, bytes]) -> None:
    """Lay files out as huggingface_hub's cache does after a download (refs/main -> snapshot), so that
    Hub names resolve offline from `cache` (HF_HUB_CACHE)."""
    folder = os.path.join(cache, "models--" + repo.replace("/", "--"))
    commit = "0123456789abcdef0123456789abcdef01234567"
    os.makedirs(os.path.join(folder, "refs"), exist_ok=True)
    with open(os.path.join(folder, "refs", "main"), "w") as handle:
        handle.write(commit)
    snapshot = os.path.join(folder, "snapshots", commit)
    os.makedirs(snapshot, exist_ok=True)
    for name, data in files.items():
        with open(os.path.join(snapshot, name), "wb") as handle:
            handle.write(data)
