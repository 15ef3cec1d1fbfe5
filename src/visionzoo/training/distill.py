"""Knowledge distillation: `--teacher RUN_DIR_OR_MODEL [--distill soft|hard]`.

- `soft` (Hinton et al., 2015, "Distilling the Knowledge in a Neural Network"):
  `(1 - alpha) * CE(student, labels) + alpha * T^2 * KL(softmax(teacher / T) || softmax(student / T))`;
  the T^2 keeps the soft term's gradients at the scale of the hard term's as T changes.
- `hard` (Touvron et al., 2021, DeiT): `(1 - alpha) * CE(student, labels) + alpha * CE(student,
  argmax teacher)`; DeiT uses alpha 0.5.
- A distilled DeiT student (`deit_*_distilled_*`) returns (class-token logits, distillation-token
  logits) in training mode: the class token takes the label term and the distillation token the
  teacher's, as in DeiT; at evaluation it averages its two heads (deit.py).

The teacher is a run folder (its `best/`), a saved model folder or a registered model name (with
its default weights). It runs in inference mode, under bf16 autocast where the device computes bf16
natively (CUDA with bf16, a CPU with AVX512-BF16 or AMX), else in float32; it sees exactly the
student's (augmented, mixed) batch, re-normalised with its own mean and std and resized to its
input size when they differ.

`--teacher-cache` keeps the teacher's logits per view of an image, keyed by a digest of the view's
pixels. The fast input path (`augment` crop or none, whole-image evaluation) crops and flips each
image from its sampler seed, so a view is a function of the image and its augmentation seed and
recurs whenever the same shift and flip are drawn again; with `augment none` every epoch after
the first is served from the cache, with `crop` the hit rate grows with the epochs and falls with
the padding (2 x (2 x padding + 1)^2 views per image). The cache does not apply with mixup or
CutMix (mixed images never recur; refused), and random torchvision augmentation (the `light`
and stronger presets) almost never repeats a view. The cache lives in memory: a resumed run
recomputes the logits it lost, which are equal to the last bit only in float32 (bf16 results can
depend on the batch a view was computed in), so bit-exact resume is guaranteed without the cache.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from visionzoo.errors import SettingError
from visionzoo.factory import class_names, create_model, data_config, load_model
from visionzoo.runtime import bf16_native
from visionzoo.training.settings import TrainSettings
from visionzoo.training.step import LossFn

__all__ = ["Teacher", "DistillTargets", "load_teacher", "distillation_loss"]


class DistillTargets(NamedTuple):
    """The targets a distillation loss is given: the usual ones and the teacher's logits."""

    labels: torch.Tensor  # class indices, or soft (N, C) targets after mixup / CutMix
    teacher_logits: torch.Tensor  # (N, C) float32


