"""A served SAM over loopback: what a click costs through ``/v1/prompt`` against the same click in process.

The server runs as its own process (``instseg serve``, 127.0.0.1, one worker). On each of the 10
bundled val images: ``/v1/embed`` once, then ``--clicks`` single-click prompts at random object
pixels (masks as RLE), one after the other; in process, ``PromptPredictor.set_image`` and ``predict``
with the same clicks. Reported: the mean and median seconds of each, and their ratio.

    python benchmarks/serve_prompts.py --checkpoint runs/bench/sam_nuclei_s0/checkpoint --clicks 20
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import instseg
from benchmarks.serve_load import free_port
from instseg.data.images import read_image
from instseg.prompt_predictor import PromptPredictor
from tests.serve.http import multipart, request

DEMO_VAL = Path(instseg.__file__).parent / "assets" / "dsb2018_mini" / "val"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--clicks", type=int, default=20, help="prompts per image")
    args = parser.parse_args()
    paths = sorted(DEMO_VAL.glob("*.png"))
    rng = np.random.default_rng(0)
    clicks = []
    for path in paths:
        h, w = read_image(path).shape[-2:]
        clicks.append([[int(rng.integers(0, w)), int(rng.integers(0, h))] for _ in range(args.clicks)])

    local = PromptPredictor.from_checkpoint(args.checkpoint, "cpu")
    here: dict[str, list[float]] = {"embed": [], "prompt": []}
    for path, points in zip(paths, clicks, strict=True):
        started = time.perf_counter()
        local.set_image(read_image(path).float() / 255)
        here["embed"].append(time.perf_counter() - started)
        for xy in points:
            started = time.perf_counter()
            local.predict(points=[xy], labels=[1], multimask=False)
            here["prompt"].append(time.perf_counter() - started)
    del local

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    command = "from instseg.cli import main; raise SystemExit(main())"
    server = subprocess.Popen(
        [sys.executable, "-c", command, "serve", "--model", args.checkpoint, "--port", str(port)],
        stdout=subprocess.DEVNULL,
    )
    served: dict[str, list[float]] = {"embed": [], "prompt": []}
    try:
        deadline = time.monotonic() + 120
        while not _up(url):
            if time.monotonic() > deadline or server.poll() is not None:
                print("the server did not start", file=sys.stderr)
                return 1
            time.sleep(0.2)
        for path, points in zip(paths, clicks, strict=True):
            body, headers = multipart({"image": (path.name, path.read_bytes())})
            started = time.perf_counter()
            status, _, answer = request(f"{url}/v1/embed", body, headers)
            served["embed"].append(time.perf_counter() - started)
            assert status == 200, answer
            key = json.loads(answer)["image_id"]
            for xy in points:
                prompt = json.dumps({"image_id": key, "points": [xy], "labels": [1]}).encode()
                started = time.perf_counter()
                status, _, answer = request(f"{url}/v1/prompt", prompt, {"Content-Type": "application/json"})
                served["prompt"].append(time.perf_counter() - started)
                assert status == 200, answer
    finally:
        server.terminate()
        server.wait(timeout=30)
    print("| step | in process mean s | median s | served mean s | median s | served / in process (mean) |")
    print("|---|---|---|---|---|---|")
    for step in ("embed", "prompt"):
        a, b = here[step], served[step]
        print(
            f"| {step} ({len(a)}) | {statistics.mean(a):.4f} | {statistics.median(a):.4f} "
            f"| {statistics.mean(b):.4f} | {statistics.median(b):.4f} "
            f"| {statistics.mean(b) / statistics.mean(a):.2f} |"
        )
    return 0


def _up(url: str) -> bool:
    try:
        return request(f"{url}/healthz")[0] == 200
    except OSError:
        return False


if __name__ == "__main__":
    raise SystemExit(main())
