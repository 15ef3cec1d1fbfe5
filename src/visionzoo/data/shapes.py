"""`builtin:shapes`: procedurally generated shapes, 10 classes, no download.

Options as a query: builtin:shapes?size=32&train=2000&val=500&seed=0, classes=circle,ring,...
(only these), task=multilabel (one to three shapes per image, `make_shape_sets`). A dark
background and a bright shape, each of a random hue: the class is the silhouette, never the colour.
"""

from __future__ import annotations

import urllib.parse

import numpy as np

from visionzoo.data.samples import ArraySamples, DataSplits
from visionzoo.errors import DataError

__all__ = ["SHAPE_CLASSES", "builtin_splits", "make_shapes", "make_shape_sets"]

SHAPE_CLASSES = ["circle", "ring", "triangle", "square", "pentagon", "hexagon", "star", "cross", "crescent", "arrow"]


def builtin_splits(text: str) -> DataSplits:
    """The splits of a `builtin:shapes?...` spec (see the module docstring)."""
    name, _, query = text.partition("?")
    if name != "builtin:shapes":
        raise DataError(f"unknown built-in dataset {name!r}; available: builtin:shapes")
    options = {k: v[-1] for k, v in urllib.parse.parse_qs(query).items()}
    unknown = set(options) - {"size", "train", "val", "seed", "classes", "task"}
    if unknown:
        raise DataError(f"builtin:shapes does not take {sorted(unknown)}; options: size, train, val, seed, classes, task")
    size = int(options.get("size", 32))
    train_count, val_count, seed = int(options.get("train", 2000)), int(options.get("val", 500)), int(options.get("seed", 0))
    task = options.get("task", "multiclass")
    if task not in ("multiclass", "multilabel"):
        raise DataError(f"builtin:shapes task must be multiclass or multilabel, got {task!r}")
    description = f"builtin:shapes ({train_count} train, {val_count} val, {size}px, seed {seed}"
    if task == "multilabel":
        train = make_shape_sets(train_count, size=size, seed=seed)
        val = make_shape_sets(val_count, size=size, seed=seed + 1_000_003)
        return DataSplits(list(SHAPE_CLASSES), train, val, description + ", multi-label)", size, task="multilabel")
    train = make_shapes(train_count, size=size, seed=seed)
    val = make_shapes(val_count, size=size, seed=seed + 1_000_003)
    classes = list(SHAPE_CLASSES)
    if "classes" in options:  # a subset, e.g. to hold the other shapes out as unknowns
        chosen = [name.strip() for name in options["classes"].split(",") if name.strip()]
        wrong = [name for name in chosen if name not in SHAPE_CLASSES]
        if wrong or not chosen:
            raise DataError(f"builtin:shapes has no class {wrong or chosen}; classes: {', '.join(SHAPE_CLASSES)}")
        keep = [SHAPE_CLASSES.index(name) for name in chosen]
        remap = np.full(len(SHAPE_CLASSES), -1, dtype=np.int64)
        remap[keep] = np.arange(len(keep))

        def only(samples: ArraySamples) -> ArraySamples:
            kept = samples.subset(np.flatnonzero(remap[samples.labels] >= 0))
            return ArraySamples(kept.images, remap[kept.labels], kept.names)

        train, val, classes = only(train), only(val), chosen
        description += f", classes {','.join(chosen)}"
    return DataSplits(classes, train, val, description + ")", size)


def make_shapes(count: int, *, size: int = 64, seed: int = 0) -> ArraySamples:
    """`count` images of coloured shapes on noisy backgrounds, classes balanced, deterministic in `seed`."""
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    images = np.empty((count, size, size, 3), dtype=np.uint8)
    labels = np.arange(count, dtype=np.int64) % len(SHAPE_CLASSES)
    rng.shuffle(labels)
    scale = 4  # draw large, then downsample: antialiased edges
    big = size * scale
    for i, label in enumerate(labels):
        # A dark background and a bright shape, each of a random hue: the class is the silhouette,
        # never the colour, and the silhouette stays visible at 32 pixels.
        background = rng.integers(0, 110, 3)
        colour = rng.integers(130, 256, 3)
        colour[rng.integers(0, 3)] = rng.integers(210, 256)
        canvas = Image.new("RGB", (big, big), tuple(int(c) for c in background))
        draw = ImageDraw.Draw(canvas)
        radius = rng.uniform(0.26, 0.45) * big
        cx, cy = rng.uniform(radius, big - radius, 2)
        angle = rng.uniform(0, 2 * np.pi)
        _draw_shape(draw, SHAPE_CLASSES[label], cx, cy, radius, angle, tuple(int(c) for c in colour),
                    tuple(int(c) for c in background))
        small = np.asarray(canvas.resize((size, size), Image.BILINEAR), dtype=np.int16)
        noise = rng.normal(0, 10, small.shape)
        images[i] = np.clip(small + noise, 0, 255).astype(np.uint8)
    return ArraySamples(images, labels, [f"shapes[{seed}]/{i}" for i in range(count)])


