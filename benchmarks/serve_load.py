"""Load on ``instseg serve`` over loopback: throughput and latency against in-process prediction, and a
mix of bad requests that must never get a 5xx.

The server runs as its own process (``instseg serve``, bound to 127.0.0.1) so that its memory is
measured alone. Every loop here is bounded in requests and time.

1. In-process: ``Predictor.predict`` on the same images, the baseline (seconds per image).
2. The server's overhead at concurrency 1: about ``--requests`` in-process ``predict`` calls on the
   images (decoded from their bytes, as the server does) and as many POSTs of them, taking turns by
   blocks of ten, so that the machine's drift over the run falls on both alike; with the median of
   the blocks' ratios and the inference time
   the server reports in each answer, the rest (decoding, HTTP, encoding the answer) apart.
3. Concurrency 1, 4 and 16: ``--requests`` POSTs of those images per level; throughput and
   p50/p95 latency.
4. ``--bad`` requests, malformed or oversized, mixed one in five with good ones: the count of each
   status, the number of 5xx (must be 0), and the server's RSS before and after.

    python benchmarks/serve_load.py --model nuclei --requests 40 --bad 1000
"""

from __future__ import annotations

import argparse
import json
import os
import random
import socket
import subprocess
import sys
import time
import zlib
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import instseg
from tests.serve.http import multipart, post_streaming, request

