"""Val mask AP of trained checkpoints as saved and with BatchNorm statistics averaged over many batches.

Each checkpoint's own training config (stored in it) gives the data and the
augmentation; its stream of training batches is drawn from a seed, and only the
BatchNorm running statistics change (``engine/precise_bn.py``). Run on the
checkpoints of one training run to see how much of their AP spread is the
statistics of their last few batches.

    python benchmarks/precise_bn_check.py runs/bench/yolact_rtn_s1/checkpoint \
        runs/bench/yolact_rtn_s1/snapshots/step_0006600 --batches 200
"""

from __future__ import annotations

import argparse
import json

import torch

import instseg
from instseg.config import TrainConfig, config_from_dict
from instseg.engine import checkpoint as ckpt
from instseg.engine.evaluation import evaluate_model
from instseg.engine.precise_bn import recompute_batch_norm_statistics
from instseg.engine.trainer import training_batches, training_indexes
from instseg.eval.report import EvalOptions
from instseg.models.fusion import inference_model


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoints", nargs="+")
    parser.add_argument("--batches", type=int, default=200)
    parser.add_argument("--seed", type=int, default=1, help="of the batch stream (training used its own)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    options = EvalOptions(iou_types=("segm", "bbox"), max_dets=(1, 10, 500))
    for path in args.checkpoints:
        meta = ckpt.load_meta(path)
        cfg = config_from_dict(TrainConfig, {**meta["train_config"], "seed": args.seed, "workers": 0})
        train_index, val_index = training_indexes(cfg)
        model = instseg.load(path, device="cpu").model
        row = {"checkpoint": path, "step": meta["step"]}
        for name in ("as saved", "averaged"):
            if name == "averaged":
                batches = training_batches(train_index, cfg)
                recompute_batch_norm_statistics(model, batches, args.batches, progress=False)
            fast = inference_model(model)
            ev = evaluate_model(fast, val_index, train_index.categories, options=options, progress=False)
            row[name] = {t: round(ev.metrics[t]["AP"], 4) for t in ("segm", "bbox")}
        print(json.dumps(row), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
