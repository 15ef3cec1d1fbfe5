"""Train and eval transforms on torchvision.transforms.v2, from a model's data config.

A data config is a dict in timm's shape: `input_size` (C, H, W), `interpolation`, `mean`,
`std`, `crop_pct`, and `resize_mode` (crop, squash or letterbox: how a photo of another shape
becomes the input, `visionzoo.data.resize`). This module takes configs only; the config of a model
comes from its spec (`visionzoo.factory.data_config`). Sizes are one side (square) or (H, W).

With squash and letterbox, every preset first fits the whole photo to H x W as evaluation does
(`FitToSize`) and augments that view, so the bars or the stretch a deployed model sees are the ones
it trained on.

Train presets, weakest to strongest:
    none     resize and centre-crop as at evaluation (linear probes on frozen features)
    crop     pad-and-random-crop plus flip: the classic small-image (CIFAR) augmentation
    light    random resized crop (scale 0.35..1) and horizontal flip
    medium   light + TrivialAugmentWide
    strong   random resized crop (0.08..1), flip, RandAugment (2 ops, magnitude 9), random erasing 0.25;
             pair it with mixup / cutmix, which act on batches (`batch_mixer`)
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn
from torchvision.transforms import v2

from visionzoo.data import IMAGENET_MEAN, IMAGENET_STD
from visionzoo.data.datasets import crop_flip_shifts, resize_short_center_crop
from visionzoo.data.presets import PRESETS
from visionzoo.data.resize import cover_size, fill_colour, fit_image, letterbox_box, resize_mode_of
from visionzoo.errors import SettingError

__all__ = ["PRESETS", "eval_transform", "eval_view", "normalize_view", "train_transform", "image_hw", "FitToSize",
           "batch_mixer", "SeededCropFlip", "NormalizeInput", "AFFINE_INTERPOLATION", "interpolation_of"]

# Rotations and shears of tensor images support nearest and bilinear only.
AFFINE_INTERPOLATION = v2.InterpolationMode.BILINEAR

_INTERPOLATION = {
    "bilinear": v2.InterpolationMode.BILINEAR,
    "bicubic": v2.InterpolationMode.BICUBIC,
    "nearest": v2.InterpolationMode.NEAREST,
}


def interpolation_of(config: dict) -> v2.InterpolationMode:
    """The data config's resize interpolation (default bicubic, as timm's)."""
    return _INTERPOLATION.get(str(config.get("interpolation", "bicubic")), v2.InterpolationMode.BICUBIC)


def _to_float_normalized(config: dict) -> list:
    """The steps after the geometry: every pipeline here starts with its own `ToImage`."""
    return [v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(mean=list(config.get("mean", IMAGENET_MEAN)), std=list(config.get("std", IMAGENET_STD)))]


def image_hw(config: dict, image_size: int | tuple[int, int] | None = None) -> tuple[int, int]:
    """(H, W) of the input: `image_size` (one side or (H, W)), else the config's `input_size`."""
    if image_size is None:
        return int(config["input_size"][1]), int(config["input_size"][2])
    if isinstance(image_size, int):
        return image_size, image_size
    height, width = image_size
    return int(height), int(width)


