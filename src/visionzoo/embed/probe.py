"""k-NN and linear probes on cached embeddings (`visionzoo.embed.embeddings`).

Both answer "how good are these frozen features for my classes?" in seconds:

- k-NN: cosine similarity to every training embedding, the k nearest vote with weights
  exp(similarity / 0.07) (the weighted k-NN of Wu et al., 2018, used by DINO).
- linear: multinomial logistic regression on standardised features, fitted by L-BFGS in
  torch, with an L2 regularisation sweep from strong to weak (each fit warm-starts the next).

Hyperparameters (k, or the L2 strength) are chosen on a stratified 20% of the training
embeddings held out from fitting; the chosen model is refitted on all training embeddings and
reported on the validation embeddings: those given, else the validation split embedded with the
training ones (`embed` of a train/ val/ tree writes one file per split, `validation_split`), else
a stratified 20% of the input held out from the start. Nothing is tuned on the numbers that are
reported.

A linear probe saves as an ordinary model folder: the backbone that made the embeddings
with its classifier replaced by the probe, which predict and eval load like any other.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn as nn
import torch.nn.functional as F

from visionzoo.data.sources import stratified_split
from visionzoo.embed.embeddings import Embeddings, build_backbone, validation_split
from visionzoo.errors import SettingError
from visionzoo.factory import save_model

__all__ = ["ProbeResult", "run_probe", "knn_predict", "fit_logistic_regression", "probe_model", "save_probe_model",
           "DEFAULT_KS", "DEFAULT_WEIGHT_DECAYS"]

DEFAULT_KS = (1, 3, 5, 10, 20, 50, 100)
DEFAULT_WEIGHT_DECAYS = (1e-1, 1e-2, 1e-3, 1e-4, 1e-5)  # strong to weak: each fit warm-starts the next
SWEEP_ITERATIONS = 25  # L-BFGS iterations per strength while choosing (warm-started, so enough to rank them)
FINAL_ITERATIONS = 60
KNN_TEMPERATURE = 0.07
SELECTION_FRACTION = 0.2


@dataclass
class ProbeResult:
    method: str
    top1: float  # on the evaluation embeddings
    chosen: dict[str, float]  # {"k": 10} or {"weight_decay": 1e-4}
    selection: dict[str, float]  # hyperparameter value -> top-1 on the held-out part of the training embeddings
    confusion: torch.Tensor  # (C, C): rows true class, columns predicted
    classes: list[str]
    num_train: int
    num_eval: int
    evaluated_on: str  # "validation file", "val split in FILE" or "20% of the input held out"
    weight: torch.Tensor | None = None  # linear probe on raw (unstandardised) features: logits = x @ W.T + b
    bias: torch.Tensor | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"method": self.method, "top1": self.top1, "chosen": self.chosen,
                "selection": self.selection, "classes": self.classes, "num_train": self.num_train,
                "num_eval": self.num_eval, "evaluated_on": self.evaluated_on,
                "confusion": self.confusion.tolist()}


# --- k-NN ----------------------------------------------------------------------------------


@torch.no_grad()
def knn_predict(train_x: torch.Tensor, train_y: torch.Tensor, query_x: torch.Tensor, ks: tuple[int, ...],
                num_classes: int, temperature: float = KNN_TEMPERATURE, chunk: int = 1024) -> dict[int, torch.Tensor]:
    """Predicted classes of `query_x` for every k in `ks` at once (one similarity pass)."""
    train = F.normalize(train_x.float(), dim=-1)
    ks = tuple(sorted({min(k, len(train)) for k in ks}))
    predictions: dict[int, list[torch.Tensor]] = {k: [] for k in ks}
    for queries in F.normalize(query_x.float(), dim=-1).split(chunk):
        similarity, neighbours = (queries @ train.T).topk(max(ks), dim=-1)  # (Q, kmax), nearest first
        votes = F.one_hot(train_y[neighbours], num_classes).float() * (similarity / temperature).exp().unsqueeze(-1)
        cumulative = votes.cumsum(dim=1)  # (Q, kmax, C): the vote of the k nearest is row k - 1
        for k in ks:
            predictions[k].append(cumulative[:, k - 1].argmax(dim=-1))
    return {k: torch.cat(p) for k, p in predictions.items()}


# --- logistic regression -------------------------------------------------------------------


def fit_logistic_regression(x: torch.Tensor, y: torch.Tensor, num_classes: int, weight_decay: float,
                            init: tuple[torch.Tensor, torch.Tensor] | None = None, max_iter: int = 100
                            ) -> tuple[torch.Tensor, torch.Tensor]:
    """Multinomial logistic regression: minimise mean cross-entropy + weight_decay / 2 * |W|^2 by L-BFGS.

    The loss is convex, so full-batch L-BFGS converges in tens of iterations where SGD would
    need epochs and a learning rate. Returns (W (C, D), b (C,)).
    """
    weight = torch.zeros(num_classes, x.shape[1]) if init is None else init[0].clone()
    bias = torch.zeros(num_classes) if init is None else init[1].clone()
    weight.requires_grad_(True)
    bias.requires_grad_(True)
    optimizer = torch.optim.LBFGS([weight, bias], lr=1.0, max_iter=max_iter, history_size=20,
                                  line_search_fn="strong_wolfe", tolerance_grad=1e-6, tolerance_change=1e-9)

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(F.linear(x, weight, bias), y) + 0.5 * weight_decay * weight.square().sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(closure)
    return weight.detach(), bias.detach()


# --- the protocol --------------------------------------------------------------------------


def _align_labels(train: Embeddings, other: Embeddings) -> torch.Tensor:
    """`other`'s labels as indices into `train.classes` (the files may list classes differently)."""
    if other.classes == train.classes:
        return other.labels
    index = {name: i for i, name in enumerate(train.classes)}
    unknown = sorted(set(other.classes[int(label)] for label in other.labels) - set(index))
    if unknown:
        raise SettingError(f"the validation embeddings have classes the training ones lack: {unknown[:5]}")
    return torch.tensor([index[other.classes[int(label)]] for label in other.labels], dtype=torch.long)


