"""How much of a network a run trains: `--adapt full|lora|freeze|lp-ft`.

- `full`: every parameter (the default).
- `lora`: low-rank updates of the family's attention (and, with `lora_mlp`, MLP) layers, through
  peft (`visionzoo.weights.lora`); the base weights are frozen, the new head trains in full
  (Hu et al., 2021). Each family's model file registers its modules (`registry.LoraTargets`), so a user never
  names `qkv` or `head`. A run's `best/` and `last/` then hold only the adapter and the head, plus
  the base model's name and weights (the spec's `adapter` facts); `load_model` rebuilds it and
  `export` merges it first.
- `freeze`: the stem and the first N stages frozen (`--freeze-stages N`, default half the
  stages), through `training.freeze.freeze_stages`.
- `lp-ft`: a linear probe, then full fine-tuning (Kumar et al., 2022, "Fine-Tuning can Distort
  Pretrained Features and Underperform Out-of-Distribution"): for the first `lp_epochs` epochs
  (default a quarter of the run, at least one) only the head trains, with the backbone in eval
  mode; then every parameter trains. The optimizer holds every parameter from the start (a frozen
  one has no gradient, so SGD and AdamW skip it), so the phases need no second optimizer and a
  resumed run is in the same phase at the same epoch.

The trainer calls `apply_adaptation` on the model `model.build_model` made (before moving and
wrapping it) and `Adaptation.start_epoch` after `model.train()` each epoch.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import torch.nn as nn

from visionzoo.errors import SettingError
from visionzoo.factory import find_spec, registered_name, spec_of, with_spec
from visionzoo.measure import counted
from visionzoo.registry import family_facts, get_card, list_families
from visionzoo.training.freeze import freeze_stages, set_frozen_eval, stage_prefixes
from visionzoo.training.settings import TrainSettings
from visionzoo.weights.lora import add_lora

__all__ = ["Adaptation", "apply_adaptation", "lora_targets", "parameter_counts"]


def lora_targets(family: str, mlp: bool = False) -> str:
    """The module-name regex of `family`'s LoRA targets (with the MLP when `mlp`), as its model file registers them."""
    targets = family_facts(family).lora_targets
    if targets is None:
        declared = [f for f in list_families() if family_facts(f).lora_targets is not None]
        raise SettingError(f"--adapt lora has no target modules declared for the family '{family}'; families with "
                         f"LoRA targets: {', '.join(declared)}. Use --adapt freeze or full")
    return f"({targets.attention}|{targets.mlp})" if mlp and targets.mlp else targets.attention


