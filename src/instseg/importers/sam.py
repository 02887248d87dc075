"""segment-anything checkpoints (``sam_vit_b_01ec64.pth``, ``vit_l``, ``vit_h``) -> instseg SAM checkpoints.

The file is read with ``torch.load(weights_only=True)``. Every official tensor
has exactly one place in instseg's SAM (``RENAMES`` below; the four point-kind
embeddings are stacked into one table); a tensor left over or missing is an
error, never skipped. The encoder's shape (width, depth, which blocks attend
globally) is read from the tensors themselves, so any of the three sizes imports
with the same call.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
from torch import Tensor

from instseg.engine.checkpoint import save_checkpoint
from instseg.errors import CheckpointError
from instseg.importers.state_dict import read_state_dict
from instseg.models.build import checkpoint_meta
from instseg.models.sam.model import OBJECT, SAM, SAMConfig

# official name pattern -> instseg name, applied in order, first match wins
RENAMES = [
    (r"image_encoder\.patch_embed\.proj\.", "image_encoder.patch_embed."),
    (r"(image_encoder\.blocks\.\d+\.attn)\.rel_pos_([hw])", r"\1.rel_\2"),
    (r"(image_encoder\.blocks\.\d+\.mlp)\.lin1\.", r"\1.0."),
    (r"(image_encoder\.blocks\.\d+\.mlp)\.lin2\.", r"\1.2."),
    (r"prompt_encoder\.pe_layer\.positional_encoding_gaussian_matrix", "prompt_encoder.fourier.frequencies"),
    (r"prompt_encoder\.not_a_point_embed\.", "prompt_encoder.not_a_point."),
    (r"prompt_encoder\.no_mask_embed\.", "prompt_encoder.no_mask."),
    (r"prompt_encoder\.mask_downscaling\.", "prompt_encoder.mask_down."),
    (
        r"mask_decoder\.transformer\.layers\.(\d+)\.cross_attn_token_to_image\.",
        r"mask_decoder.transformer.blocks.\1.token_to_image.",
    ),
    (
        r"mask_decoder\.transformer\.layers\.(\d+)\.cross_attn_image_to_token\.",
        r"mask_decoder.transformer.blocks.\1.image_to_token.",
    ),
    (r"mask_decoder\.transformer\.layers\.(\d+)\.mlp\.lin1\.", r"mask_decoder.transformer.blocks.\1.mlp.0."),
    (r"mask_decoder\.transformer\.layers\.(\d+)\.mlp\.lin2\.", r"mask_decoder.transformer.blocks.\1.mlp.2."),
    (r"mask_decoder\.transformer\.layers\.", "mask_decoder.transformer.blocks."),
    (
        r"mask_decoder\.transformer\.final_attn_token_to_image\.",
        "mask_decoder.transformer.final_token_to_image.",
    ),
    (r"mask_decoder\.transformer\.norm_final_attn\.", "mask_decoder.transformer.norm_final."),
    (r"mask_decoder\.output_upscaling\.", "mask_decoder.upscale."),
    (r"mask_decoder\.output_hypernetworks_mlps\.", "mask_decoder.hypernetworks."),
    (r"mask_decoder\.iou_prediction_head\.", "mask_decoder.iou_head."),
]
POINT_KINDS = "prompt_encoder.point_embeddings.{}.weight"
HEADS = {768: 12, 1024: 16, 1280: 16}  # the official encoders' head counts by width
NOT_SAVED = ("pixel_mean", "pixel_std")  # constants of the config, not weights


def rename(name: str) -> str:
    for pattern, replacement in RENAMES:
        new, count = re.subn(f"^{pattern}", replacement, name)
        if count:
            return new
    return name


def config_from_tensors(state: dict[str, Tensor], source: str | Path) -> SAMConfig:
    """The encoder's width, depth, heads and global blocks as the tensors have them."""
    try:
        dim, _, patch, _ = state["image_encoder.patch_embed.proj.weight"].shape
        grid = state["image_encoder.pos_embed"].shape[1]
    except KeyError:
        raise CheckpointError(
            f"{source}: no image_encoder.patch_embed; not a segment-anything checkpoint"
        ) from None
    depth = len({k.split(".")[2] for k in state if k.startswith("image_encoder.blocks.")})
    if dim not in HEADS:
        raise CheckpointError(f"{source}: an encoder of width {dim}; official SAM has 768, 1024 or 1280")
    global_blocks = tuple(
        i for i in range(depth) if state[f"image_encoder.blocks.{i}.attn.rel_pos_h"].shape[0] == 2 * grid - 1
    )
    window = next(
        (state[f"image_encoder.blocks.{i}.attn.rel_pos_h"].shape[0] + 1) // 2
        for i in range(depth)
        if i not in global_blocks
    )
    return SAMConfig(
        image_size=grid * patch,
        patch=patch,
        vit_dim=dim,
        vit_depth=depth,
        vit_heads=HEADS[dim],
        global_blocks=global_blocks,
        window=window,
    )


def convert_state_dict(state: dict[str, Tensor]) -> dict[str, Tensor]:
    state = {k: v for k, v in state.items() if k not in NOT_SAVED}
    kinds = [state.pop(POINT_KINDS.format(i), None) for i in range(4)]
    converted = {rename(k): v for k, v in state.items()}
    if all(k is not None for k in kinds):
        converted["prompt_encoder.point_kinds.weight"] = torch.cat(kinds)
    return converted


def import_sam(source: str | Path, out: str | Path) -> Path:
    """Convert a local segment-anything checkpoint (.pth) into an instseg checkpoint at ``out``."""
    state = read_state_dict(source)
    cfg = config_from_tensors(state, source)
    model = SAM(cfg)
    try:
        model.load_state_dict(convert_state_dict(state))
    except RuntimeError as exc:  # missing, unexpected or misshapen tensors
        detail = " ".join(str(exc).split())[:300]
        raise CheckpointError(
            f"{source}: does not fit SAM with a {cfg.vit_dim}-wide encoder ({detail})"
        ) from None
    meta = checkpoint_meta("sam", cfg, list(OBJECT), source=f"segment-anything ({Path(source).name})")
    return save_checkpoint(out, model.state_dict(), meta)
