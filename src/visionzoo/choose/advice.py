"""Which architecture should I use? A shortlist for a deployment, a data budget and constraints.

The judgement encoded here is the field's standing advice, made concrete with numbers:
- candidates are the registered variants with published ImageNet weights, ranked by their
  published top-1 (from the weight catalog) among those that meet every constraint;
- speed is MEASURED on this machine for the target (edge: batch 1 on one CPU thread, a stand-in
  for a small device; cpu: batch 1 on all threads; gpu: throughput at batch 64), or, with
  measure=False, ESTIMATED from GMACs scaled by a quick calibration of two models on this machine;
- the adaptation follows the data budget: with a handful of images per class a linear probe on a
  frozen pretrained backbone; with more, fine-tuning; training from scratch only with a lot of data.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Callable

from visionzoo.choose.benchmark import GPU_BATCH, TARGETS, target_settings
from visionzoo.choose.candidates import Candidate, Constraints, candidate_pool, nothing_fits, pareto_front
from visionzoo.errors import SettingError
from visionzoo.registry import family_facts

__all__ = ["Advice", "advise", "left_out", "plot_advice", "plot_evolution", "recommended_recipe"]

CALIBRATION_MODELS = ("resnet18", "mobilenetv3_large_100")


@dataclass
class Advice:
    target: str
    constraints: dict[str, Any]
    measured: bool
    method: str  # how latency was obtained, in words
    picks: list[dict[str, Any]]
    candidates: list[Candidate] = field(default_factory=list)
    message: str = ""  # when nothing fits: which constraint rules everything out
    left_out: dict[str, str] = field(default_factory=dict)  # registered models never ranked, each with why

    def as_dict(self) -> dict[str, Any]:
        return {"target": self.target, "constraints": self.constraints, "measured": self.measured,
                "method": self.method, "picks": self.picks, "message": self.message, "left_out": self.left_out}


def _measure(candidate: Candidate, target: str) -> None:
    from visionzoo.choose.benchmark import benchmark_model

    result = benchmark_model(candidate.name, target_settings(target))
    if target == "gpu":
        candidate.latency_ms = 1e3 / result.throughput[GPU_BATCH]
    else:
        candidate.latency_ms = result.latency_ms["p50"]
    # weights plus the peak growth of one forward pass: what the process needs to serve the model
    weights_mb = candidate.params * 4 / 2**20
    candidate.memory_mb = weights_mb + (result.peak_memory_mb or 0.0)
    candidate.measured = True
    candidate.latency_note = result.cache_note


def _calibrate(target: str, measure: Callable[[Candidate, str], None]) -> tuple[float, float]:
    """Milliseconds per GMAC (a least-squares line through the origin) from two quick measurements."""
    from visionzoo.factory import model_complexity
    from visionzoo.registry import get_card

    points = []
    for name in CALIBRATION_MODELS:
        complexity = model_complexity(name)
        probe = Candidate(name=name, weights="", family=get_card(name).family, year=0, top1=0.0,
                          params=complexity["params"], gmacs=complexity["gmacs"])
        measure(probe, target)
        points.append((probe.gmacs, probe.latency_ms))
    slope = sum(g * t for g, t in points) / sum(g * g for g, _ in points)
    return slope, 0.0


def left_out() -> dict[str, str]:
    """{architecture: why}: the registered models with catalogued weights but no published ImageNet-1k
    top-1, which the shortlist and the evolution chart cannot rank (a feature backbone, or a classifier
    whose authors publish no accuracy), said rather than silently dropped."""
    from visionzoo.registry import list_models
    from visionzoo.weights.catalog import default_weight, list_weights

    ranked = {e.architecture for e in list_weights()
              if e.num_classes == 1000 and e.imagenet and e.imagenet.get("top1") is not None}
    out = {}
    for name in list_models():
        entry = default_weight(name)
        if entry is not None and name not in ranked:
            why = [note for note in entry.notes if "ImageNet top-1" in note]  # the catalog's own reason
            out[name] = why[0] if why else "no published ImageNet-1k top-1 in the catalog"
    return out


def recommended_recipe(images_per_class: int | None) -> tuple[str, str]:
    """(recipe, reason) for a data budget, following the field's advice on transfer learning."""
    if images_per_class is None:
        return "finetune", "fine-tune the pretrained weights (the usual choice; give --images-per-class to refine)"
    if images_per_class < 20:
        return "linear-probe", (f"with {images_per_class} images per class, train only a linear head on the frozen "
                                "pretrained features: fine-tuning that little data overfits")
    if images_per_class < 10_000:
        return "finetune", f"with {images_per_class} images per class, fine-tune the whole pretrained network"
    return "scratch", (f"with {images_per_class} images per class there is enough data to train from scratch, "
                       "though fine-tuning usually still converges faster")


