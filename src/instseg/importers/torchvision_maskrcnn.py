"""torchvision ``maskrcnn_resnet50_fpn`` state dicts -> instseg Mask R-CNN checkpoints.

instseg's Mask R-CNN is torchvision's own ``MaskRCNN``; with a ResNet-50
trunk, frozen BatchNorm and torchvision's head sizes its module tree is the
same as ``maskrcnn_resnet50_fpn``'s, so every tensor keeps its name. What the
import adds is the checkpoint around the weights: the config, and the
categories (COCO's names when the predictor has torchvision's 91 outputs,
``class_N`` otherwise, as after fine-tuning on another dataset).

The file is read with ``torch.load(weights_only=True)``: tensors only, never
arbitrary code. ``maskrcnn_resnet50_fpn_v2`` has other heads (convolutional
box head, BatchNorm in the FPN and heads) and is refused with that reason.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor
from torchvision.models.detection import MaskRCNN_ResNet50_FPN_Weights

from instseg.engine.checkpoint import save_checkpoint
from instseg.errors import CheckpointError
from instseg.models.build import build_model, checkpoint_meta, model_config
from instseg.structures import Category

# torchvision's 91 outputs: background, then COCO category ids 1..90 (the unused ids are "N/A")
COCO_NAMES = MaskRCNN_ResNet50_FPN_Weights.COCO_V1.meta["categories"]
CLASSES = "roi_heads.box_predictor.cls_score.weight"


def read_state_dict(path: str | Path) -> dict[str, Tensor]:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises UnpicklingError, RuntimeError, EOFError...
        raise CheckpointError(f"{path}: not a readable state dict ({type(exc).__name__})") from None
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = state["model"]  # torchvision's reference scripts save {"model": ..., "optimizer": ...}
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise CheckpointError(f"{path}: expected a state dict of tensors")
    return {k.removeprefix("module."): v for k, v in state.items() if not k.endswith("num_batches_tracked")}


def import_torchvision_maskrcnn(source: str | Path, out: str | Path) -> Path:
    """Convert a local ``maskrcnn_resnet50_fpn`` state dict (.pth) into an instseg checkpoint at ``out``."""
    state = read_state_dict(source)
    if CLASSES not in state:
        raise CheckpointError(f"{source}: no {CLASSES}; not a torchvision Mask R-CNN state dict")
    if any(k.startswith("roi_heads.box_head.0.") for k in state):
        raise CheckpointError(
            f"{source}: a maskrcnn_resnet50_fpn_v2 state dict (convolutional box head); only "
            "maskrcnn_resnet50_fpn is supported"
        )
    num_classes = int(state[CLASSES].shape[0]) - 1
    cfg = model_config("mask_rcnn", "default", {"backbone": "resnet50", "norm": "frozen_bn"})
    model = build_model("mask_rcnn", cfg, num_classes)
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:  # missing, unexpected or misshapen tensors
        detail = " ".join(str(exc).split())[:300]
        raise CheckpointError(f"{source}: does not fit maskrcnn_resnet50_fpn ({detail})") from None
    if num_classes == len(COCO_NAMES) - 1:
        categories = [Category(i, name) for i, name in enumerate(COCO_NAMES) if i > 0]
    else:
        categories = [Category(i, f"class_{i}") for i in range(1, num_classes + 1)]
    origin = f"torchvision maskrcnn_resnet50_fpn ({Path(source).name})"
    meta = checkpoint_meta("mask_rcnn", cfg, categories, source=origin)
    return save_checkpoint(out, model.state_dict(), meta)
