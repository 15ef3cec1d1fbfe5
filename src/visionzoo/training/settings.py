"""Training settings and the recipes that fill them in.

A recipe (`scratch`, `finetune`, `linear-probe`) gives defaults per model style (each model
card's `recipe_style`, stated by its family in `visionzoo.models`), following the published
recipes:

- ViT-style (ViT, DeiT, DINOv2, CLIP, EVA-02, Swin, MaxViT, EfficientViT): AdamW, linear
  warm-up then cosine decay, weight decay 0.05, drop path 0.1; fine-tuning adds layer-wise
  lr decay 0.65 as in BEiT / MAE fine-tuning (each block's lr is `layer_decay` times the
  next one's, so the new head trains at the full rate and the patch embedding at the smallest).
- ConvNeXt: the same with layer decay 0.8 (ConvNeXt fine-tuning).
- Convolutional networks (ResNet, VGG, ...): SGD with Nesterov momentum and cosine decay;
  fine-tuning uses a 10x lower lr for the pretrained backbone than for the new head.
- Linear probe (MAE protocol): backbone frozen, head only, SGD, no weight decay, light aug.
- Transfer (`finetune`, and `auto`, the default when weights are given): batch size, epochs
  (a floor of optimizer steps) and warm-up steps from the number of training images, by the
  rules of `visionzoo.training.recipes` (BiT-HyperRule, fastai's fine_tune, LP-FT); a new
  classifier starts at zero (BiT) instead of the reference's ImageNet initialisation.
- Named recipes (`cifar-speed`: airbench94's, for the airbench family): one published recipe set
  whole, whatever the model's style (`visionzoo.training.recipes.CIFAR_SPEED`); the rest from `scratch`.

Learning rates scale linearly with the global batch size (`base_lr * batch / 256`), except
in `auto`, whose rates were chosen at its small batches. Every field can be overridden; the
resolved settings are written to the run folder, with the rule that chose each one
(`TrainSettings.sources`, config.json's `settings_source`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from visionzoo.data.resize import RESIZE_MODES
from visionzoo.errors import SettingError
from visionzoo.training.balance import BALANCE_MODES, choose_balance
from visionzoo.training.recipes import NAMED_RECIPES

__all__ = ["TrainSettings", "RECIPES", "ADAPT_METHODS", "resolve_settings", "check_settings", "model_style"]

RECIPES = ("scratch", "finetune", "linear-probe", "auto", *NAMED_RECIPES)  # named: training.recipes
ADAPT_METHODS = ("full", "lora", "freeze", "lp-ft")  # see training.adapt


@dataclass
class TrainSettings:
    """Every knob of a run. None means "the recipe decides"."""

    recipe: str | None = None  # None: auto with pretrained weights, else scratch
    epochs: int | None = None  # None: 10, or the transfer recipes' data-size rule
    batch_size: int | None = None  # global, split across processes under torchrun; None: 64 or the data-size rule
    optimizer: str | None = None  # sgd | adamw
    lr: float | None = None  # peak lr of the head group; None: base_lr * batch_size / 256
    base_lr: float | None = None
    head_lr_scale: float | None = None  # head lr / backbone lr when no layer decay
    layer_decay: float | None = None  # layer-wise lr decay; 1.0 or None disables
    momentum: float = 0.9
    weight_decay: float | None = None
    warmup_epochs: float | None = None
    warmup_steps: int | None = None  # overrides warmup_epochs; the transfer recipes set it
    warmup_start_ratio: float = 0.0  # the warm-up starts at lr * this (airbench94: 0.2)
    schedule: str = "cosine"  # after warm-up: cosine | linear decay to lr * min_lr_ratio
    min_lr_ratio: float = 0.0  # the decay ends at lr * min_lr_ratio
    norm_lr_scale: float = 1.0  # lr multiplier for normalisation layers' parameters (airbench94: 64)
    norm_weight_decay: bool = False  # decay norms and biases too, per step as much as the weights (airbench94)
    lookahead: int = 0  # Lookahead every N optimizer steps (0: off); see optim.Lookahead
    lookahead_decay: float = 0.95 ** 5  # the slow weights' largest decay, reached at the end of training
    label_smoothing: float | None = None
    augment: str | None = None  # none | crop | light | medium | strong
    crop_padding: int | None = None  # the crop preset's shift range in pixels; None: image size / 8
    alternate_flip: bool = False  # crop preset: each image mirrored every other epoch instead of at random
    mixup: float = 0.0
    cutmix: float = 0.0
    drop_path_rate: float | None = None
    drop_rate: float | None = None
    image_size: int | tuple[int, int] | None = None  # one side, or (H, W) for rectangular inputs
    ema: bool | None = None  # keep an EMA of the weights, validated beside them; None: the recipe's (off)
    ema_decay: float | None = None  # None: 0.9998, or in transfer runs from the steps (recipes.transfer_plan)
    grad_accum: int = 1
    clip_grad: float | None = None
    precision: str = "auto"  # auto | fp32 | bf16 | fp16
    channels_last: bool | None = None  # None: on, the layout every command runs a model in (factory.layout)
    compile: bool = False
    class_balance: str = "auto"  # auto | none | weights | effective | sampler | logit-adjust (training.balance)
    balance_beta: float = 0.999  # effective: Cui et al.'s beta
    balance_tau: float = 1.0  # logit-adjust: Menon et al.'s tau
    resize_mode: str | None = None  # crop | squash | letterbox (data.resize); None: the model's preprocessing
    early_stopping: int | None = None  # validations without improvement before stopping (0: never); None: 2 in
    # transfer runs (recipes.TRANSFER_PATIENCE), never otherwise
    seed: int = 0
    deterministic: bool = False
    workers: int | None = None
    val_fraction: float = 0.1
    max_unpack_gb: float | None = None  # what an archive may unpack to; None: data.archives' cap
    image_column: str | None = None  # shards' image member / a Hugging Face dataset's image column; None: found
    label_column: str | None = None  # shards' label member / a Hugging Face dataset's label column; None: found
    cache: bool | None = None  # decode once into a uint8 cache (memory, or memory-mapped); None: on for transfer recipes
    cache_size: int | None = None
    scan: bool = False
    checkpoint_every: int | None = None  # optimizer steps; None: epoch ends only
    log_every: int = 10
    tta_flip: bool = False  # validation averages logits of the image and its mirror
    tta_shift: int = 0  # and, when > 0, of those views shifted this many pixels (see evaluate.tta_logits)
    val_every: int = 1  # validate every N epochs (and always after the last)
    tensorboard: bool = True
    track: str | None = None  # mlflow | wandb: also log to that tracker (training.tracking); None: none
    track_uri: str | None = None  # MLflow's tracking URI (default MLFLOW_TRACKING_URI), W&B's server
    plots: bool = True
    progress: bool = True
    device: str | None = None
    freeze_backbone: bool | None = None
    exclude: str | None = None  # a list of files to leave out (e.g. audit/label_issues.csv); see data/exclude.py
    # What the head means (issue 21): multi-label training, calibration and unknowns, fitted after training.
    task: str | None = None  # multiclass | multilabel; None: as the data says
    loss: str | None = None  # multilabel: bce (default) | asl; multiclass: cross-entropy always
    threshold: float | None = None  # multilabel: one threshold for every class instead of F1-tuned ones
    calibrate: bool = True  # fit temperature scaling on validation after training
    reject: bool = True  # fit an OOD score threshold on validation ("unknown" below it)
    ood_score: str = "energy"  # energy | msp; see visionzoo.metrics.calibration
    ood_keep: float = 0.95  # share of in-distribution validation images the OOD threshold keeps
    freeze_stages: int | None = None  # freeze the stem and the first N stages (see training.freeze)
    head_init_std: float | None = None  # a NEW classifier's weights ~ N(0, std), 0: zeros; None: the reference init
    probe_init: bool | None = None  # LP-FT: start the new head from a linear probe on the training embeddings
    freeze_bn: bool | None = None  # BatchNorm keeps its running statistics (eval mode) while its affine params train
    # filled by resolve_settings: which rule chose each setting; as requested, "user" for each setting the caller
    # gave (`train` records them), so that a given value wins over a named recipe's even where it is the default
    sources: dict[str, str] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    # How much of the network trains (training.adapt): full | lora | freeze | lp-ft; None: full
    adapt: str | None = None
    lora_rank: int = 8
    lora_alpha: float | None = None  # None: 2 x rank
    lora_mlp: bool = False  # LoRA on the MLP layers too, not only attention
    lp_epochs: int | None = None  # lp-ft: epochs of linear probing first; None: a quarter of the run
    grad_checkpointing: bool | None = None  # recompute block activations in backward; None: on under lora
    # Distillation (training.distill): a run folder or model name (with its default weights)
    teacher: str | None = None
    distill: str = "soft"  # soft: KL at the temperature plus CE (Hinton et al.); hard: DeiT's hard labels
    distill_alpha: float = 0.5  # weight of the distillation term; CE gets 1 - alpha
    distill_temperature: float = 4.0
    teacher_cache: bool = False  # reuse the teacher's logits for a view of an image already seen

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def model_style(name: str | None) -> str:
    """'vit', 'convnext' or 'convnet': which family of recipes a model follows (its card's `recipe_style`)."""
    if not name:
        return "convnet"
    from visionzoo.registry import get_card

    return get_card(name).recipe_style


_DEFAULTS: dict[tuple[str, str], dict[str, Any]] = {
    ("scratch", "convnet"): dict(optimizer="sgd", base_lr=0.2, weight_decay=5e-4, warmup_epochs=1.0,
                                 label_smoothing=0.1, augment="light", head_lr_scale=1.0, drop_path_rate=0.0),
    ("scratch", "vit"): dict(optimizer="adamw", base_lr=5e-4, weight_decay=0.05, warmup_epochs=5.0,
                             label_smoothing=0.1, augment="medium", head_lr_scale=1.0, drop_path_rate=0.1),
    ("scratch", "convnext"): dict(optimizer="adamw", base_lr=1e-3, weight_decay=0.05, warmup_epochs=5.0,
                                  label_smoothing=0.1, augment="medium", head_lr_scale=1.0, drop_path_rate=0.1),
    ("finetune", "convnet"): dict(optimizer="sgd", base_lr=0.01, weight_decay=1e-4, warmup_epochs=1.0,
                                  label_smoothing=0.1, augment="light", head_lr_scale=10.0, drop_path_rate=0.0),
    ("finetune", "vit"): dict(optimizer="adamw", base_lr=5e-4, weight_decay=0.05, warmup_epochs=5.0,
                              label_smoothing=0.1, augment="medium", layer_decay=0.65, head_lr_scale=1.0,
                              drop_path_rate=0.1),
    ("finetune", "convnext"): dict(optimizer="adamw", base_lr=2.5e-4, weight_decay=0.05, warmup_epochs=5.0,
                                   label_smoothing=0.1, augment="medium", layer_decay=0.8, head_lr_scale=1.0,
                                   drop_path_rate=0.1),
    ("linear-probe", "any"): dict(optimizer="sgd", base_lr=0.1, weight_decay=0.0, warmup_epochs=0.0,
                                  label_smoothing=0.0, augment="light", head_lr_scale=1.0, drop_path_rate=0.0,
                                  freeze_backbone=True),
}


# `auto`: fastai's fine_tune in spirit (AdamW, discriminative rates: the body at 1/10 of the head,
# warm-up then cosine, per step) and BiT's zero head; the convnet row is the plain loop of issue 19
# (AdamW, head 1e-3, body 1e-4, weight decay 0.01) plus the step schedule, the stem and first two
# stages frozen (a third less compute per step), and BatchNorm kept in evaluation mode
# (`freeze_bn`): at batch 16 the batch statistics are noisy and drift away from those the
# pretrained weights were trained with. Measured by benchmarks/transfer_cpu.py (EfficientNet-Lite0,
# 300 CIFAR photos of 5 classes, 5,000 test photos, this 2-core CPU, one run each):
#     default without freeze_bn      71.9%      freeze_bn, lr 2e-3           83.0%
#     freeze_bn (the default)        83.1%      freeze_bn, lr 5e-4           82.8%
#     freeze_bn + probe_init (LP-FT) 79.0%      linear probe on embeddings   72.8%
# LP-FT's probed head (`probe_init`) is off: it lost 4 points to the zero head above. ConvNeXt
# freezes its stem and first stage: unfrozen, convnext_tiny at batch 16 peaked at 3.25 GB RSS on
# 245 photos. Rates are not batch-scaled (chosen at the small batches of the size rules); the ViT
# and ConvNeXt rows follow their fine-tuning papers' rates and are not yet measured here.
# EMA (`ema`) stays off in auto until benchmarks/transfer_cpu.py's ema arm shows it winning: with it on,
# every validation runs twice (the average and the raw weights), which on that benchmark's 5,000
# validation photos costs about as much as training. With --ema, transfer runs average over a third of
# their steps (recipes.ema_decay_for), not over the 5,000 steps of 0.9998.
_AUTO = {
    "convnet": dict(optimizer="adamw", lr=1e-3, weight_decay=0.01, label_smoothing=0.1, augment="light",
                    head_lr_scale=10.0, drop_path_rate=0.0, probe_init=False, freeze_stages=2, freeze_bn=True),
    "vit": dict(optimizer="adamw", lr=2.5e-4, weight_decay=0.05, label_smoothing=0.1, augment="light",
                layer_decay=0.65, head_lr_scale=1.0, drop_path_rate=0.1, probe_init=False),
    "convnext": dict(optimizer="adamw", lr=2.5e-4, weight_decay=0.05, label_smoothing=0.1, augment="light",
                     layer_decay=0.8, head_lr_scale=1.0, drop_path_rate=0.1, probe_init=False, freeze_stages=1),
}
for _style, _values in _AUTO.items():
    _DEFAULTS[("auto", _style)] = {"base_lr": None, "warmup_epochs": 0.0, **_values}

# A new classifier of a transfer run: zeros, as BiT. Against N(0, 0.01) this is not yet measured;
# both are far below the reference's std 0.41 for a 2-class EfficientNet head, which is what hurt.
TRANSFER_HEAD_INIT_STD = 0.0


# `auto` adapts a big transformer backbone with LoRA on a small set: full fine-tuning of an 86M-
# parameter ViT-B holds 1.4 GB of weights, gradients and AdamW moments before any activation, and
# with a few thousand images there is little for the extra capacity to learn (MMPretrain's and
# peft's image-classification LoRA results: within about a point of full fine-tuning). Smaller
# models, and families without declared LoRA targets, train every parameter.
AUTO_LORA_MIN_PARAMS = 80e6
AUTO_LORA_MAX_IMAGES = 20_000


def _auto_adapt(recipe: str, model_name: str | None, num_train: int | None) -> tuple[str, str]:
    """(method, why) when --adapt is not given."""
    if recipe == "auto" and model_name and num_train is not None and num_train < AUTO_LORA_MAX_IMAGES:
        from visionzoo.factory import model_complexity
        from visionzoo.registry import family_facts, get_card, list_models

        if model_name in set(list_models()) and family_facts(get_card(model_name).family).lora_targets is not None:
            params = model_complexity(model_name)["params"]
            if params >= AUTO_LORA_MIN_PARAMS:
                return "lora", (f"auto: a {params / 1e6:.0f}M-parameter {get_card(model_name).family} backbone on "
                                f"{num_train} images (< {AUTO_LORA_MAX_IMAGES:,}): LoRA, with its weights, gradients "
                                f"and AdamW state of {16 * params / 2**30:.1f} GiB spared; --adapt full to train all")
    return "full", "default: every parameter trains"


def resolve_settings(settings: TrainSettings, model_name: str | None, *, native_size: int | None = None,
                     pretrained: bool = False, num_train: int | None = None,
                     num_val: int | None = None, class_counts: Any = None,
                     multilabel: bool = False) -> TrainSettings:
    """Fill every None from the recipe for this model's style; returns a new object whose `sources`
    say which rule chose each setting ("user" for those given), after `check_settings`.

    `pretrained` picks `auto` when no recipe is named; `num_train` and `num_val` (image counts)
    feed the transfer recipes' data-size rules (`visionzoo.training.recipes`); `class_counts` (training
    images per class) and `multilabel` settle `class_balance="auto"` (`training.balance.choose_balance`)."""
    resolved = dataclasses.replace(settings, sources={}, image_size=_image_size(settings.image_size))
    sources = resolved.sources
    for f in dataclasses.fields(TrainSettings):
        if f.name in ("sources", "extra") or getattr(settings, f.name) is None:
            continue
        given = (f.name in settings.sources or f.default is dataclasses.MISSING
                 or getattr(settings, f.name) != f.default)
        sources[f.name] = "user" if given else "default"
    if resolved.recipe is None:
        resolved.recipe = "auto" if pretrained else "scratch"
        sources["recipe"] = "auto: weights were given (--pretrained)" if pretrained else "scratch: no weights given"
    if resolved.recipe not in RECIPES:
        raise SettingError(f"unknown recipe {resolved.recipe!r}; choose one of {', '.join(RECIPES)}")
    if resolved.recipe in NAMED_RECIPES:
        _apply_named_recipe(resolved, num_train)
    _apply_recipe(resolved, settings, model_style(model_name), num_train)
    _adjust_to_the_run(resolved, settings, native_size=native_size, num_train=num_train, num_val=num_val)
    if resolved.adapt is None:
        resolved.adapt, sources["adapt"] = _auto_adapt(resolved.recipe, model_name, num_train)
    resolved.class_balance, why = choose_balance(resolved.class_balance, class_counts, multilabel=multilabel)
    if why != "user":
        sources["class_balance"] = why
    check_settings(resolved)
    return resolved


def _image_size(value: Any) -> int | tuple[int, int] | None:
    """One side, or (H, W) when the sides differ; a list from the command line or a run's config.json."""
    if value is None or isinstance(value, int):
        return value
    sides = [int(side) for side in value]
    if len(sides) not in (1, 2) or min(sides) < 1:
        raise SettingError(f"image_size must be one side or H W, in pixels; got {value}")
    return sides[0] if len(sides) == 1 or sides[0] == sides[1] else (sides[0], sides[1])


def _apply_named_recipe(resolved: TrainSettings, num_train: int | None) -> None:
    """Set what a named recipe (`recipes.NAMED_RECIPES`) sets, where the user gave nothing: its fixed settings,
    then those that depend on the run (`recipes.named_plan`); `_apply_recipe` fills the rest."""
    from visionzoo.training.recipes import CIFAR_SPEED, named_plan

    sources, recipe = resolved.sources, resolved.recipe
    for name, value in CIFAR_SPEED.items():
        if sources.get(name) != "user":
            setattr(resolved, name, value)
            sources[name] = f"recipe {recipe} (airbench94, Jordan 2024)"
    for name, (value, why) in named_plan(recipe, num_train, epochs=resolved.epochs, batch_size=resolved.batch_size,
                                         device=resolved.device).items():
        if sources.get(name) != "user" and not (name == "warmup_steps" and sources.get("warmup_epochs") == "user"):
            setattr(resolved, name, value)
            sources[name] = why


def _apply_recipe(resolved: TrainSettings, given: TrainSettings, style: str, num_train: int | None) -> None:
    """Fill the Nones of `resolved` from the transfer recipes' data-size rules and the recipe table (a named
    recipe's gaps from `scratch`)."""
    from visionzoo.training.recipes import TRANSFER_RECIPES, transfer_plan

    sources = resolved.sources
    named = resolved.recipe in NAMED_RECIPES
    table = "scratch" if named else resolved.recipe
    key = (table, "any") if table == "linear-probe" else (table, style)
    defaults = dict(_DEFAULTS[key])
    defaults.setdefault("layer_decay", 1.0)
    defaults.setdefault("freeze_backbone", False)
    transfer = resolved.recipe in TRANSFER_RECIPES
    if transfer and num_train is not None:
        for name, (value, why) in transfer_plan(num_train, batch_size=given.batch_size, epochs=given.epochs,
                                                warmup_steps=given.warmup_steps,
                                                early_stopping=given.early_stopping,
                                                ema_decay=given.ema_decay).items():
            if getattr(resolved, name) is None:
                setattr(resolved, name, value)
                sources[name] = why
    if transfer or resolved.recipe == "linear-probe":
        defaults.setdefault("head_init_std", TRANSFER_HEAD_INIT_STD)
        defaults.setdefault("cache", True)
    for name, value in (("epochs", 10), ("batch_size", 64), ("cache", False), ("probe_init", False),
                        ("freeze_bn", False), ("channels_last", True), ("ema", False), ("ema_decay", 0.9998)):
        defaults.setdefault(name, value)
    for name, value in defaults.items():
        if getattr(resolved, name) is None and value is not None:
            setattr(resolved, name, value)
            sources[name] = f"recipe {resolved.recipe} ({style})"
    if sources.get("channels_last", "user") not in ("user", "default") and resolved.channels_last and not named:
        sources["channels_last"] = ("channels-last memory (NHWC): the layout oneDNN's CPU convolutions and cuDNN's "
                                    "tensor cores run fastest in, and the one evaluate, predict and serve run the "
                                    "model in (one number)")
    if "head_init_std" in sources and sources["head_init_std"] != "user":
        sources["head_init_std"] = "a new head starts at zero in transfer runs (BiT, Kolesnikov et al., 2020)"


def _adjust_to_the_run(resolved: TrainSettings, given: TrainSettings, *, native_size: int | None,
                       num_train: int | None, num_val: int | None) -> None:
    """The rules that depend on the run's length and data: warm-up, lr from the batch, validation
    interval, small built-in images."""
    from visionzoo.training.recipes import TRANSFER_RECIPES

    sources = resolved.sources
    # Short runs get a proportionally short warm-up unless the user set one.
    if given.warmup_epochs is None and resolved.warmup_steps is None:
        resolved.warmup_epochs = min(resolved.warmup_epochs, 0.1 * resolved.epochs)
        sources["warmup_epochs"] = sources.get("warmup_epochs", "recipe") + ", at most 10% of the epochs"
    if resolved.lr is None:
        resolved.lr = resolved.base_lr * resolved.batch_size / 256
        sources["lr"] = f"base_lr {resolved.base_lr:g} x batch {resolved.batch_size} / 256"
    # Validation that costs more than a training epoch (forward and backward, about three forward
    # passes per image) runs at the end only in transfer runs, unless asked for.
    transfer = resolved.recipe in TRANSFER_RECIPES
    if transfer and given.val_every == 1 and num_val and num_train and num_val > 3 * num_train:
        resolved.val_every = resolved.epochs
        sources["val_every"] = (f"{num_val} validation images cost more than an epoch of training on "
                                f"{num_train}: validate after the last epoch only")
    # Small built-in images (generated shapes) train at their own size from scratch, with the
    # small-image augmentation, unless told otherwise.
    if resolved.recipe == "scratch" and native_size is not None and native_size <= 64:
        if resolved.image_size is None:
            resolved.image_size = native_size
            sources["image_size"] = "the data's native size (small images, from scratch)"
        if given.augment is None:
            resolved.augment = "crop"
            sources["augment"] = "small images from scratch: pad-and-crop"
    if resolved.drop_rate is None:
        resolved.drop_rate = 0.0
    if resolved.freeze_stages is not None and resolved.freeze_stages < 0:
        resolved.freeze_stages = None  # -1 from the command line: nothing frozen


# One-of settings: (name, allowed values, what the choice is called in the message)
_CHOICES = (("optimizer", ("sgd", "adamw"), "optimizer"), ("schedule", ("cosine", "linear"), "schedule"),
            ("precision", ("auto", "fp32", "bf16", "fp16"), "precision"), ("adapt", ADAPT_METHODS, "adapt method"),
            ("distill", ("soft", "hard"), "distillation"),
            ("class_balance", BALANCE_MODES[1:], "class balance"))


def check_settings(s: TrainSettings) -> None:
    """Raise a SettingError naming the first resolved setting out of its range, with its value."""
    if s.head_init_std is not None and not s.head_init_std >= 0:
        raise SettingError(f"head_init_std must be 0 (zeros) or a positive std, got {s.head_init_std}")
    if s.early_stopping is not None and s.early_stopping < 0:
        raise SettingError(f"early_stopping must be 0 (never) or a number of validations, got {s.early_stopping}")
    for name in ("epochs", "batch_size", "grad_accum", "val_every"):
        if getattr(s, name) < 1:
            raise SettingError(f"{name.replace('_', '-')} must be at least 1, got {getattr(s, name)}")
    if not s.lr >= 0:  # also catches NaN; 0 trains nothing but BatchNorm statistics
        raise SettingError(f"lr must be 0 or more, got {s.lr}")
    if not s.weight_decay >= 0:
        raise SettingError(f"weight_decay must be 0 or more, got {s.weight_decay}")
    if not 0 <= s.ema_decay < 1:
        raise SettingError(f"ema_decay must be in [0, 1), got {s.ema_decay}")
    if not 0 <= s.momentum < 1:
        raise SettingError(f"momentum must be in [0, 1), got {s.momentum}")
    if s.track not in (None, "mlflow", "wandb"):
        raise SettingError(f"track must be mlflow or wandb, got {s.track!r}")
    for name, allowed, what in _CHOICES:
        if getattr(s, name) not in allowed:
            choices = " or ".join(allowed) if len(allowed) == 2 else ", ".join(allowed[:-1]) + " or " + allowed[-1]
            raise SettingError(f"unknown {what} {getattr(s, name)!r}; choose {choices}")
    if s.resize_mode is not None and s.resize_mode not in RESIZE_MODES:
        raise SettingError(f"unknown resize mode {s.resize_mode!r}; choose crop, squash or letterbox")
    if not 0 <= s.balance_beta < 1 or not s.balance_tau >= 0:
        raise SettingError(f"balance_beta must be in [0, 1) and balance_tau 0 or more, got {s.balance_beta} and "
                           f"{s.balance_tau}")
    if s.tta_shift < 0:
        raise SettingError(f"tta_shift must be 0 (off) or a positive number of pixels, got {s.tta_shift}")
    if not 0 <= s.warmup_start_ratio <= 1:
        raise SettingError(f"warmup_start_ratio must be in [0, 1], got {s.warmup_start_ratio}")
    if s.norm_lr_scale <= 0:
        raise SettingError(f"norm_lr_scale must be positive, got {s.norm_lr_scale}")
    if s.lookahead < 0 or not 0 <= s.lookahead_decay < 1:
        raise SettingError(f"lookahead must be 0 (off) or a number of steps, and lookahead_decay in [0, 1); got "
                           f"{s.lookahead} and {s.lookahead_decay}")
    if s.crop_padding is not None and s.crop_padding < 0:
        raise SettingError(f"crop_padding must be 0 or more pixels, got {s.crop_padding}")
    if s.lora_rank < 1 or (s.lora_alpha is not None and not s.lora_alpha > 0):
        raise SettingError(f"lora_rank must be at least 1 and lora_alpha positive, got {s.lora_rank} and "
                           f"{s.lora_alpha}")
    if s.adapt == "lp-ft" and s.lp_epochs is not None and not 1 <= s.lp_epochs < s.epochs:
        raise SettingError(f"lp_epochs must be between 1 and epochs - 1 ({s.epochs - 1}), got {s.lp_epochs}")
    if not 0 <= s.distill_alpha <= 1 or not s.distill_temperature > 0:
        raise SettingError(f"distill_alpha must be in [0, 1] and distill_temperature positive, got "
                           f"{s.distill_alpha} and {s.distill_temperature}")
    if s.teacher_cache and (s.mixup or s.cutmix):
        raise SettingError("teacher_cache cannot reuse logits of mixed images (mixup / cutmix); turn one of them off")
