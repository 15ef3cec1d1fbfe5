"""A new classifier for transfer: its initialisation, and LP-FT's linear-probe start.

The reference initialisation of an ImageNet head is wrong for a new few-class head on
pretrained features: EfficientNet's and MobileNetV3's `U(-1/sqrt(fan_out), 1/sqrt(fan_out))`
is std 0.41 for 2 classes, so the first logits are large and random (first train loss 3.56
for 2 classes where chance is 0.69). A transfer run starts a new head at zero (BiT,
Kolesnikov et al., 2020) or N(0, std); `probe_init_head` goes further and starts it from a
logistic regression fitted on the training embeddings (LP-FT, Kumar et al., 2022).
"""

from __future__ import annotations

import torch
import torch.nn as nn

from visionzoo.errors import SettingError

__all__ = ["head_module", "init_new_head_", "probe_init_head_"]


def head_module(model: nn.Module, head_names: set[str]) -> nn.Module | None:
    """The module that holds the classifier parameters `head_names` (see `optim.head_parameter_names`)."""
    prefixes = {name.rsplit(".", 1)[0] for name in head_names}
    if len(prefixes) != 1:
        return None
    return model.get_submodule(prefixes.pop())


@torch.no_grad()
def init_new_head_(model: nn.Module, head_names: set[str], std: float) -> bool:
    """A new classifier's weight ~ N(0, std) (zeros for std 0), its bias zero; False when no head was found."""
    module = head_module(model, head_names)
    if module is None or not hasattr(module, "weight"):
        return False
    if std > 0:
        nn.init.normal_(module.weight, std=std)
    else:
        nn.init.zeros_(module.weight)
    if getattr(module, "bias", None) is not None:
        nn.init.zeros_(module.bias)
    return True


def _pooled(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    if hasattr(model, "forward_features") and hasattr(model, "forward_head"):
        return model.forward_head(model.forward_features(images), pre_logits=True)
    raise TypeError(f"{type(model).__name__} has no forward_features / forward_head(pre_logits=True); "
                    "probe_init needs them")


@torch.no_grad()
def probe_init_head_(model: nn.Module, head_names: set[str], loader, num_classes: int, *, device: torch.device,
                     normalize: nn.Module | None = None, weight_decay: float = 1e-1, max_iter: int = 100,
                     autocast_dtype: torch.dtype | None = None) -> dict[str, float]:
    """LP-FT's first phase: embed the training images once (eval mode, evaluation view), fit a
    multinomial logistic regression on the standardised embeddings (`probe.fit_logistic_regression`,
    L-BFGS), and fold the standardisation into the new head's weight and bias. Returns the probe's
    training loss and accuracy, for the log."""
    from visionzoo.embed.probe import fit_logistic_regression

    module = head_module(model, head_names)
    if module is None:
        raise SettingError("probe_init: no classifier found to initialise")
    was_training = model.training
    model.eval()
    features, labels = [], []
    try:
        for images, batch_labels, _, _ in loader:
            if not len(batch_labels):
                continue
            images = images.to(device)
            if normalize is not None:
                images = normalize(images)
            with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
                features.append(_pooled(model, images).float().cpu())
            labels.append(batch_labels)
    finally:
        model.train(was_training)
    x, y = torch.cat(features), torch.cat(labels)
    mean, std = x.mean(0), x.std(0).clamp_min(1e-6)
    weight, bias = fit_logistic_regression((x - mean) / std, y, num_classes, weight_decay, max_iter=max_iter)
    weight = weight / std  # logits = W (x - mean) / std + b = (W / std) x + (b - (W / std) mean)
    bias = bias - weight @ mean
    module.weight.copy_(weight.reshape(module.weight.shape).to(module.weight))
    if getattr(module, "bias", None) is not None:
        module.bias.copy_(bias.to(module.bias))
    logits = x @ weight.T + bias
    loss = float(nn.functional.cross_entropy(logits, y))
    return {"probe_train_loss": loss, "probe_train_top1": float((logits.argmax(1) == y).float().mean())}
