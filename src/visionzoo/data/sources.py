"""Where training images come from: a folder tree, a CSV, a tar archive or `builtin:shapes`.

`resolve_data(spec)` turns what the user typed after `--data` into `DataSplits`: the class
names and a train and a validation `Samples` each. `Samples` is either a list of files
(`FileSamples`, decoded lazily) or a uint8 array in memory or memory-mapped
(`ArraySamples`: generated data and the pixel cache).

Accepted specs:
    DIR                 class-per-folder tree; DIR/train + DIR/val (or test, validation)
                        when present, else one tree split by a seeded stratified split
    FILE.csv            rows of `path,label` (header optional; paths relative to the CSV),
                        with an optional third column `split` (train / val / test)
    FILE.tar[.gz|.tgz]  an archive holding such a tree; unpacked once into the cache folder
    builtin:shapes      procedurally generated shapes, 10 classes, no download;
                        options as a query: builtin:shapes?size=32&train=2000&val=500&seed=0,
                        classes=circle,ring,... (only these), task=multilabel (1-3 shapes each)

Multi-label data (a CSV of `path,labels` with `|`-separated labels, a CSV of 0/1 class columns,
a folder with a labels.csv; see `visionzoo.data.multilabel`) gives `DataSplits.task == "multilabel"`
and (N, C) multi-hot labels.
"""

from __future__ import annotations

import csv
import hashlib
import os
import shutil
import tarfile
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from visionzoo.data.decode import is_image_file
from visionzoo.errors import DataError, SettingError

__all__ = ["FileSamples", "ArraySamples", "DataSplits", "resolve_data", "cache_root", "stratified_split"]

VAL_FOLDER_NAMES = ("val", "validation", "valid", "test")


@dataclass
class FileSamples:
    """Image files with integer labels; `paths[i]` has class `labels[i]`."""

    paths: list[str]
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.paths)

    def subset(self, indices: np.ndarray) -> FileSamples:
        return FileSamples([self.paths[i] for i in indices], self.labels[indices])


@dataclass
class ArraySamples:
    """Decoded images as a (N, H, W, 3) uint8 array (possibly memory-mapped) with labels."""

    images: np.ndarray
    labels: np.ndarray
    names: list[str] | None = None  # where each image came from, for reports

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, indices: np.ndarray) -> ArraySamples:
        names = [self.names[i] for i in indices] if self.names is not None else None
        return ArraySamples(self.images[indices], self.labels[indices], names)


Samples = FileSamples | ArraySamples


@dataclass
class DataSplits:
    classes: list[str]
    train: Samples
    val: Samples | None
    description: str
    native_size: int | None = None  # side of the images when known without decoding (generated data)
    task: str = "multiclass"  # or "multilabel": labels are (N, C) multi-hot


def cache_root() -> Path:
    """Where unpacked archives and pixel caches live: $VISIONZOO_CACHE or ~/.cache/visionzoo."""
    return Path(os.environ.get("VISIONZOO_CACHE", Path.home() / ".cache" / "visionzoo"))


