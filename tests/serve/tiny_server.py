"""A real `visionzoo serve` process around a tiny NumPy model with a 224x224 input (the real torch-free
preprocessing of an exported model), for the tests that measure the server process from outside:

    python tests/serve/tiny_server.py PORT ['{"max_decodes": 2}']   # ServeSettings as JSON
"""

from __future__ import annotations

import json
import sys

import numpy as np
import uvicorn

from visionzoo.deploy.runtimes import preprocess_image
from visionzoo.serve import Classifier, ServeSettings, create_app, server_config

PREPROCESSING = {"input_size": [3, 224, 224], "crop_pct": 0.875, "interpolation": "bilinear",
                 "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
CLASSES = ["red", "green", "blue", "grey"]


def run(batch: np.ndarray) -> np.ndarray:
    """Probabilities from the channel means: a model with no weights to load, fast on any machine."""
    means = batch.mean((2, 3))  # (N, C, H, W) -> (N, C)
    scores = np.concatenate([means, -np.abs(means).sum(1, keepdims=True)], 1)
    exp = np.exp(scores - scores.max(1, keepdims=True))
    return exp / exp.sum(1, keepdims=True)


def tiny_classifier() -> Classifier:
    card = {"architecture": "tiny", "weights": None, "format": "test", "preprocessing": PREPROCESSING,
            "num_classes": len(CLASSES), "classes": CLASSES}
    return Classifier("tiny", lambda image: preprocess_image(image, PREPROCESSING), run, CLASSES, card)


def main() -> None:
    port = int(sys.argv[1])
    settings = ServeSettings(**(json.loads(sys.argv[2]) if len(sys.argv) > 2 else {}))
    app = create_app(tiny_classifier(), settings)
    uvicorn.Server(server_config(app, settings, "127.0.0.1", port, log_level="warning")).run()


if __name__ == "__main__":
    main()
