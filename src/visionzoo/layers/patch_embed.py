"""Image to patch embedding (Dosovitskiy et al., 2020, "An Image is Worth 16x16 Words")."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn as nn

from visionzoo.errors import SettingError


def _pair(value: int | tuple[int, int] | list[int]) -> tuple[int, int]:
    if isinstance(value, int):
        return (value, value)
    return (int(value[0]), int(value[1]))


class PatchEmbed(nn.Module):
    """Cuts an image into non-overlapping patches and projects each to `embed_dim` channels.

    A strided convolution (`proj`, kernel = stride = patch size) is the linear patch projection
    of the paper. Output layout `output_fmt`: "NLC" tokens (N, H'*W', C), "NHWC" a channels-last
    grid (for models that resample position embeddings or window the grid), or "NCHW".
    `norm` (optional) is applied in the output layout, so with "NCHW" it must normalise dim 1.

    `strict_img_size=True` accepts only `img_size`; False accepts any size divisible by the patch
    (dynamic image size). `img_size` may be None when every input size is allowed.
    """

    def __init__(self, img_size: int | tuple[int, int] | None = 224, patch_size: int | tuple[int, int] = 16,
                 in_chans: int = 3, embed_dim: int = 768, norm_layer: type[nn.Module] | None = None,
                 bias: bool = True, output_fmt: Literal["NLC", "NHWC", "NCHW"] = "NLC",
                 strict_img_size: bool = True):
        super().__init__()
        if output_fmt not in ("NLC", "NHWC", "NCHW"):
            raise SettingError(f"output_fmt must be 'NLC', 'NHWC' or 'NCHW', got {output_fmt!r}")
        self.patch_size = _pair(patch_size)
        self.img_size = _pair(img_size) if img_size is not None else None
        if self.img_size is not None:
            for size, patch in zip(self.img_size, self.patch_size):
                if size < patch:
                    raise SettingError(f"img_size {self.img_size} is smaller than patch_size {self.patch_size}")
            self.grid_size = (self.img_size[0] // self.patch_size[0], self.img_size[1] // self.patch_size[1])
            self.num_patches = self.grid_size[0] * self.grid_size[1]
        else:
            self.grid_size, self.num_patches = None, None
        self.output_fmt = output_fmt
        self.strict_img_size = strict_img_size
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=self.patch_size, stride=self.patch_size, bias=bias)
        self.norm = norm_layer(embed_dim) if norm_layer is not None else nn.Identity()

    def _check_size(self, height: int, width: int) -> None:
        if self.strict_img_size and self.img_size is not None:
            if (height, width) != self.img_size:
                raise SettingError(f"input size {height}x{width} does not match the model's img_size "
                                 f"{self.img_size[0]}x{self.img_size[1]}; build the model with img_size="
                                 f"{height if height == width else (height, width)} or dynamic_img_size=True")
        elif height % self.patch_size[0] or width % self.patch_size[1]:
            raise SettingError(f"input size {height}x{width} is not divisible by the patch size "
                             f"{self.patch_size[0]}x{self.patch_size[1]}; resize or crop the input")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_size(x.shape[-2], x.shape[-1])
        x = self.proj(x)  # (N, C, H', W')
        if self.output_fmt == "NLC":
            x = x.flatten(2).transpose(1, 2)  # (N, C, H', W') -> (N, H'*W', C)
        elif self.output_fmt == "NHWC":
            x = x.permute(0, 2, 3, 1)  # (N, C, H', W') -> (N, H', W', C)
        return self.norm(x)
