"""Multi-scale feature maps from any model that declares where its stages end.

A model lists its stage outputs in `model.feature_info`, a list of `FeatureInfo`
(submodule name, channels, stride). `FeatureExtractor` hooks those submodules and runs
`forward_features`, so no family has to write a second forward pass.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from visionzoo.errors import SettingError


@dataclass(frozen=True)
class FeatureInfo:
    module: str  # dotted name of the submodule whose output is the feature map
    num_chs: int
    reduction: int  # stride of the map relative to the input
    channels_last: bool = False  # the submodule returns (N, H, W, C); it is permuted to (N, C, H, W)


class FeatureExtractor(nn.Module):
    """Wraps a model so that `forward(x)` returns the list of feature maps at `out_indices`."""

    def __init__(self, model: nn.Module, out_indices: list[int] | tuple[int, ...] | None = None,
                 name: str | None = None):
        super().__init__()
        infos: list[FeatureInfo] = list(getattr(model, "feature_info", None) or [])
        name = name or type(model).__name__  # the architecture, for messages
        if not infos:
            raise SettingError(f"model '{name}' has no multi-scale stages; features_only is not supported for it")
        if out_indices is None:
            out_indices = range(len(infos))
        indices = []
        for index in out_indices:
            if not -len(infos) <= index < len(infos):
                raise SettingError(f"out_indices value {index} is out of range for '{name}', "
                                 f"which has {len(infos)} feature levels (0..{len(infos) - 1})")
            indices.append(index % len(infos))
        self.out_indices = tuple(indices)
        self.feature_info = [infos[i] for i in self.out_indices]
        model.reset_classifier(0)  # the head is never run; drop its parameters
        self.model = model
        self._captured: dict[str, torch.Tensor] = {}
        for info in self.feature_info:
            model.get_submodule(info.module).register_forward_hook(self._capture_hook(info.module))

    def _capture_hook(self, module_name: str):
        def hook(module: nn.Module, inputs, output: torch.Tensor) -> None:
            self._captured[module_name] = output

        return hook

    def channels(self) -> list[int]:
        return [info.num_chs for info in self.feature_info]

    def reductions(self) -> list[int]:
        return [info.reduction for info in self.feature_info]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        self._captured.clear()
        try:
            self.model.forward_features(x)
            outputs = []
            for info in self.feature_info:
                feature = self._captured[info.module]
                outputs.append(feature.permute(0, 3, 1, 2) if info.channels_last else feature)
            return outputs
        finally:
            self._captured.clear()  # hold no activations between calls
