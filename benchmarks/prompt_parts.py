"""Where a served click's time goes before HTTP: the prompt, then the answer's RLE and its JSON, in process.

The same clicks as ``serve_prompts.py`` (20 random pixels on each of the 10 bundled val images, seed 0),
one after the other:

    python benchmarks/prompt_parts.py runs/bench/sam_nuclei_s0/checkpoint
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

import instseg
from instseg.data.images import read_image
from instseg.serve.responses import prediction_json

DEMO_VAL = Path(instseg.__file__).parent / "assets" / "dsb2018_mini" / "val"


def main() -> int:
    torch.set_num_threads(2)
    predictor = instseg.load_prompts(sys.argv[1], "cpu")
    rng = np.random.default_rng(0)
    seconds: dict[str, list[float]] = {"predict": [], "prediction_json (rle)": [], "json.dumps": []}
    for path in sorted(DEMO_VAL.glob("*.png")):
        image = read_image(path).float() / 255
        predictor.set_image(image)
        height, width = image.shape[-2:]
        for _ in range(20):
            xy = [int(rng.integers(0, width)), int(rng.integers(0, height))]
            started = time.perf_counter()
            found = predictor.predict(points=[xy], labels=[1], multimask=False)
            predicted = time.perf_counter()
            answer = prediction_json(found, "rle")
            encoded = time.perf_counter()
            json.dumps(answer)
            done = time.perf_counter()
            for key, value in zip(
                seconds, (predicted - started, encoded - predicted, done - encoded), strict=True
            ):
                seconds[key].append(value)
    for key, values in seconds.items():
        mean, median = 1000 * statistics.mean(values), 1000 * statistics.median(values)
        print(f"{key}: mean {mean:.2f} ms, median {median:.2f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