def _why(candidate: Candidate, rank: int, constraints: Constraints, target: str) -> str:
    parts = [f"{'highest' if rank == 0 else f'#{rank + 1}'} published ImageNet top-1 ({candidate.top1:.1f}%) "
             "among the models that meet every constraint"]
    if candidate.latency_ms is not None:
        unit = "ms per image at batch 64" if target == "gpu" else "ms at batch 1"
        how = "measured here" if candidate.measured else "estimated from GMACs"
        if candidate.latency_note:
            how += f" ({candidate.latency_note})"
        limit = f" (limit {constraints.latency_ms:g})" if constraints.latency_ms is not None else ""
        parts.append(f"{candidate.latency_ms:.1f} {unit}, {how}{limit}")
    parts.append(f"{candidate.params / 1e6:.1f}M params, {candidate.gmacs:.2f} GMACs")
    if target == "edge" and family_facts(candidate.family).edge:
        parts.append("built for edge devices (quantises well)")
    return "; ".join(parts)


def _command(candidate: Candidate, recipe: str) -> str:
    return (f"visionzoo train --model {candidate.name} --pretrained {candidate.weights} --recipe {recipe} "
            "--data PATH/TO/YOUR/IMAGES")


def advise(target: str = "cpu", *, latency_ms: float | None = None, max_params_m: float | None = None,
           max_memory_mb: float | None = None, images_per_class: int | None = None, min_top1: float | None = None,
           measure: bool = True, top: int = 5, max_measured: int = 24,
           progress: Callable[[str], None] | None = None,
           measure_fn: Callable[[Candidate, str], None] | None = None, data: str | None = None,
           **bakeoff_options: Any):
    """A ranked shortlist of architectures for `target` that meets every constraint given.

    With `measure=True`, latency is measured with the benchmark code for the candidates that
    could plausibly fit (at most `max_measured`, best published top-1 first; the rest are never
    recommended unmeasured). With `measure=False` it is estimated from GMACs and a calibration.

    With `data` (a folder, CSV, archive or builtin:shapes), it runs the bake-off on those images
    instead and returns a `visionzoo.choose.bakeoff.BakeoffResult`; `bakeoff_options` are
    `visionzoo.choose.bakeoff.bakeoff`'s (weights, commercial, candidates, finetune_top, budget_min, out, ...).
    """
    if data is not None:
        from visionzoo.choose.bakeoff import bakeoff

        if measure_fn is not None:  # the bake-off's (candidate, target, image_size) -> (ms, engine)
            bakeoff_options["measure_fn"] = measure_fn
        return bakeoff(data, target=target, latency_ms=latency_ms, max_params_m=max_params_m, **bakeoff_options)
    if bakeoff_options:
        raise SettingError(f"{', '.join(sorted(bakeoff_options))} apply only with data=... (the bake-off)")
    if target not in TARGETS:
        raise SettingError(f"target must be one of {', '.join(TARGETS)}, got {target!r}")
    calibrate = True  # estimates are GMACs scaled by two models measured on the target
    if target == "gpu":
        import torch

        if not torch.cuda.is_available():
            if measure:
                raise SettingError("target 'gpu' measures on a CUDA GPU and none is visible; use --no-measure to "
                                   "rank without measuring")
            if latency_ms is not None:
                raise SettingError("--latency-ms for target 'gpu' needs a CUDA GPU to calibrate the estimate on, "
                                   "and none is visible; drop --latency-ms to rank by the other constraints")
            calibrate = False  # nothing here to measure on: no latency at all rather than a CPU's
    constraints = Constraints(latency_ms, max_params_m, max_memory_mb, min_top1)
    measure_fn = measure_fn or _measure
    pool, _ = candidate_pool()
    if not pool:
        raise SettingError("no registered model has published ImageNet weights in the catalog")

    static = [c for c in pool if not {"max_params", "min_top1"} & set(constraints.violations(c))]
    slope = _calibrate(target, measure_fn)[0] if calibrate else None
    for c in pool:
        # estimate first; replaced by a measurement below where taken
        c.latency_ms = slope * c.gmacs if slope is not None else None
        c.memory_mb = c.params * 4 / 2**20 * 1.5 if max_memory_mb is not None else None
    if measure:
        plausible = [c for c in static if constraints.latency_ms is None or c.latency_ms <= 2 * constraints.latency_ms]
        for c in plausible[:max_measured]:
            if progress:
                progress(c.name)
            measure_fn(c, target)
        eligible = [c for c in static if c.measured and not constraints.violations(c)]
        method = (f"measured on this machine ({_describe(target)}) for the {min(len(plausible), max_measured)} "
                  "candidates that could fit; the others estimated from GMACs")
    elif slope is None:
        eligible = [c for c in static if not constraints.violations(c)]
        method = ("not estimated: no CUDA GPU is visible to calibrate on; ranked by published top-1 under the "
                  "other constraints (GMACs shown)")
    else:
        eligible = [c for c in static if not constraints.violations(c)]
        method = (f"estimated from GMACs at {slope:.2f} ms per GMAC, calibrated on "
                  f"{' and '.join(CALIBRATION_MODELS)} measured here ({_describe(target)})")

    recipe, recipe_reason = recommended_recipe(images_per_class)
    eligible.sort(key=lambda c: (-c.top1, c.latency_ms or 0))
    picks = [{
        "name": c.name, "weights": c.weights, "top1": c.top1, "latency_ms": c.latency_ms, "params": c.params,
        "gmacs": c.gmacs, "why": _why(c, i, constraints, target), "command": _command(c, recipe),
        "recipe": recipe, "recipe_why": recipe_reason, "measured": c.measured,
        "latency_cached": c.latency_note.startswith("cached"), "latency_note": c.latency_note,
    } for i, c in enumerate(eligible[:top])]
    message = ""
    if not picks:
        message = nothing_fits(pool, constraints.violations)
    return Advice(target=target, constraints={k: v for k, v in asdict(constraints).items() if v is not None},
                  measured=measure, method=method, picks=picks, candidates=pool, message=message,
                  left_out=left_out())


