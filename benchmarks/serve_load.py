"""Load test of `visionzoo serve`: concurrent clients on loopback against a small CNN.

Starts the real server (uvicorn, in a subprocess) twice, with dynamic batching (--max-batch 32)
and without (--max-batch 1), drives each with the same number of concurrent clients for the same
time, and prints requests per second, p50 / p99 latency, the error count, and the throughput
ratio of batching over no batching. Bounded: clients, duration and the target are all local.

    python benchmarks/serve_load.py [--model mobilenetv3_small_100] [--clients 32] [--seconds 20]
"""

from __future__ import annotations

import argparse
import asyncio
import io
import socket
import statistics
import subprocess
import sys
import time

import httpx
import numpy as np
from PIL import Image


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def photo() -> bytes:
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 255, (240, 320, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


async def drive(url: str, clients: int, seconds: float, body: bytes) -> dict:
    latencies, errors = [], 0
    deadline = time.perf_counter() + seconds
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as client:
        async def one_client():
            nonlocal errors
            while time.perf_counter() < deadline:
                start = time.perf_counter()
                try:
                    response = await client.post("/v1/classify?topk=1", content=body)
                    ok = response.status_code == 200
                except httpx.HTTPError:
                    ok = False
                if ok:
                    latencies.append((time.perf_counter() - start) * 1e3)
                else:
                    errors += 1
        begin = time.perf_counter()
        await asyncio.gather(*(one_client() for _ in range(clients)))
        elapsed = time.perf_counter() - begin
    ordered = sorted(latencies) or [float("nan")]
    return {"requests": len(latencies), "rps": len(latencies) / elapsed, "errors": errors,
            "p50_ms": statistics.median(ordered), "p99_ms": ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]}


def run_server(model: str, pretrained: str, max_batch: int, threads: int | None) -> tuple[subprocess.Popen, str]:
    port = free_port()
    command = [sys.executable, "-m", "visionzoo.cli", "serve", model, "--port", str(port), "--pretrained", pretrained,
               "--max-batch", str(max_batch), "--max-wait-ms", "5", "--queue", "1024"]
    if threads:
        command += ["--threads", str(threads)]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 180
    while time.time() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited: {process.stderr.read().decode()[-2000:]}")
        try:
            if httpx.get(url + "/readyz", timeout=1).status_code == 200:
                return process, url
        except httpx.HTTPError:
            time.sleep(0.2)
    process.kill()
    raise RuntimeError("server did not become ready within 180 s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="mobilenetv3_small_100")
    parser.add_argument("--pretrained", default="none", help="passed to serve (default: none, random weights, offline)")
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()

    body = photo()
    results = {}
    for label, max_batch in (("batching (--max-batch 32)", 32), ("no batching (--max-batch 1)", 1)):
        process, url = run_server(args.model, args.pretrained, max_batch, args.threads)
        try:
            asyncio.run(drive(url, args.clients, min(3.0, args.seconds), body))  # warm-up
            results[label] = asyncio.run(drive(url, args.clients, args.seconds, body))
        finally:
            process.terminate()
            process.wait(timeout=30)
    print(f"model {args.model}, {args.clients} concurrent clients, {args.seconds:g} s each, loopback")
    for label, r in results.items():
        print(f"{label:30s} {r['rps']:8.1f} req/s  p50 {r['p50_ms']:8.1f} ms  p99 {r['p99_ms']:8.1f} ms  "
              f"requests {r['requests']}  errors {r['errors']}")
    batched, single = results.values()
    print(f"throughput ratio batching / no batching: {batched['rps'] / single['rps']:.2f}x")


if __name__ == "__main__":
    main()