class FitToSize:
    """A photo (Pillow, or a uint8 tensor (C, H, W)) fitted to height x width by a resize mode.

    Decoded photos go through `data.resize.fit_image`, the Pillow code the torch-free runtimes run,
    so a letterboxed or squashed image is the same pixels here and in an exported file's predictor.
    Tensors (arrays already in memory) are resized by torchvision with the same geometry."""

    def __init__(self, mode: str, height: int, width: int, config: dict):
        self.mode, self.height, self.width = mode, height, width
        self.crop_pct = float(config.get("crop_pct", 0.875))
        self.mean = tuple(config.get("mean", IMAGENET_MEAN))
        self.interpolation = str(config.get("interpolation", "bicubic"))

    def __repr__(self) -> str:  # what the pixel cache fingerprints its stored view by: no object address
        return (f"FitToSize(mode={self.mode}, height={self.height}, width={self.width}, crop_pct={self.crop_pct}, "
                f"mean={self.mean}, interpolation={self.interpolation})")

    def __call__(self, image):
        if not isinstance(image, torch.Tensor) and hasattr(image, "convert"):
            return fit_image(image.convert("RGB"), self.mode, self.height, self.width, crop_pct=self.crop_pct,
                             mean=self.mean, interpolation=self.interpolation)
        image = v2.functional.to_image(image)
        interpolation = interpolation_of({"interpolation": self.interpolation})
        height, width = image.shape[-2:]
        if self.mode == "squash":
            return v2.functional.resize(image, [self.height, self.width], interpolation=interpolation, antialias=True)
        if self.mode == "letterbox":
            new_width, new_height, left, top = letterbox_box(width, height, self.width, self.height)
            resized = v2.functional.resize(image, [new_height, new_width], interpolation=interpolation,
                                           antialias=True)
            fill = torch.tensor(fill_colour(self.mean), dtype=torch.float32)
            fill = fill if image.dtype == torch.uint8 else fill / 255
            canvas = fill.to(image.dtype).view(-1, 1, 1).expand(image.shape[0], self.height, self.width).clone()
            canvas[:, top:top + new_height, left:left + new_width] = resized
            return canvas
        new_width, new_height = cover_size(width, height, self.width, self.height, self.crop_pct)
        resized = v2.functional.resize(image, [new_height, new_width], interpolation=interpolation, antialias=True)
        return v2.functional.center_crop(resized, [self.height, self.width])


def _fit(config: dict, height: int, width: int) -> list:
    """The geometry steps of the evaluation view, ending in a uint8 tensor image (C, H, W)."""
    return [FitToSize(resize_mode_of(config), height, width, config), v2.ToImage()]


def eval_view(config: dict, image_size: int | tuple[int, int] | None = None) -> v2.Compose:
    """The evaluation view, kept uint8 (C, H, W): by the config's resize mode (`data.resize`), for crop
    the shorter side resized to size / crop_pct with the config's interpolation, then the centre
    H x W; decoded photos through `data.resize.fit_image`, the Pillow code of the torch-free runtimes
    (and of timm's evaluation). Its one definition: `eval_transform` normalises it, the pixel caches
    store it for validation (`data.cache`, `loaders.cache_splits`) and every other validation path
    applies it (`loaders.build_loaders`), so training's validation and `eval` compute the same pixels
    with the same arithmetic."""
    return v2.Compose(_fit(config, *image_hw(config, image_size)))


def eval_transform(config: dict, image_size: int | tuple[int, int] | None = None) -> v2.Compose:
    """The evaluation view (`eval_view`), normalised."""
    return v2.Compose([*eval_view(config, image_size).transforms, *_to_float_normalized(config)])


def normalize_view(config: dict) -> v2.Compose:
    """`eval_transform`'s last steps alone: for uint8 images stored as the evaluation view already."""
    return v2.Compose([v2.ToImage(), *_to_float_normalized(config)])


