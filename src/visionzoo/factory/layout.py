"""The memory layout visionzoo runs its models in: channels-last (NHWC), for inference and training.

oneDNN's CPU convolutions and cuDNN's tensor cores are fastest on channels-last tensors. Inference
on the 2-core CI machine (batch 16, each family's smallest variant at its own size, NCHW time over
channels-last time): GoogLeNet 2.02x, FastViT-T8 1.83x, EfficientNet-Lite2 (260 px) 1.66x,
EfficientViT-B0 1.58x, MobileNetV3-L 1.54x, DenseNet-121 1.44x, VGG-11 1.40x, ResNet-18 1.26x,
ConvNeXt 1.1x; a plain ViT computes the same numbers in the same time.

The layout changes the order of a convolution's sums, so the logits move by about 1e-7 of their
size, enough to flip a rare tied image. Every command that runs a model for its outputs runs it in
this one layout (`evaluate`, `predict`, `explain`, `serve`, `embed` and the bake-off through
`channels_last`; training through its `channels_last` setting, on by default), so train's
validation, evaluate and predict give one number for one model. With the weights in channels-last
the input's layout does not matter: the output is the same to the bit.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from visionzoo.factory.spec import find_spec

__all__ = ["channels_last"]


def channels_last(model: nn.Module) -> nn.Module:
    """`model`, in place, with its 4-d weights in channels-last memory, when visionzoo made it; a user's
    own module is returned as it is (its code may `view` a feature map, which channels-last forbids)."""
    if find_spec(model) is not None:
        with torch.inference_mode(False):  # called in inference mode, it would leave weights autograd refuses
            model.to(memory_format=torch.channels_last)
    return model
