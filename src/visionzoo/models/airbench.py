"""airbench: the network of Keller Jordan's fast CIFAR-10 training.

Jordan, 2024, "94% on CIFAR-10 in 3.29 Seconds on a Single GPU" (airbench94; the code is the
`airbench` package, `make_net94`).

A small plain convolutional network, made fast to train by what surrounds the convolutions:

1. The first layer is a frozen 2x2 convolution that *whitens* the image's patches: its filters
   are the eigenvectors of the training images' 2x2-patch covariance, each divided by the
   square root of its eigenvalue, and their negatives (so that the GELU after it keeps both
   signs). Neighbouring pixels are strongly correlated; decorrelating them first lets SGD take
   large steps from the start. These filters depend on the data, so the constructor leaves
   them random and `init_from_data` computes them from a sample of training images (the
   trainer calls it before the first step of a run from scratch; see `visionzoo.training.data_init`).
2. Three `ConvGroup`s, each conv 3x3 -> max-pool 2 -> BatchNorm -> GELU -> conv 3x3 ->
   BatchNorm -> GELU, halving the map and widening the channels.
3. BatchNorm with its scale frozen at 1 (only the shift learns) and fast-moving statistics.
4. Each convolution of the groups starts as the identity on its first input channels
   (`dirac`): at initialisation a group nearly passes its input through.
5. A global max-pool and a linear classifier without bias whose logits are scaled by 1/9: a
   fixed temperature, so the label-smoothed loss is not saturated early.

The training recipe (label smoothing, Lookahead, BatchNorm shifts at 64x the learning rate,
alternating flips, flip-and-shift test-time augmentation) is not part of the network: it is
`visionzoo train --recipe cifar-speed` (`visionzoo.training.recipes.CIFAR_SPEED`).

The module layout is airbench's `nn.Sequential` (indices 0, 2, 3, 4 and 7 hold the weights), so a
`make_net94` state dict loads without renaming. One difference, with no effect at CIFAR's 32 px:
airbench pools with `MaxPool2d(3)`, which at 32 px meets a 3x3 map (the unpadded 2x2 whitening
makes it 31 px, then 15, 7, 3); we pool the whole map whatever its size (a max over it, not
`AdaptiveMaxPool2d`, which neither ExecuTorch's core ATen set nor LiteRT's converter lowers).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from visionzoo.errors import SettingError
from visionzoo.features import FeatureInfo
from visionzoo.layers.pool import GlobalPool
from visionzoo.registry import CamLayer, VariantExtras, register_family


@dataclass(frozen=True)
class AirbenchConfig:
    """airbench94's network: Jordan, 2024, "94% on CIFAR-10 in 3.29 Seconds on a Single GPU"."""

    widths: tuple[int, int, int] = (64, 256, 256)  # channels of the three conv groups
    whiten_kernel_size: int = 2  # patch side of the whitening convolution
    batchnorm_momentum: float = 0.4  # PyTorch's convention: airbench's "0.6" is 1 - this
    logit_scale: float = 1 / 9  # fixed temperature of the logits
    dirac: bool = True  # each group convolution starts as the identity on its first input channels
    whiten_eps: float = 5e-4  # added to each eigenvalue before dividing by its square root


class FrozenScaleBatchNorm(nn.BatchNorm2d):
    """BatchNorm whose scale stays 1 (only the shift learns), with airbench's eps of 1e-12."""

    def __init__(self, channels: int, momentum: float):
        super().__init__(channels, eps=1e-12, momentum=momentum)
        self.weight.requires_grad_(False)


class ConvGroup(nn.Module):
    """conv 3x3 -> max-pool 2 -> BN -> GELU -> conv 3x3 -> BN -> GELU: one resolution level."""

    def __init__(self, in_channels: int, out_channels: int, momentum: float, dirac: bool):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False)
        self.pool = nn.MaxPool2d(2)
        self.norm1 = FrozenScaleBatchNorm(out_channels, momentum)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.norm2 = FrozenScaleBatchNorm(out_channels, momentum)
        self.activ = nn.GELU()  # airbench's name, kept for its state dicts' sake (no weights, but one layout)
        if dirac:
            with torch.no_grad():
                for conv in (self.conv1, self.conv2):
                    nn.init.dirac_(conv.weight[:conv.in_channels])  # filter i copies input channel i

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.activ(self.norm1(self.pool(self.conv1(x))))  # (N, C, H, W) -> (N, C', H/2, W/2)
        return self.activ(self.norm2(self.conv2(x)))


