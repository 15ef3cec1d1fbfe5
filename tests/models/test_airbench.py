"""The airbench family (Jordan, 2024): shapes, the CIFAR card, the data-dependent whitening, and
parity with the `airbench` package's `make_net94` when it is installed."""

from __future__ import annotations

import pytest
import torch

import visionzoo
from harness import airbench_reference
from visionzoo.factory import data_config
from visionzoo.models.airbench import VARIANTS, AirbenchNet
from visionzoo.registry import get_card


def _patch_covariance(model: AirbenchNet, images: torch.Tensor) -> torch.Tensor:
    """Covariance over every patch of the first half of the whitening conv's outputs (the eigenvector filters;
    the second half are their negatives)."""
    with torch.no_grad():
        outputs = model[0](images)[:, : model[0].out_channels // 2]  # (N, 12, H-1, W-1)
    rows = outputs.permute(0, 2, 3, 1).reshape(-1, outputs.shape[1]).double()
    rows = rows - rows.mean(0)
    return rows.T @ rows / len(rows)


def _correlated_images(count: int = 64, size: int = 32, seed: int = 0) -> torch.Tensor:
    """Normalised-looking images whose neighbouring pixels and channels are correlated, as photos' are: smooth
    random fields (upsampled noise), a shared brightness across channels, and a little pixel noise."""
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.randn(count, 1, size // 4, size // 4, generator=generator)
    shared = torch.nn.functional.interpolate(coarse, size=size, mode="bilinear", align_corners=False)
    colour = torch.randn(count, 3, 1, 1, generator=generator) * 0.3
    return shared + colour + 0.2 * torch.randn(count, 3, size, size, generator=generator)


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_variants_build_for_cifar_and_classify(name):
    card = get_card(name)
    assert card.family == "airbench" and card.input_size == (3, 32, 32) and card.num_classes == 10
    config = data_config(name)
    assert config["mean"] == pytest.approx((0.4914, 0.4822, 0.4465)) and config["std"] == pytest.approx((0.2470, 0.2435, 0.2616))
    assert config["crop_pct"] == 1.0
    with torch.device("meta"):
        model = visionzoo.create_model(name)
    assert model.num_features == VARIANTS[name].widths[-1]
    assert model(torch.empty(3, 3, 32, 32, device="meta")).shape == (3, 10)
    assert data_config(model)["mean"] == config["mean"]  # the built model's spec carries the card's preprocessing


def test_small_network_runs_for_real_with_frozen_whitening_and_batchnorm_scales():
    torch.manual_seed(0)
    model = visionzoo.create_model("airbench_cifar_w32", widths=(8, 16, 16), num_classes=5).train()
    logits = model(torch.randn(4, 3, 32, 32))
    assert logits.shape == (4, 5) and torch.isfinite(logits).all()
    logits.square().mean().backward()
    frozen = sorted(name for name, p in model.named_parameters() if not p.requires_grad)
    assert frozen == ["0.weight", "2.norm1.weight", "2.norm2.weight", "3.norm1.weight", "3.norm2.weight",
                      "4.norm1.weight", "4.norm2.weight"]
    assert model[0].weight.grad is None and model[7].weight.grad is not None
    # forward_head scales the logits by 1/9 and pre_logits returns the pooled features
    features = model.forward_features(torch.randn(2, 3, 32, 32))
    assert features.shape == (2, 16, 3, 3)  # 32 -> 31 (unpadded 2x2 whitening) -> 15 -> 7 -> 3
    pooled = model.forward_head(features, pre_logits=True)
    torch.testing.assert_close(model.forward_head(features), model[7](pooled) / 9)


def test_group_convolutions_start_as_the_identity():
    model = visionzoo.create_model("airbench_cifar_w32", widths=(8, 16, 16))
    conv = model[3].conv1  # 8 -> 16 channels
    expected = torch.zeros(8, 8, 3, 3)
    expected[range(8), range(8), 1, 1] = 1
    torch.testing.assert_close(conv.weight[:8], expected)
    plain = visionzoo.create_model("airbench_cifar_w32", widths=(8, 16, 16), dirac=False)
    assert not torch.equal(plain[3].conv1.weight[:8], expected)


def test_init_from_data_whitens_the_patches_of_its_sample():
    """After the initialisation the whitening outputs are decorrelated with unit variance (covariance close to
    the identity) on the images it was computed from; with random filters (the init skipped) they are not."""
    images = _correlated_images()
    model = visionzoo.create_model("airbench_cifar_w32", widths=(8, 16, 16))
    before = _patch_covariance(model, images)
    identity = torch.eye(12, dtype=torch.float64)
    assert (before - identity).abs().max() > 0.5
    model.init_from_data(images)
    after = _patch_covariance(model, images)
    # eps (5e-4) shrinks each variance to l / (l + eps): within 2% for this data's eigenvalues
    assert (after - identity).abs().max() < 0.02, after
    # the second half of the filters are the negatives of the first
    torch.testing.assert_close(model[0].weight[12:], -model[0].weight[:12])
    assert not model[0].bias.any()


def test_init_from_data_follows_the_input_channels():
    gray = _correlated_images(count=16)[:, :1]
    model = visionzoo.create_model("airbench_cifar_w32", widths=(8, 16, 16), in_chans=1)
    assert model[0].weight.shape == (8, 1, 2, 2)  # 4 eigenvectors of a 1x2x2 patch and their negatives
    model.init_from_data(gray)
    with torch.no_grad():
        outputs = model[0](gray)[:, :4]
    rows = outputs.permute(0, 2, 3, 1).reshape(-1, 4).double()
    covariance = torch.cov(rows.T)
    assert (covariance - torch.eye(4, dtype=torch.float64)).abs().max() < 0.02


@pytest.mark.parametrize("widths", [(64, 256, 256), (8, 16, 16)])
def test_parity_with_airbench_make_net94(widths):
    """Same state-dict keys and shapes as airbench's make_net94, and the same logits with its weights loaded
    (skipped without the airbench package: pip install airbench==0.1.8)."""
    torch.manual_seed(0)
    reference = airbench_reference(widths).eval()  # skips the test when airbench is absent
    with torch.no_grad():
        for tensor in reference.state_dict().values():  # no constant tensor hides a difference
            if tensor.is_floating_point():
                tensor.copy_(torch.rand_like(tensor) * 0.5 + 0.1 if tensor.ndim == 1 else torch.randn_like(tensor) * 0.2)
    ours = visionzoo.create_model("airbench_cifar", widths=widths).eval()
    assert {k: v.shape for k, v in ours.state_dict().items()} == {k: v.shape for k, v in reference.state_dict().items()}
    ours.load_state_dict(reference.state_dict(), strict=True)
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        expected, actual = reference(x), ours(x)
    assert actual.shape == expected.shape == (3, 10)
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-5 * float(expected.abs().max()))
    # which parameters train is airbench's too: its whitening filters and BatchNorm scales are frozen
    assert ({n for n, p in ours.named_parameters() if p.requires_grad}
            == {n for n, p in reference.named_parameters() if p.requires_grad})
