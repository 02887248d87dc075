"""torchvision ``maskrcnn_resnet50_fpn`` and ``_fpn_v2`` state dicts -> instseg Mask R-CNN checkpoints.

instseg's Mask R-CNN is torchvision's own ``MaskRCNN``; with a ResNet-50
trunk, frozen BatchNorm and torchvision's head sizes its module tree is the
same as ``maskrcnn_resnet50_fpn``'s, so every tensor keeps its name. What the
import adds is the checkpoint around the weights: the config, and the
categories (COCO's names when the predictor has torchvision's 91 outputs,
``class_N`` otherwise, as after fine-tuning on another dataset).

The file is read with ``torch.load(weights_only=True)``: tensors only, never
arbitrary code. ``maskrcnn_resnet50_fpn_v2`` state dicts (a convolutional box
head, a two-conv RPN head, BatchNorm in the trunk, the FPN and the heads) import
into the same model with ``heads: v2``.
"""

from __future__ import annotations

from pathlib import Path

from torchvision.models.detection import MaskRCNN_ResNet50_FPN_Weights

from instseg.engine.checkpoint import save_checkpoint
from instseg.errors import CheckpointError
from instseg.importers.state_dict import read_state_dict
from instseg.models.build import build_model, checkpoint_meta, model_config
from instseg.structures import Category

# torchvision's 91 outputs: background, then COCO category ids 1..90 (the unused ids are "N/A")
COCO_NAMES = MaskRCNN_ResNet50_FPN_Weights.COCO_V1.meta["categories"]
CLASSES = "roi_heads.box_predictor.cls_score.weight"


def import_torchvision_maskrcnn(source: str | Path, out: str | Path) -> Path:
    """Convert a local ``maskrcnn_resnet50_fpn`` or ``_fpn_v2`` state dict (.pth) into an instseg
    checkpoint at ``out``."""
    state = read_state_dict(source)
    if CLASSES not in state:
        raise CheckpointError(f"{source}: no {CLASSES}; not a torchvision Mask R-CNN state dict")
    v2 = "roi_heads.box_head.0.0.weight" in state  # the convolutional box head of _fpn_v2
    num_classes = int(state[CLASSES].shape[0]) - 1
    # v1's trunk has frozen BatchNorm; v2's trains its BatchNorm, in the trunk, the FPN and the heads
    fields = (
        {"backbone": "resnet50", "norm": "bn", "heads": "v2"}
        if v2
        else {"backbone": "resnet50", "norm": "frozen_bn"}
    )
    cfg = model_config("mask_rcnn", "default", fields)
    model = build_model("mask_rcnn", cfg, num_classes)
    name = "maskrcnn_resnet50_fpn_v2" if v2 else "maskrcnn_resnet50_fpn"
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # misshapen tensors
        detail = " ".join(str(exc).split())[:300]
        raise CheckpointError(f"{source}: does not fit {name} ({detail})") from None
    missing = [k for k in missing if not k.endswith("num_batches_tracked")]  # a counter, not a weight
    if missing or unexpected:
        raise CheckpointError(
            f"{source}: does not fit {name} (missing {missing[:3]}, unexpected {unexpected[:3]})"
        )
    if num_classes == len(COCO_NAMES) - 1:
        categories = [Category(i, name) for i, name in enumerate(COCO_NAMES) if i > 0]
    else:
        categories = [Category(i, f"class_{i}") for i in range(1, num_classes + 1)]
    origin = f"torchvision {name} ({Path(source).name})"
    meta = checkpoint_meta("mask_rcnn", cfg, categories, source=origin)
    return save_checkpoint(out, model.state_dict(), meta)
