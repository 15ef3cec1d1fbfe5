"""`visionzoo serve`: the HTTP API and web page of `visionzoo.serve` (needs the [serve] extra)."""

from __future__ import annotations

import argparse

from visionzoo.cli.common import add_model_argument, add_pretrained_argument, add_resize_mode_argument, console, warn
from visionzoo.errors import UsageError

__all__ = ["add_parsers", "cmd_serve"]


def cmd_serve(args: argparse.Namespace) -> int:
    from visionzoo.errors import require_extra

    uvicorn = require_extra("uvicorn", "serve", "visionzoo serve")
    from visionzoo.serve import ServeSettings, create_app, load_classifier, server_config

    if args.host not in ("127.0.0.1", "localhost", "::1"):
        warn(f"serving on {args.host}, reachable from other machines")
    settings = ServeSettings(max_batch=args.max_batch, max_wait_ms=args.max_wait_ms,
                             max_upload_mb=args.max_upload_mb, queue=args.queue, reject=args.reject,
                             max_images=args.max_images, max_image_pixels=args.max_image_pixels,
                             max_request_pixels=args.max_request_pixels, max_decodes=args.max_decodes,
                             header_timeout_s=args.header_timeout_s, docs=args.docs)
    _check_port(args.host, args.port)  # before the model loads: a busy port is one line, not uvicorn's error
    classifier = load_classifier(args.model, args.pretrained, threads=args.threads, runtime=args.runtime,
                                 resize_mode=args.resize_mode)
    console.print(f"serving {classifier.name} on http://{args.host}:{args.port}/ (API: /v1/classify, /v1/model)")
    app = create_app(classifier, settings)
    limits = app.state.limits
    console.print(f"limits: {settings.max_upload_mb:g} MB and {settings.max_images} images per request, "
                  f"{limits.image} pixels per image ({limits.reason}), {limits.request} per request, "
                  f"{settings.max_decodes} decodes at once")
    uvicorn.Server(server_config(app, settings, args.host, args.port, log_level="warning")).run()
    return 0


def _check_port(host: str, port: int) -> None:
    """Fail in one line when `host:port` cannot be bound (in use, or not an address of this machine).
    A port that frees between this check and uvicorn's bind is rare and still reported by uvicorn."""
    import socket

    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as error:
        raise UsageError(f"cannot serve on {host}: {error.strerror}; give --host an address of this machine") from None
    family, _, _, _, address = infos[0]
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds: TIME_WAIT is no obstacle
        try:
            probe.bind(address)
        except OSError as error:
            raise UsageError(f"cannot serve on {host}:{port}: {error.strerror}; choose another --port") from None


def add_parsers(commands) -> None:
    p = commands.add_parser("serve", help="an HTTP API and a web page for a model",
                            description="Serve a model over HTTP with dynamic batching, and a page to try it.")
    add_model_argument(p, "registered name, saved model, .onnx, .xml, .tflite or .pte file", metavar="MODEL_OR_CHECKPOINT")
    add_pretrained_argument(p)
    add_resize_mode_argument(p)
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1, this machine only)")
    p.add_argument("--port", type=int, default=8000, help="default: 8000")
    p.add_argument("--max-batch", type=int, default=32, help="largest batch the model runs (default: 32)")
    p.add_argument("--max-wait-ms", type=float, default=5.0, help="longest wait to fill a batch (default: 5)")
    p.add_argument("--max-upload-mb", type=float, default=10.0, help="largest request body (default: 10)")
    p.add_argument("--queue", type=int, default=256, help="requests waiting before 503 (default: 256)")
    p.add_argument("--max-images", type=int, default=32, help="images in one request (default: 32)")
    p.add_argument("--max-image-pixels", type=int, metavar="N",
                   help="pixels one image may decode to; a larger JPEG is decoded at 1/2, 1/4 or 1/8 scale "
                        "(default: 100x the model's input pixels, at least 4,000,000)")
    p.add_argument("--max-request-pixels", type=int, metavar="N",
                   help="pixels all images of one request may decode to (default: 8x --max-image-pixels)")
    p.add_argument("--max-decodes", type=int, default=4, help="images decoded at once, across requests (default: 4)")
    p.add_argument("--header-timeout-s", type=float, default=10.0,
                   help="a connection whose request headers take longer is closed (default: 10)")
    p.add_argument("--docs", action="store_true",
                   help="serve /docs and /openapi.json (Swagger UI loads its scripts from a CDN; default: off)")
    p.add_argument("--threads", type=int, metavar="N", help="CPU threads for the model")
    p.add_argument("--runtime", choices=["onnxruntime", "openvino", "openvino-bf16", "litert", "executorch"],
                   help="runtime for an exported file (default: onnxruntime for .onnx, OpenVINO for .xml, LiteRT "
                        "for .tflite, ExecuTorch for .pte)")
    p.add_argument("--no-reject", dest="reject", action="store_false",
                   help="never answer 'unknown' (ignore the model's saved out-of-distribution threshold)")
    p.set_defaults(func=cmd_serve)