def crop_padding(image_size: int | tuple[int, int], padding: int | None = None) -> int:
    """The crop preset's reflect padding (its largest shift): `padding`, or 1/8 of the image's shorter side."""
    side = image_size if isinstance(image_size, int) else min(image_size)
    return max(1, side // 8) if padding is None else padding


def train_transform(config: dict, preset: str = "light", image_size: int | tuple[int, int] | None = None,
                    padding: int | None = None) -> v2.Compose:
    if preset not in PRESETS:
        raise SettingError(f"unknown augmentation preset {preset!r}; choose one of {', '.join(PRESETS)}")
    height, width = image_hw(config, image_size)
    interpolation = interpolation_of(config)
    if preset == "none":
        return eval_transform(config, (height, width))
    if preset == "crop":
        # as before resize modes: the photo's shorter side to the size, not size / crop_pct
        steps = [*_fit({**config, "crop_pct": 1.0}, height, width),
                 v2.RandomCrop((height, width), padding=crop_padding((height, width), padding),
                               padding_mode="reflect"),
                 v2.RandomHorizontalFlip()]
        return v2.Compose(steps + _to_float_normalized(config))
    scale = (0.08, 1.0) if preset == "strong" else (0.35, 1.0)
    # crop: random regions of the photo itself; squash / letterbox: of the fitted view, bars and all
    fitted = [v2.ToImage()] if resize_mode_of(config) == "crop" else _fit(config, height, width)
    steps = [*fitted, v2.RandomResizedCrop((height, width), scale=scale, interpolation=interpolation, antialias=True),
             v2.RandomHorizontalFlip()]
    if preset == "medium":
        steps.append(v2.TrivialAugmentWide(interpolation=AFFINE_INTERPOLATION))
    if preset == "strong":
        steps.append(v2.RandAugment(num_ops=2, magnitude=9, interpolation=AFFINE_INTERPOLATION))
    steps += _to_float_normalized(config)
    if preset == "strong":
        steps.append(v2.RandomErasing(p=0.25, value=0))
    return v2.Compose(steps)


def batch_mixer(num_classes: int, mixup_alpha: float = 0.0, cutmix_alpha: float = 0.0):
    """Mixup and/or CutMix on a (images, labels) batch, labels becoming soft; None when both are off."""
    choices = []
    if mixup_alpha > 0:
        choices.append(v2.MixUp(alpha=mixup_alpha, num_classes=num_classes))
    if cutmix_alpha > 0:
        choices.append(v2.CutMix(alpha=cutmix_alpha, num_classes=num_classes))
    if not choices:
        return None
    return choices[0] if len(choices) == 1 else v2.RandomChoice(choices)


class SeededCropFlip:
    """The `crop` preset on uint8 (C, H, W) tensors at the training size, as a fast path.

    Reflect-pads by `padding`, crops back at an offset and mirrors, with the offset and the flip
    read from the sample's seed (given by the sampler) instead of a random generator: a few
    microseconds per image, and the same augmentation for a sample whichever process or worker
    loads it. `crop_flip_batch` does the same to whole batches (`crop_flip_shifts` reads the seed
    for both). Normalisation happens on the batch (`NormalizeInput`), on the device.

    With `size`, it also takes decoded files (PIL images) and first fits them to `size` x `size`
    as the pixel cache would (shorter side resized, centre crop), so uncached folders of images
    take the same path.
    """

    takes_seed = True

    def __init__(self, padding: int, size: int | None = None):
        self.padding = padding
        self.size = size

    def __call__(self, image, seed: int | None) -> torch.Tensor:
        if not isinstance(image, torch.Tensor):
            if self.size is None:
                raise TypeError("SeededCropFlip needs `size` to take decoded images; it got a "
                                f"{type(image).__name__}")
            image = torch.from_numpy(resize_short_center_crop(image, self.size)).permute(2, 0, 1)
        if seed is None or self.padding == 0:
            return image
        # numpy on one image: several times cheaper than crop_flip_batch's gathers on a batch of one
        p = self.padding
        dx, dy, flip = crop_flip_shifts(seed, p)
        array = np.pad(image.numpy(), ((0, 0), (p, p), (p, p)), mode="reflect")
        height, width = image.shape[1:]
        array = array[:, dy:dy + height, dx:dx + width]
        if flip:
            array = array[:, :, ::-1]
        return torch.from_numpy(np.ascontiguousarray(array))


class NormalizeInput(nn.Module):
    """uint8 images -> normalised float, as the first layer of the model (fast path). The arithmetic of
    `eval_transform`'s `ToDtype(scale=True)` and `Normalize` (x / 255, minus the mean, over the std,
    in float32), so a batch normalised here on the device is bit for bit the images `eval` feeds."""

    def __init__(self, mean, std):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.dtype != torch.uint8:
            return images
        return images.float().mul_(1.0 / 255).sub_(self.mean).div_(self.std)