def _describe(target: str) -> str:
    return {"edge": "batch 1, one CPU thread", "cpu": "batch 1, all CPU threads",
            "gpu": f"batch {GPU_BATCH}, bf16, CUDA"}[target]


# --- pictures ------------------------------------------------------------------------------


def plot_advice(advice: Advice, path: str) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with_latency = [c for c in advice.candidates if c.latency_ms]
    pool = with_latency or advice.candidates  # no latency at all (gpu target, no GPU): against GMACs

    def x_of(c: Candidate) -> float:
        return c.latency_ms if with_latency else c.gmacs

    fig, ax = plt.subplots(figsize=(9, 6), dpi=120)
    xs, ys = [x_of(c) for c in pool], [c.top1 for c in pool]
    ax.scatter(xs, ys, c=["tab:blue" if c.measured else "lightgray" for c in pool], s=25, zorder=2,
               label="candidates (grey: estimated)")
    front = pareto_front(list(zip(xs, ys)))
    ax.plot([xs[i] for i in front], [ys[i] for i in front], "-", color="tab:orange", zorder=1, label="Pareto frontier")
    picked = {p["name"] for p in advice.picks}
    for c in pool:
        if c.name in picked:
            ax.scatter([x_of(c)], [c.top1], s=90, facecolors="none", edgecolors="tab:red", zorder=3)
            ax.annotate(c.name, (x_of(c), c.top1), textcoords="offset points", xytext=(6, 4), fontsize=8)
    if advice.constraints.get("latency_ms"):
        ax.axvline(advice.constraints["latency_ms"], color="tab:red", linestyle="--", linewidth=1, label="latency limit")
    ax.set_xscale("log")
    if with_latency:
        unit = "ms per image at batch 64" if advice.target == "gpu" else "latency at batch 1 (ms)"
        ax.set_xlabel(unit + (", measured" if advice.measured else ", estimated"))
    else:
        ax.set_xlabel("GMACs per image (latency not estimated)")
    ax.set_ylabel("published ImageNet top-1 (%)")
    ax.set_title(f"visionzoo advise --target {advice.target}")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_evolution(path: str) -> str:
    """ImageNet top-1 against GMACs (log) for each family's best default weight, coloured by year."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pool, _ = candidate_pool()
    fig, ax = plt.subplots(figsize=(10, 6.5), dpi=120)
    scatter = ax.scatter([c.gmacs for c in pool], [c.top1 for c in pool], c=[c.year for c in pool],
                         s=[20 + 400 * (c.params / 3e8) ** 0.5 for c in pool], cmap="viridis", alpha=0.75,
                         edgecolors="black", linewidths=0.4)
    best_per_family: dict[str, Candidate] = {}
    for c in pool:
        if c.family not in best_per_family or c.top1 > best_per_family[c.family].top1:
            best_per_family[c.family] = c
    for c in best_per_family.values():
        ax.annotate(f"{c.family} ({c.year})", (c.gmacs, c.top1), textcoords="offset points", xytext=(5, 3), fontsize=7)
    fig.colorbar(scatter, ax=ax, label="year")
    ax.set_xscale("log")
    ax.set_xlabel("GMACs per image (log scale)")
    ax.set_ylabel("published ImageNet top-1 (%)")
    ax.set_title("Image classification, 2012 to today (bubble size: parameters)")
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