def _polygon(cx: float, cy: float, radii: list[float], angle: float) -> list[tuple[float, float]]:
    steps = len(radii)
    return [(cx + r * np.cos(angle + 2 * np.pi * k / steps), cy + r * np.sin(angle + 2 * np.pi * k / steps))
            for k, r in enumerate(radii)]


def _draw_shape(draw, kind: str, cx: float, cy: float, r: float, angle: float, colour, background) -> None:
    if kind == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=colour)
    elif kind == "ring":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=colour)
        draw.ellipse([cx - r * 0.55, cy - r * 0.55, cx + r * 0.55, cy + r * 0.55], fill=background)
    elif kind in ("triangle", "square", "pentagon", "hexagon"):
        sides = {"triangle": 3, "square": 4, "pentagon": 5, "hexagon": 6}[kind]
        draw.polygon(_polygon(cx, cy, [r] * sides, angle), fill=colour)
    elif kind == "star":
        draw.polygon(_polygon(cx, cy, [r, r * 0.4] * 5, angle), fill=colour)
    elif kind == "cross":
        w = r * 0.32
        arm = [(-r, -w), (-w, -w), (-w, -r), (w, -r), (w, -w), (r, -w), (r, w), (w, w), (w, r), (-w, r), (-w, w), (-r, w)]
        draw.polygon(_rotate(arm, cx, cy, angle), fill=colour)
    elif kind == "crescent":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=colour)
        dx, dy = 0.45 * r * np.cos(angle), 0.45 * r * np.sin(angle)
        draw.ellipse([cx + dx - r * 0.85, cy + dy - r * 0.85, cx + dx + r * 0.85, cy + dy + r * 0.85], fill=background)
    elif kind == "arrow":
        w = r * 0.22
        arrow = [(-r, -w), (0.1 * r, -w), (0.1 * r, -r * 0.6), (r, 0), (0.1 * r, r * 0.6), (0.1 * r, w), (-r, w)]
        draw.polygon(_rotate(arrow, cx, cy, angle), fill=colour)
    else:
        raise DataError(kind)


def _rotate(points: list[tuple[float, float]], cx: float, cy: float, angle: float) -> list[tuple[float, float]]:
    c, s = np.cos(angle), np.sin(angle)
    return [(cx + x * c - y * s, cy + x * s + y * c) for x, y in points]


def make_shape_sets(count: int, *, size: int = 64, seed: int = 0, max_shapes: int = 3):
    """`count` images, each showing 1..`max_shapes` different shapes of `builtin:shapes`, one per
    quadrant; labels (count, 10) multi-hot. Deterministic in `seed`."""
    rng = np.random.default_rng(seed)
    half = size // 2
    # Tiles are drawn as ordinary shape images at half size, then placed; a tile's class is its label.
    tiles = make_shapes(count * max_shapes, size=half, seed=seed + 7919)
    images = np.empty((count, size, size, 3), dtype=np.uint8)
    labels = np.zeros((count, len(SHAPE_CLASSES)), dtype=np.uint8)
    by_class = [list(np.flatnonzero(tiles.labels == c)) for c in range(len(SHAPE_CLASSES))]
    for i in range(count):
        shown = rng.choice(len(SHAPE_CLASSES), size=rng.integers(1, max_shapes + 1), replace=False)
        quadrants = rng.permutation(4)[: len(shown)]
        canvas = np.empty((size, size, 3), dtype=np.uint8)
        dark = rng.integers(0, 90, 3).astype(np.int16)
        for q in range(4):
            noise = rng.normal(0, 10, (half, half, 3))
            canvas[(q // 2) * half:(q // 2 + 1) * half, (q % 2) * half:(q % 2 + 1) * half] = \
                np.clip(dark + noise, 0, 255).astype(np.uint8)
        for label, q in zip(shown, quadrants):
            pool = by_class[label]
            tile = tiles.images[pool[rng.integers(len(pool))]]
            canvas[(q // 2) * half:(q // 2 + 1) * half, (q % 2) * half:(q % 2 + 1) * half] = tile
            labels[i, label] = 1
        images[i] = canvas
    return ArraySamples(images, labels, [f"shape-sets[{seed}]/{i}" for i in range(count)])