def _split(labels: torch.Tensor, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    fit, held = stratified_split(labels.numpy(), SELECTION_FRACTION, seed)
    if len(held) == 0 or len(fit) == 0:
        raise SettingError(f"too few embeddings ({len(labels)}) to hold out a part for choosing hyperparameters; "
                         "embed more images (at least two per class)")
    return torch.from_numpy(fit), torch.from_numpy(held)


def _accuracy(predicted: torch.Tensor, target: torch.Tensor) -> float:
    return float((predicted == target).float().mean()) if len(target) else float("nan")


def _confusion(predicted: torch.Tensor, target: torch.Tensor, num_classes: int) -> torch.Tensor:
    return torch.bincount(target * num_classes + predicted, minlength=num_classes**2).reshape(num_classes, num_classes)


def run_probe(train: Embeddings, val: Embeddings | None = None, method: Literal["knn", "linear"] = "knn", *,
              ks: tuple[int, ...] = DEFAULT_KS, weight_decays: tuple[float, ...] = DEFAULT_WEIGHT_DECAYS,
              seed: int = 0) -> ProbeResult:
    """Choose the hyperparameter on held-out training embeddings, refit, evaluate (see module docstring).
    Without `val`, the validation split embedded with `train` is used when there is one."""
    if method not in ("knn", "linear"):
        raise SettingError(f"method must be 'knn' or 'linear', got {method!r}")
    num_classes = len(train.classes)
    x, y = train.embeddings.float(), train.labels.long()
    val = val if val is not None else validation_split(train)
    if val is not None:
        evaluated_on = (f"{val.split} split in {Path(val.source).name}" if val.split and val.source
                        else "validation file")
        eval_x, eval_y = val.embeddings.float(), _align_labels(train, val)
    else:
        keep, held = _split(y, seed)
        x, y, eval_x, eval_y = x[keep], y[keep], x[held], y[held]
        evaluated_on = f"{SELECTION_FRACTION:.0%} of the input held out"
    fit, select = _split(y, seed + 1)

    if method == "knn":
        found = knn_predict(x[fit], y[fit], x[select], ks, num_classes)
        selection = {str(k): _accuracy(p, y[select]) for k, p in found.items()}
        best_k = max(found, key=lambda k: (selection[str(k)], -k))  # ties: the smaller k
        predicted = knn_predict(x, y, eval_x, (best_k,), num_classes)[min(best_k, len(x))]
        return ProbeResult("knn", _accuracy(predicted, eval_y), {"k": best_k}, selection,
                           _confusion(predicted, eval_y, num_classes), train.classes, len(x), len(eval_y), evaluated_on)

    # Standardise with training statistics: L-BFGS converges fast on well-scaled features and one
    # L2 strength then means the same for every backbone. Folded into W and b at the end.
    mean, std = x.mean(dim=0), x.std(dim=0).clamp_min(1e-6)
    z, eval_z = (x - mean) / std, (eval_x - mean) / std
    selection, params, best = {}, None, (-1.0, None, None)
    for weight_decay in weight_decays:
        params = fit_logistic_regression(z[fit], y[fit], num_classes, weight_decay, init=params,
                                         max_iter=SWEEP_ITERATIONS)
        accuracy = _accuracy(F.linear(z[select], *params).argmax(-1), y[select])
        selection[f"{weight_decay:g}"] = accuracy
        if accuracy > best[0]:  # ties keep the stronger regularisation, fitted first
            best = (accuracy, weight_decay, params)
    _, weight_decay, params = best
    weight, bias = fit_logistic_regression(z, y, num_classes, weight_decay, init=params, max_iter=FINAL_ITERATIONS)
    predicted = F.linear(eval_z, weight, bias).argmax(-1)
    raw_weight = weight / std  # logits = ((x - mean) / std) @ W.T + b = x @ (W / std).T + (b - (W / std) @ mean)
    raw_bias = bias - raw_weight @ mean
    return ProbeResult("linear", _accuracy(predicted, eval_y), {"weight_decay": weight_decay}, selection,
                       _confusion(predicted, eval_y, num_classes), train.classes, len(x), len(eval_y), evaluated_on,
                       weight=raw_weight, bias=raw_bias)


# --- a probe as a model --------------------------------------------------------------------


def probe_model(result: ProbeResult, embeddings: Embeddings) -> nn.Module:
    """The backbone that made `embeddings` with its classifier replaced by the linear probe."""
    if result.weight is None:
        raise SettingError(f"only a linear probe can be saved as a model (this is a {result.method} probe); "
                         "rerun with --method linear")
    model = build_backbone(embeddings.model)
    model.reset_classifier(0)
    without_head = set(model.state_dict())
    model.reset_classifier(len(result.classes))
    head = {k: v for k, v in model.state_dict().items() if k not in without_head}
    weight_key = next((k for k, v in head.items() if tuple(v.shape) == tuple(result.weight.shape)), None)
    bias_key = next((k for k, v in head.items() if tuple(v.shape) == tuple(result.bias.shape)), None)
    if weight_key is None or bias_key is None:
        raise SettingError(f"the classifier of {embeddings.model.get('spec')!r} is not one linear layer of "
                         f"{result.weight.shape[1]} inputs; the probe cannot be placed in it")
    model.load_state_dict({**model.state_dict(), weight_key: result.weight, bias_key: result.bias})
    for parameter in model.parameters():
        parameter.requires_grad_(False)  # a frozen backbone and head: fine-tune by unfreezing explicitly
    return model.eval()


def save_probe_model(result: ProbeResult, embeddings: Embeddings, folder: str | Path) -> Path:
    """Write the probe as a model folder (`model.safetensors` + `config.json`) that predict and eval load."""
    model = probe_model(result, embeddings)
    save_model(model, Path(folder), classes=list(result.classes), preprocessing=dict(embeddings.data_config),
                 extra={"probe": {"method": result.method, "top1": result.top1, **result.chosen}})
    return Path(folder)