class Teacher:
    """A frozen model giving logits for the student's batches, with the optional per-view cache."""

    def __init__(self, model: nn.Module, description: str, *, device: torch.device, student_config: dict[str, Any],
                 cache: bool = False, autocast_dtype: torch.dtype | None = None):
        self.model = model.to(device).eval()
        for parameter in self.model.parameters():
            parameter.requires_grad_(False)
        self.description = description
        self.device = device
        self.autocast_dtype = autocast_dtype
        teacher_config = data_config(model)
        self.size = int(teacher_config["input_size"][-1])
        student_mean = torch.tensor(student_config["mean"], dtype=torch.float32, device=device).view(1, -1, 1, 1)
        student_std = torch.tensor(student_config["std"], dtype=torch.float32, device=device).view(1, -1, 1, 1)
        mean = torch.tensor(teacher_config["mean"], dtype=torch.float32, device=device).view(1, -1, 1, 1)
        std = torch.tensor(teacher_config["std"], dtype=torch.float32, device=device).view(1, -1, 1, 1)
        # the student's normalised input -> the teacher's: x_t = (x_s * std_s + mean_s - mean_t) / std_t
        self.renormalise = None
        if not (torch.equal(student_mean, mean) and torch.equal(student_std, std)):
            self.renormalise = (student_std / std, (student_mean - mean) / std)
        self.cache: dict[bytes, torch.Tensor] | None = {} if cache else None
        self.hits = self.misses = 0

    def _forward(self, images: torch.Tensor) -> torch.Tensor:
        if self.renormalise is not None:
            scale, shift = self.renormalise
            images = images.float() * scale + shift
        if images.shape[-1] != self.size or images.shape[-2] != self.size:
            images = F.interpolate(images.float(), size=(self.size, self.size), mode="bilinear", align_corners=False)
        with torch.autocast(self.device.type, dtype=self.autocast_dtype, enabled=self.autocast_dtype is not None):
            logits = self.model(images)
        if isinstance(logits, tuple):  # a distilled DeiT teacher in training mode would: never in eval mode
            logits = sum(logits) / len(logits)
        return logits.float()

    @staticmethod
    def keys(raw_images: torch.Tensor) -> list[bytes]:
        """One digest per image of a batch (the views' pixels as the loader gave them)."""
        flat = raw_images.detach().reshape(len(raw_images), -1).cpu().contiguous()
        return [hashlib.blake2b(row.numpy().tobytes(), digest_size=16).digest() for row in flat]

    @torch.inference_mode()
    def logits(self, images: torch.Tensor, keys: list[bytes] | None = None) -> torch.Tensor:
        """The teacher's float32 logits for `images` (the student's normalised batch); with the cache
        and `keys` (`Teacher.keys` of the same images), only views not seen before are computed."""
        if self.cache is None or keys is None:
            return self._forward(images).clone()
        missing = [i for i, key in enumerate(keys) if key not in self.cache]
        self.hits += len(keys) - len(missing)
        self.misses += len(missing)
        if missing:
            computed = self._forward(images[missing]).cpu()
            for row, i in enumerate(missing):
                self.cache[keys[i]] = computed[row].clone()
        return torch.stack([self.cache[key] for key in keys]).to(self.device)

    def stats(self) -> dict[str, Any]:
        seen = self.hits + self.misses
        return {"teacher": self.description, "precision": "bf16" if self.autocast_dtype == torch.bfloat16 else "fp32",
                **({"cache_hits": self.hits, "cache_misses": self.misses,
                    "cache_hit_rate": round(self.hits / seen, 4) if seen else None} if self.cache is not None else {})}


def load_teacher(spec: str, *, num_classes: int, classes: list[str], device: torch.device,
                 student_config: dict[str, Any], cache: bool = False) -> Teacher:
    """The teacher named by `spec`: a run folder (its best/), a saved model folder, or a registered
    model name with its default weights. Its outputs must be the student's classes."""
    path = Path(spec)
    if path.is_dir():
        folder = path / "best" if (path / "best" / "config.json").exists() else path
        model = load_model(folder)
        description = str(folder)
    elif path.exists():
        raise SettingError(f"--teacher {spec} is a file; pass a run folder, a saved model folder or a model name")
    else:
        model = create_model(spec, pretrained=True)
        description = f"{spec} (default weights)"
    outputs = int(getattr(model, "num_classes", -1))
    if outputs != num_classes:
        raise SettingError(f"the teacher {description} has {outputs} outputs but the data has {num_classes} classes; "
                         "distil from a teacher trained on the same classes (e.g. a run folder of this data)")
    names = class_names(model)
    if names is not None and list(names) != list(classes):
        raise SettingError(f"the teacher {description}'s classes {list(names)[:5]}... differ from the data's "
                         f"{list(classes)[:5]}...; distil from a teacher trained on the same classes")
    dtype = torch.bfloat16 if bf16_native(device) else None
    return Teacher(model, description, device=device, student_config=student_config, cache=cache,
                   autocast_dtype=dtype)


def distillation_loss(base_loss: LossFn, settings: TrainSettings) -> LossFn:
    """The run's loss (`losses.build_loss`) with the distillation term; takes `DistillTargets`."""
    alpha, temperature, hard = settings.distill_alpha, settings.distill_temperature, settings.distill == "hard"

    def teacher_term(logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
        logits = logits.float()
        if hard:
            return F.cross_entropy(logits, teacher_logits.argmax(dim=1))
        return F.kl_div(F.log_softmax(logits / temperature, dim=1), F.log_softmax(teacher_logits / temperature, dim=1),
                        reduction="batchmean", log_target=True) * temperature ** 2

    def loss(logits: torch.Tensor | tuple[torch.Tensor, torch.Tensor], targets: DistillTargets) -> torch.Tensor:
        labels, teacher_logits = targets
        class_logits, distill_logits = logits if isinstance(logits, tuple) else (logits, logits)
        return (1 - alpha) * base_loss(class_logits, labels) + alpha * teacher_term(distill_logits, teacher_logits)

    return loss
