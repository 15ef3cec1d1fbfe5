"""Data-dependent initialisation: a network whose first weights are computed from the training images.

A model that has a method `init_from_data(images)` (airbench's patch-whitening layer,
`visionzoo.models.airbench.AirbenchNet`) gets it called once, before the first optimizer step of a
run that starts from scratch, with `INIT_SAMPLE` training images chosen by the run's seed and
preprocessed as the network receives them at evaluation: the evaluation view, normalised, as
(N, C, H, W) floats on the run's device. The constructor stays free of data (models build on the
`meta` device), and the method is the one place that knows what to compute.

Not called when the run starts from weights (they already hold what the method would compute) nor
when it resumes from a checkpoint (which holds the initialised weights and everything trained
since: calling it again would overwrite them). Its images come from a generator of their own, so
the run's random streams are the same with or without it.
"""

from __future__ import annotations

import time

import numpy as np
import torch

from visionzoo.data.datasets import ImageDataset, collate_skipping
from visionzoo.data.transforms import eval_transform, eval_view
from visionzoo.errors import SettingError

__all__ = ["INIT_SAMPLE", "initialise_from_data", "wants_data_init"]

INIT_SAMPLE = 5000  # airbench's: its whitening statistics come from 5,000 training images


def wants_data_init(model: torch.nn.Module) -> bool:
    """Whether `model` computes some of its weights from training images (`init_from_data`)."""
    return callable(getattr(model, "init_from_data", None))


def initialise_from_data(run, data, logger) -> int:
    """Call `run.model.init_from_data` with a seeded sample of the training images (see the module's
    docstring); the EMA, when the run keeps one, starts from the result. Returns the images used."""
    model, loaders, settings = run.model, data.loaders, run.settings
    samples = loaders.train_samples
    if not hasattr(samples, "subset"):
        raise SettingError(f"{type(model).__name__} computes its first weights from a sample of the training images, "
                           "which streamed shards cannot give; train it on a folder, archive or dataset table")
    started = time.perf_counter()
    count = min(INIT_SAMPLE, len(samples))
    chosen = np.sort(np.random.default_rng(settings.seed).choice(len(samples), count, replace=False))
    # uint8 arrays normalised on the device (the trainer's fast path), or decoded and normalised per image
    view = (eval_view(run.data_config, run.image_size) if loaders.normalize is not None
            else eval_transform(run.data_config, run.image_size))
    loader = torch.utils.data.DataLoader(ImageDataset(samples.subset(chosen), view), batch_size=500,
                                         num_workers=data.workers, collate_fn=collate_skipping,
                                         generator=torch.Generator())  # leaves the global generator alone
    batches = []
    for images, _, _, _ in loader:
        if len(images):
            images = images.to(run.device)
            batches.append(loaders.normalize(images) if loaders.normalize is not None else images.float())
    images = torch.cat(batches)
    model.init_from_data(images)
    if run.ema is not None:
        run.ema.module.load_state_dict(model.state_dict())
    logger.print(f"{type(model).__name__}.init_from_data: weights computed from {len(images)} training images in "
                 f"{time.perf_counter() - started:.1f} s")
    return len(images)