class AirbenchNet(nn.Sequential):
    """airbench94's network (Jordan, 2024): patch whitening, three conv groups, max-pool, scaled linear head.

    An `nn.Sequential` laid out as airbench's `make_net94`: 0 whitening conv, 1 GELU, 2-4 conv
    groups, 5 global max-pool, 6 flatten, 7 classifier (the 1/9 scale is `logit_scale`).
    """

    def __init__(self, config: AirbenchConfig, *, num_classes: int = 10, in_chans: int = 3):
        if num_classes < 0:
            raise SettingError(f"num_classes must be >= 0, got {num_classes}")
        k = config.whiten_kernel_size
        whiten_width = 2 * in_chans * k * k  # every eigenvector of a (in_chans x k x k) patch, and its negative
        w1, w2, w3 = config.widths
        m, dirac = config.batchnorm_momentum, config.dirac
        super().__init__(
            nn.Conv2d(in_chans, whiten_width, k, padding=0, bias=True),
            nn.GELU(),
            ConvGroup(whiten_width, w1, m, dirac),
            ConvGroup(w1, w2, m, dirac),
            ConvGroup(w2, w3, m, dirac),
            GlobalPool("max"),  # a max over the map: an op every export runtime lowers
            nn.Flatten(),
            self._make_fc(w3, num_classes),
        )
        self[0].weight.requires_grad_(False)  # the whitening filters come from the data, not from SGD
        self.config = config
        self.num_classes = num_classes
        self.num_features = w3
        self.logit_scale = config.logit_scale
        # nominal strides: the unpadded whitening makes each map a pixel or so smaller than input / stride
        self.feature_info = [FeatureInfo("2", w1, 2), FeatureInfo("3", w2, 4), FeatureInfo("4", w3, 8)]

    @staticmethod
    def _make_fc(in_features: int, num_classes: int) -> nn.Module:
        return nn.Linear(in_features, num_classes, bias=False) if num_classes > 0 else nn.Identity()

    @torch.no_grad()
    def init_from_data(self, images: torch.Tensor) -> None:
        """Set the whitening filters from `images`: (N, C, H, W) training images, preprocessed as the
        network receives them (normalised floats).

        Every k x k patch is a vector of C*k*k numbers; its covariance over all patches has
        eigenvectors v_i and eigenvalues l_i. The filters v_i / sqrt(l_i + eps) map the patches to
        decorrelated unit-variance outputs (covariance about the identity), and -v_i / sqrt(...) to
        their negatives. The covariance is summed a chunk of images at a time, in float64, and centred
        (airbench's own uses the uncentred second moment: the same after normalisation, up to the mean
        patch, which the bias, left at zero to learn, can absorb)."""
        whiten = self[0]
        channels, k = whiten.in_channels, self.config.whiten_kernel_size
        size = channels * k * k
        total = torch.zeros(size, dtype=torch.float64, device=images.device)
        outer = torch.zeros(size, size, dtype=torch.float64, device=images.device)
        count = 0
        for chunk in images.split(256):
            patches = chunk.unfold(2, k, 1).unfold(3, k, 1)  # (n, C, H-k+1, W-k+1, k, k)
            patches = patches.permute(0, 2, 3, 1, 4, 5).reshape(-1, size).double()  # rows in the weight's (C, k, k) order
            total += patches.sum(0)
            outer += patches.T @ patches
            count += len(patches)
        mean = total / count
        covariance = outer / count - torch.outer(mean, mean)
        eigenvalues, eigenvectors = torch.linalg.eigh(covariance)  # columns are the eigenvectors
        filters = eigenvectors.T / torch.sqrt(eigenvalues.clamp_min(0) + self.config.whiten_eps)[:, None]
        filters = filters.reshape(size, channels, k, k)
        whiten.weight.copy_(torch.cat([filters, -filters]).to(whiten.weight))
        whiten.bias.zero_()

    def reset_classifier(self, num_classes: int) -> None:
        if num_classes < 0:
            raise SettingError(f"num_classes must be >= 0, got {num_classes}")
        self.num_classes = num_classes
        self[7] = self._make_fc(self.num_features, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        # indexed one by one: slicing an nn.Sequential rebuilds it through its class's constructor
        for index in range(5):
            x = self[index](x)
        return x  # (N, C, H, W) -> (N, widths[2], ~H/8, ~W/8)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self[6](self[5](x))  # (N, C, h, w) -> (N, C) (the flatten is airbench's, kept for its indices)
        if pre_logits or self.num_classes == 0:
            return x
        return self[7](x) * self.logit_scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


# --- variants ------------------------------------------------------------------------------

VARIANTS: dict[str, AirbenchConfig] = {
    "airbench_cifar": AirbenchConfig(),  # airbench94's widths
    "airbench_cifar_w48": AirbenchConfig(widths=(48, 192, 192)),  # about 0.6x its multiply-adds
    "airbench_cifar_w32": AirbenchConfig(widths=(32, 128, 128)),  # half its width, about 0.3x its multiply-adds
}

# CIFAR-10's 32 px images, normalised with its training set's per-channel mean and std, seen whole.
_CIFAR = VariantExtras(reference="airbench:make_net94", input_size=(3, 32, 32), num_classes=10,
                       data_config={"mean": (0.4914, 0.4822, 0.4465), "std": (0.2470, 0.2435, 0.2616),
                                    "crop_pct": 1.0})

register_family(VARIANTS, family="airbench", paper="94% on CIFAR-10 in 3.29 Seconds on a Single GPU", year=2024,
                builder=AirbenchNet, recipe_style="convnet", reference_library="airbench",
                cam_layer=CamLayer("4"),  # the last conv group, before the global max-pool
                extras={name: _CIFAR for name in VARIANTS})