def parameter_counts(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameters."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, sum(p.numel() for p in model.parameters())


@dataclass
class Adaptation:
    """What `apply_adaptation` did, and what it does each epoch."""

    method: str
    head_names: set[str]  # the head's parameter names after adaptation (the optimizer's head group)
    frozen: int = 0  # parameters frozen by `freeze` (their modules are kept in eval mode every epoch)
    lp_epochs: int = 0  # lp-ft: epochs of linear probing before full fine-tuning
    facts: dict[str, Any] | None = None  # the spec's adapter facts (lora)
    grad_checkpointing: bool = False  # blocks recompute their activations in the backward pass
    frozen_part: str = ""  # full: what the recipe froze before adaptation (--freeze-stages, a linear probe's backbone)

    def start_epoch(self, model: nn.Module, epoch: int) -> None:
        """After `model.train()`: frozen parts back in eval mode; lp-ft switches phase."""
        if self.method == "lp-ft":
            probing = epoch < self.lp_epochs
            for name, parameter in model.named_parameters():
                parameter.requires_grad_(not probing or name in self.head_names)
            if probing:  # the backbone's BatchNorm statistics and dropout as in a linear probe
                heads = {name.rsplit(".", 1)[0] for name in self.head_names}
                model.eval()
                for name, module in model.named_modules():
                    if name in heads:
                        module.train()
        elif self.method in ("lora", "freeze"):
            # frozen layers keep their BatchNorm statistics (LoRA's base: they are not saved either)
            set_frozen_eval(model)

    def describe(self, model: nn.Module) -> str:
        trainable, total = parameter_counts(model)
        # BatchNorm's running statistics are buffers, not parameters: what the counts leave out is frozen weights
        full = (f"every parameter but {self.frozen_part}, frozen" if self.frozen_part and trainable < total
                else "every parameter")
        what = {"full": full, "lora": "LoRA", "freeze": f"{self.frozen:,} parameters frozen",
                "lp-ft": f"linear probe for {counted(self.lp_epochs, 'epoch')}, then every parameter"}[self.method]
        checkpointing = ", gradient checkpointing" if self.grad_checkpointing else ""
        return f"adapt {self.method} ({what}): {trainable:,} of {total:,} parameters trainable{checkpointing}"


def _head_modules(model: nn.Module, head_names: set[str]) -> list[str]:
    modules = sorted({name.rsplit(".", 1)[0] for name in head_names})
    # distilled DeiT's second classifier reads the distillation token: it is new too
    if isinstance(getattr(model, "head_dist", None), nn.Linear) and "head_dist" not in modules:
        modules.append("head_dist")
    return modules


def apply_adaptation(model: nn.Module, settings: TrainSettings, head_names: set[str], *,
                     base_weights: bool | str | None = None) -> Adaptation:
    """Adapt `model` in place for `settings.adapt`; `head_names` are its new head's parameters and
    `base_weights` the weights it was built from (recorded in the LoRA facts).

    Gradient checkpointing (`settings.grad_checkpointing`; None: on for `lora`) recomputes each
    block's activations in the backward pass instead of keeping them. LoRA freezes the weights
    but not the activations: the backward pass still runs through every block down to the first
    adapted layer, so without checkpointing a ViT-B's activations at batch 16 hold most of the
    memory and LoRA saves little of it (0.87x full fine-tuning's peak RSS, benchmarks/peft_cpu.py)."""
    adaptation = _adapt(model, settings, head_names, base_weights)
    wanted = settings.grad_checkpointing
    if wanted is None:
        wanted = adaptation.method == "lora" and hasattr(model, "set_grad_checkpointing")
    if wanted:
        if not hasattr(model, "set_grad_checkpointing"):
            raise SettingError(f"--grad-checkpointing: {type(model).__name__} has no set_grad_checkpointing; "
                               "the transformer and ConvNeXt families have it. Leave the flag off")
        model.set_grad_checkpointing(True)
        adaptation.grad_checkpointing = True
    return adaptation


def _adapt(model: nn.Module, settings: TrainSettings, head_names: set[str],
           base_weights: bool | str | None) -> Adaptation:
    method = settings.adapt or "full"
    if method == "full":
        stages = settings.freeze_stages
        frozen_part = ("the backbone (linear probe)" if settings.freeze_backbone else "" if stages is None or stages < 0
                       else "the stem" if stages == 0 else f"the stem and the first {counted(stages, 'stage')}")
        return Adaptation("full", head_names, frozen_part=frozen_part)
    if method == "freeze":
        count = settings.freeze_stages if settings.freeze_stages is not None else len(stage_prefixes(model)) // 2
        frozen = freeze_stages(model, count)
        return Adaptation("freeze", head_names, frozen=sum(p.numel() for n, p in model.named_parameters() if n in frozen))
    if method == "lp-ft":
        if not head_names:
            raise SettingError("--adapt lp-ft needs a classifier to probe; this model's head was not found")
        lp_epochs = settings.lp_epochs if settings.lp_epochs is not None else max(1, settings.epochs // 4)
        return Adaptation("lp-ft", head_names, lp_epochs=lp_epochs)
    if method != "lora":
        raise SettingError(f"unknown adapt method {method!r}; choose full, lora, freeze or lp-ft")
    name = registered_name(model)
    if name is None:
        raise SettingError("--adapt lora needs a registered model (its family declares the target modules)")
    if base_weights is True:
        base_weights = spec_of(model).weights  # the default weights, by name

    family = get_card(name).family
    if isinstance(base_weights, str) and Path(base_weights).exists():
        base_weights = str(Path(base_weights).resolve())  # load_model may run elsewhere
    facts = {"method": "lora", "rank": settings.lora_rank, "alpha": settings.lora_alpha or 2 * settings.lora_rank,
             "dropout": 0.0, "targets": lora_targets(family, settings.lora_mlp),
             "head": _head_modules(model, head_names), "base": name, "base_weights": base_weights}
    add_lora(model, facts)
    with_spec(model, adapter=facts)
    lora_head = {n for n, p in model.named_parameters() if p.requires_grad and "modules_to_save." in n}
    return Adaptation("lora", lora_head, facts=facts)


def adapter_facts(model: nn.Module) -> Mapping[str, Any] | None:
    """The model's adapter facts (its spec's `adapter`), None for a model without an adapter."""
    spec = find_spec(model)
    return spec.adapter if spec is not None else None