DEMO_VAL = Path(instseg.__file__).parent / "assets" / "dsb2018_mini" / "val"
TIME_LIMIT_S = 900  # the whole run stops issuing requests after this


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def bad_requests(good: bytes) -> list[tuple[str, bytes, dict[str, str]]]:
    """(kind, body, headers) of each malformed or oversized request kind."""

    def png(width: int, height: int) -> bytes:
        def chunk(kind: bytes, data: bytes) -> bytes:
            return len(data).to_bytes(4, "big") + kind + data + zlib.crc32(kind + data).to_bytes(4, "big")

        ihdr = width.to_bytes(4, "big") + height.to_bytes(4, "big") + bytes([8, 2, 0, 0, 0])
        return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 16))

    kinds = {
        "random bytes": multipart({"image": ("a.png", os.urandom(2000))}),
        "truncated png": multipart({"image": ("a.png", good[: len(good) // 3])}),
        "flipped bytes": multipart(
            {"image": ("a.png", bytes(b ^ 0x5A if i % 97 == 50 else b for i, b in enumerate(good)))}
        ),
        "bomb header": multipart({"image": ("a.png", png(60_000, 60_000))}),
        "over pixel limit": multipart({"image": ("a.png", png(12_000, 12_000))}),
        "empty file": multipart({"image": ("a.png", b"")}),
        "no image field": multipart({"file": ("a.png", good)}),
        "bad threshold": multipart({"image": ("a.png", good), "score_threshold": "nan?"}),
        "bad mask format": multipart({"image": ("a.png", good), "masks": "gif"}),
        "oversized body": multipart({"image": ("a.png", b"\0" * (40 * 2**20))}),
        "not multipart": (b'{"image": "http://example.invalid/a.png"}', {"Content-Type": "application/json"}),
        "broken multipart": (b"--x\r\nnonsense", {"Content-Type": "multipart/form-data; boundary=x"}),
    }
    return [(kind, body, headers) for kind, (body, headers) in kinds.items()]


def post(url: str, body: bytes, headers: dict[str, str]) -> tuple[int, float]:
    started = time.perf_counter()
    status, _ = post_streaming(url, body, headers)
    return status, time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="nuclei")
    parser.add_argument("--requests", type=int, default=40, help="good requests per concurrency level")
    parser.add_argument("--bad", type=int, default=1000)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--queue", type=int, default=32)
    args = parser.parse_args()
    deadline = time.monotonic() + TIME_LIMIT_S
    images = [p.read_bytes() for p in sorted(DEMO_VAL.glob("*.png"))]

    predictor = instseg.load(args.model, device="cpu")
    for data in images[:2]:  # warm-up
        predictor.predict(_decode(data), min_score=0.5)
    started = time.perf_counter()
    for i in range(args.requests):
        predictor.predict(_decode(images[i % len(images)]), min_score=0.5)
    in_process = (time.perf_counter() - started) / args.requests

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "from instseg.cli import main; raise SystemExit(main())",
            "serve",
            "--model",
            args.model,
            "--port",
            str(port),
            "--workers",
            str(args.workers),
            "--queue",
            str(args.queue),
        ],
        stdout=subprocess.DEVNULL,
    )
    try:
        while True:
            try:
                if request(f"{url}/healthz")[0] == 200:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline or server.poll() is not None:
                raise SystemExit("the server did not start")
            time.sleep(0.2)
        predict_url = f"{url}/v1/predict"
        for data in images[:2]:
            post(predict_url, *multipart({"image": ("a.png", data)}))
        paired = _paired_overhead(predictor, predict_url, images, args.requests)
        rows = []
        for concurrency in (1, 4, 16):
            bodies = [multipart({"image": ("a.png", images[i % len(images)])}) for i in range(args.requests)]
            started = time.perf_counter()
            with ThreadPoolExecutor(concurrency) as pool:
                done = list(pool.map(lambda b: post(predict_url, *b), bodies))
            wall = time.perf_counter() - started
            latencies = sorted(t for _, t in done)
            statuses = Counter(s for s, _ in done)
            rows.append(
                (
                    concurrency,
                    args.requests / wall,
                    sum(latencies) / len(latencies),
                    latencies[len(latencies) // 2],
                    latencies[int(0.95 * (len(latencies) - 1))],
                    dict(statuses),
                )
            )
        rss_before = rss_bytes(server.pid)
        kinds = bad_requests(images[0])
        rng = random.Random(0)
        statuses: Counter = Counter()
        by_kind: dict[str, Counter] = {}
        sent = 0
        good_body = multipart({"image": ("a.png", images[1])})
        while sent < args.bad and time.monotonic() < deadline:
            if sent % 5 == 4:
                kind, body, headers = "good", *good_body
            else:
                kind, body, headers = rng.choice(kinds)
            status, _ = post(predict_url, body, headers)
            statuses[status] += 1
            by_kind.setdefault(kind, Counter())[status] += 1
            sent += 1
        rss_after = rss_bytes(server.pid)
    finally:
        server.terminate()
        server.wait(timeout=30)

    print(f"in-process predict: {in_process:.4f} s/image ({args.requests} images)")
    own, served, inference, median_ratio = paired
    print(
        f"in turns at concurrency 1 (blocks of {len(images)}): in-process {own:.4f} s, served {served:.4f} s "
        f"({served / own:.3f}x, median block {median_ratio:.3f}x); inside the server: inference "
        f"{inference:.4f} s, the rest "
        f"{served - inference:.4f} s ({(served - inference) / own:.1%} of in-process)"
    )
    print("\n| concurrency | requests/s | mean s | p50 s | p95 s | statuses | mean / in-process mean |")
    print("|---|---|---|---|---|---|---|")
    for concurrency, rate, mean, p50, p95, st in rows:
        ratio = mean / in_process
        print(f"| {concurrency} | {rate:.2f} | {mean:.4f} | {p50:.4f} | {p95:.4f} | {st} | {ratio:.3f} |")
    fives = sum(n for s, n in statuses.items() if s >= 500)
    print(f"\nbad-request mix: {sent} requests, statuses {dict(sorted(statuses.items()))}, 5xx: {fives}")
    for kind, counts in sorted(by_kind.items()):
        print(f"  {kind}: {dict(counts)}")
    growth = (rss_after - rss_before) / max(rss_before, 1)
    print(
        f"server RSS {rss_before / 2**20:.0f} MiB before the mix, "
        f"{rss_after / 2**20:.0f} MiB after ({growth:+.1%})"
    )
    print(
        json.dumps(
            {
                "in_process_s": in_process,
                "paired_in_process_s": own,
                "paired_served_s": served,
                "paired_server_inference_s": inference,
                "paired_median_block_ratio": median_ratio,
                "five_xx": fives,
                "rss_growth": growth,
            }
        )
    )
    return 0 if fives == 0 else 1


def _paired_overhead(
    predictor, url: str, images: list[bytes], count: int
) -> tuple[float, float, float, float]:
    """Mean seconds of in-process ``predict`` (decoding included) and of the served request for the
    same images, the mean inference time the server reports, and the median ratio of the blocks.

    The two sides take turns by blocks of ``len(images)`` requests, in alternating order, each block
    after one unmeasured call: within a block a side runs as it would in use, its caches warm (image
    after image in one process, as a client of the server or in-process), and the machine's drift over
    the run falls on both sides alike. (Pairs of single calls made each side start after the other
    process had filled the caches, and moved the ratio by several percent run to run.)"""
    own, served, inference, ratios = [], [], [], []

    def in_process(data: bytes) -> None:
        predictor.predict(_decode(data), min_score=0.5, cropped=True)

    def over_http(data: bytes) -> float:
        body, headers = multipart({"image": ("a.png", data)})
        status, _, answer = request(url, body, headers)
        if status != 200:
            raise SystemExit(f"a good request got {status}")
        return json.loads(answer)["seconds"]

    for block in range(max(1, -(-count // len(images)))):
        block_images = [images[(block * len(images) + i) % len(images)] for i in range(len(images))]
        seconds = {}
        for side in ("own", "served") if block % 2 == 0 else ("served", "own"):
            (in_process if side == "own" else over_http)(block_images[0])  # warm-up, not measured
            times = []
            for data in block_images:
                started = time.perf_counter()
                if side == "own":
                    in_process(data)
                else:
                    inference.append(over_http(data))
                times.append(time.perf_counter() - started)
            (own if side == "own" else served).extend(times)
            seconds[side] = sum(times)
        ratios.append(seconds["served"] / seconds["own"])
    ratios.sort()
    return (
        sum(own) / len(own),
        sum(served) / len(served),
        sum(inference) / len(inference),
        ratios[len(ratios) // 2],
    )


def _decode(data: bytes):
    import io

    from instseg.data.images import decode_image

    return decode_image(io.BytesIO(data), "image").float().div_(255.0)


if __name__ == "__main__":
    raise SystemExit(main())