def stratified_split(labels: np.ndarray, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices of a train and a validation part holding `val_fraction` of every class (at least one
    image per class in validation when the class has two or more)."""
    if not 0.0 < val_fraction < 1.0:
        raise DataError(f"val_fraction must be between 0 and 1, got {val_fraction}")
    rng = np.random.default_rng(seed)
    train, val = [], []
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        rng.shuffle(members)
        count = int(round(len(members) * val_fraction))
        if len(members) >= 2:
            count = min(max(count, 1), len(members) - 1)
        val.extend(members[:count])
        train.extend(members[count:])
    return np.sort(np.array(train, dtype=np.int64)), np.sort(np.array(val, dtype=np.int64))


def resolve_data(spec: str | os.PathLike, *, val_fraction: float = 0.1, seed: int = 0, split: str = "train",
                 task: str | None = None) -> DataSplits:
    """Interpret a `--data` value. `split="eval"` makes a tree without a validation folder count
    wholly as validation data (for `visionzoo eval`) instead of being split. `task` ("multiclass"
    or "multilabel"; None: inferred from the data) reads single-label rows as multi-label too."""
    if task not in (None, "multiclass", "multilabel"):
        raise SettingError(f"task must be 'multiclass' or 'multilabel', got {task!r}")
    text = str(spec)
    if text.startswith("builtin:"):
        splits = _builtin(text)
        if task == "multilabel" and splits.task != "multilabel":
            raise DataError(f"{text} is single-label; add task=multilabel to its query for multi-label shapes")
        return splits
    path = Path(text).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"data {text!r} does not exist; give a folder, a .csv, a .tar/.tar.gz or builtin:shapes")
    if path.is_dir() and (path / "labels.csv").is_file():
        return _multilabel_csv(path / "labels.csv", path, val_fraction, seed, split, task, f"folder {path}")
    if path.is_dir():
        if task == "multilabel":
            raise DataError(f"{path} is a class-per-folder tree (one label per image); multi-label data needs "
                             f"{path / 'labels.csv'} or a CSV of path,labels")
        return _from_tree(path, val_fraction, seed, split)
    name = path.name.lower()
    if name.endswith(".csv"):
        from visionzoo.data.multilabel import looks_multilabel

        if task == "multilabel" or (task is None and looks_multilabel(path)):
            return _multilabel_csv(path, path.parent, val_fraction, seed, split, task, f"csv {path}")
        if task == "multiclass" and looks_multilabel(path):
            raise DataError(f"{path} holds several labels per image (multi-label data); drop --task multiclass")
        return _from_csv(path, val_fraction, seed, split)
    if name.endswith((".tar", ".tar.gz", ".tgz")):
        return _from_tree(_unpack(path), val_fraction, seed, split, description=f"archive {path}")
    raise DataError(f"data {text!r} is neither a folder, a .csv nor a .tar/.tar.gz archive")


def _class_folders(root: Path) -> list[str]:
    return sorted(entry.name for entry in os.scandir(root) if entry.is_dir() and not entry.name.startswith("."))


def _scan_tree(root: Path, classes: list[str]) -> FileSamples:
    paths, labels = [], []
    for label, name in enumerate(classes):
        folder = root / name
        if not folder.is_dir():
            continue
        for directory, subdirs, files in os.walk(folder):
            subdirs.sort()
            for file in sorted(files):
                if is_image_file(file):
                    paths.append(os.path.join(directory, file))
                    labels.append(label)
    return FileSamples(paths, np.array(labels, dtype=np.int64))


def _from_tree(root: Path, val_fraction: float, seed: int, split: str, description: str | None = None) -> DataSplits:
    # An archive or folder often wraps the tree in one top-level folder (cifar10/train/...).
    entries = [e for e in _class_folders(root)]
    if len(entries) == 1 and not any(is_image_file(f) for f in os.listdir(root / entries[0])):
        inner = root / entries[0]
        if {"train", *VAL_FOLDER_NAMES} & set(_class_folders(inner)):
            root = inner
    description = description or f"folder {root}"
    subfolders = set(_class_folders(root))
    val_name = next((name for name in VAL_FOLDER_NAMES if name in subfolders), None)
    if "train" in subfolders or val_name:
        train_root = root / "train"
        classes = _class_folders(train_root) if train_root.is_dir() else _class_folders(root / val_name)
        if not classes:
            raise DataError(f"{train_root} holds no class folders; expected {train_root}/<class>/<image>")
        train = _scan_tree(train_root, classes) if train_root.is_dir() else FileSamples([], np.zeros(0, np.int64))
        val = _scan_tree(root / val_name, classes) if val_name else None
        if val is None and split != "eval":
            train_part, val_part = stratified_split(train.labels, val_fraction, seed)
            train, val = train.subset(train_part), train.subset(val_part)
        elif val is None:
            val = train
        if len(train) == 0 and split != "eval":
            raise DataError(f"no images found under {train_root}")
        return DataSplits(classes, train, val, description)
    classes = _class_folders(root)
    if not classes:
        raise DataError(f"{root} holds no class folders; expected {root}/<class>/<image> "
                         f"or {root}/train/<class>/<image> and {root}/val/<class>/<image>")
    samples = _scan_tree(root, classes)
    if len(samples) == 0:
        raise DataError(f"no images (extensions .jpg, .png, ...) found in the class folders of {root}")
    if split == "eval":
        return DataSplits(classes, samples, samples, description)
    train_part, val_part = stratified_split(samples.labels, val_fraction, seed)
    return DataSplits(classes, samples.subset(train_part), samples.subset(val_part),
                      f"{description} (split {1 - val_fraction:.0%}/{val_fraction:.0%}, seed {seed})")


def _from_csv(path: Path, val_fraction: float, seed: int, split: str) -> DataSplits:
    rows = []
    with open(path, newline="") as handle:
        for number, row in enumerate(csv.reader(handle), start=1):
            if not row or row[0].startswith("#"):
                continue
            if number == 1 and [c.strip().lower() for c in row[:2]] == ["path", "label"]:
                continue
            if len(row) < 2:
                raise DataError(f"{path}:{number}: expected 'path,label', got {row!r}")
            rows.append([c.strip() for c in row])
    if not rows:
        raise DataError(f"{path} lists no images; expected rows of 'path,label'")
    classes = sorted({row[1] for row in rows})
    index = {name: i for i, name in enumerate(classes)}
    base = path.parent

    def samples(selected: list[list[str]]) -> FileSamples:
        return FileSamples([str(base / row[0]) for row in selected],
                           np.array([index[row[1]] for row in selected], dtype=np.int64))

    if any(len(row) >= 3 and row[2] for row in rows):
        train = samples([r for r in rows if len(r) < 3 or r[2].lower() == "train"])
        val = samples([r for r in rows if len(r) >= 3 and r[2].lower() in VAL_FOLDER_NAMES])
        return DataSplits(classes, train, val, f"csv {path}")
    everything = samples(rows)
    if split == "eval":
        return DataSplits(classes, everything, everything, f"csv {path}")
    train_part, val_part = stratified_split(everything.labels, val_fraction, seed)
    return DataSplits(classes, everything.subset(train_part), everything.subset(val_part), f"csv {path}")


def _multilabel_csv(path: Path, base: Path, val_fraction: float, seed: int, split: str, task: str | None,
                    description: str) -> DataSplits:
    from visionzoo.data.multilabel import iterative_split, read_multilabel_csv

    if task == "multiclass":
        raise DataError(f"{path} is multi-label data (several labels per image); drop --task multiclass")
    paths, classes, labels, splits = read_multilabel_csv(path, base, force=task == "multilabel")

    def samples(indices) -> FileSamples:
        return FileSamples([paths[i] for i in indices], labels[indices])

    if splits is not None:
        train = samples([i for i, s in enumerate(splits) if s in ("", "train")])
        val = samples([i for i, s in enumerate(splits) if s in VAL_FOLDER_NAMES])
        return DataSplits(classes, train, val, description, task="multilabel")
    everything = samples(range(len(paths)))
    if split == "eval":
        return DataSplits(classes, everything, everything, description, task="multilabel")
    train_part, val_part = iterative_split(labels, val_fraction, seed)
    return DataSplits(classes, everything.subset(train_part), everything.subset(val_part),
                      f"{description} (iterative stratified split {1 - val_fraction:.0%}/{val_fraction:.0%}, seed {seed})",
                      task="multilabel")


def _unpack(archive: Path) -> Path:
    """Unpack once into the cache; the folder name carries the archive's size and mtime."""
    stat = archive.stat()
    key = hashlib.sha1(f"{archive.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:12]
    stem = archive.name.split(".")[0]
    target = cache_root() / "datasets" / f"{stem}-{key}"
    if (target / ".complete").exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    scratch = target.with_name(f"{target.name}.tmp{os.getpid()}")
    shutil.rmtree(scratch, ignore_errors=True)
    try:
        with tarfile.open(archive) as tar:
            tar.extractall(scratch, filter="data")  # 'data' refuses absolute paths, links out, devices
    except (tarfile.TarError, OSError, EOFError) as error:
        shutil.rmtree(scratch, ignore_errors=True)
        raise DataError(f"cannot unpack {archive}: {error}") from None
    (scratch / ".complete").write_text("")
    try:
        scratch.rename(target)
    except OSError:  # another process unpacked it first
        shutil.rmtree(scratch, ignore_errors=True)
    return target


# --- builtin:shapes -------------------------------------------------------------------------

SHAPE_CLASSES = ["circle", "ring", "triangle", "square", "pentagon", "hexagon", "star", "cross", "crescent", "arrow"]


def _builtin(text: str) -> DataSplits:
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
        from visionzoo.data.multilabel import make_shape_sets

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
