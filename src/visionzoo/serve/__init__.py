"""`visionzoo serve`: an HTTP API with dynamic batching, and a web page to try a model.

Requests are decoded and preprocessed in a pool of `max_decodes` threads, then queued; one batching
task takes up to `max_batch` queued images, waiting at most `max_wait_ms` for more after the first,
and runs the model once for all of them in a thread, so throughput grows with load.

    app.py          the routes: body -> uploads -> header probes (pixel caps) -> decode -> batcher
    batcher.py      the dynamic batcher
    classifier.py   the model side: Classifier, load_classifier, the card /v1/model shows
    images.py       an upload's bytes to pixels within the caps; the decode pool
    settings.py     ServeSettings: batching and every limit, with its default
    connections.py  uvicorn with a deadline for request headers
    errors.py       ApiError, the JSON error answer

Every failure a client can cause is a JSON error with the right status, and the server keeps
serving: 413 body over the limit (counted while reading, so a huge upload never fills memory;
the excess is read and discarded up to `max_discard_mb`, so clients that send the whole body
before reading the reply, as urllib and requests do, get the 413 and not a connection reset),
413 more images or pixels in one request than allowed, 415 not an image (by content, not
declared type), 422 truncated image, unreadable header, decompression bomb or an image over the
per-image pixel cap, 503 with Retry-After when the queue is full, 408 for a client that sends too
slowly, 500 for an exception inside the model (the next request runs normally). A connection
whose request headers do not arrive within `header_timeout_s` is closed.

A model trained by visionzoo answers by its head facts (`visionzoo.heads`): calibrated
probabilities, `"unknown": true` below its OOD threshold (`ServeSettings.reject`), and for a
multi-label model `"labels"`, the classes over their thresholds.
"""

from __future__ import annotations

from visionzoo.errors import require_extra

for _module in ("fastapi", "uvicorn", "python_multipart"):  # one line naming the pip install when one is missing
    require_extra(_module, "serve", "visionzoo serve")

from visionzoo.serve.app import create_app  # noqa: E402 (after the check: a missing extra is one clear line)
from visionzoo.serve.batcher import DynamicBatcher  # noqa: E402
from visionzoo.serve.classifier import Classifier, load_classifier  # noqa: E402
from visionzoo.serve.connections import server_config  # noqa: E402
from visionzoo.serve.settings import ServeSettings  # noqa: E402

__all__ = ["ServeSettings", "Classifier", "DynamicBatcher", "create_app", "load_classifier", "server_config"]
