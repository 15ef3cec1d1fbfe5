"""Two real tiny runs (MobileNetV3-Small 0.5 at 32 px, three shapes, one epoch, two learning rates),
trained once for every test of the share package: the card, the push folder, loading back, the runs table."""

from __future__ import annotations

import pytest
import torch

import visionzoo

SHAPES = "builtin:shapes?size=32&train=18&val=9&classes=circle,ring,square"
MODEL = "mobilenetv3_small_050"


@pytest.fixture(scope="session")
def tiny_runs(tmp_path_factory):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        root = tmp_path_factory.mktemp("runs")
        for name, lr in (("fast", 0.05), ("slow", 0.005)):
            torch.manual_seed(0)
            visionzoo.train(MODEL, SHAPES, out=root / name, epochs=1, batch_size=9, lr=lr, workers=0,
                            progress=False, tensorboard=False)
    finally:
        torch.set_num_threads(threads)
    return root
