"""Hugging Face ``transformers`` Mask2Former (instance) checkpoints -> instseg Mask2Former checkpoints.

Reads a ``save_pretrained`` directory (``config.json`` + ``model.safetensors``,
or a ``pytorch_model.bin`` state dict loaded with ``weights_only=True``), maps
every tensor by name, and writes an instseg checkpoint that ``instseg.load``
rebuilds alone. No ``transformers`` import is needed to convert.

Supported backbones are the ResNets instseg builds (HF ``ResNetBackbone`` with
the layouts of ResNet-18/34/50); the official checkpoints use Swin, which
instseg does not build, and are refused with that reason.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor

from instseg.engine.checkpoint import save_checkpoint
from instseg.errors import CheckpointError
from instseg.importers.state_dict import read_state_dict
from instseg.models.build import checkpoint_meta
from instseg.models.mask2former.model import Mask2FormerConfig
from instseg.structures import Category

# (layer type, depths, widths) of HF ResNetConfig -> instseg backbone
RESNET_LAYOUTS = {
    ("basic", (2, 2, 2, 2), (64, 128, 256, 512)): "resnet18",
    ("basic", (3, 4, 6, 3), (64, 128, 256, 512)): "resnet34",
    ("bottleneck", (3, 4, 6, 3), (256, 512, 1024, 2048)): "resnet50",
}
PIXEL = "model.pixel_level_module."
DECODER = "model.transformer_module."
# (HF pattern, instseg replacement), applied in order to every key; the first that matches wins
STAGE = r"encoder\.encoder\.stages\.(\d+)\.layers\.(\d+)\."


def _block(m: re.Match) -> str:
    return f"backbone.layer{int(m[1]) + 1}.{m[2]}."


# (HF pattern, instseg replacement) for the key after PIXEL / DECODER; the first that matches wins
RENAMES: list[tuple[str, str | Callable[[re.Match], str]]] = [
    (r"encoder\.embedder\.embedder\.convolution\.", "backbone.conv1."),
    (r"encoder\.embedder\.embedder\.normalization\.", "backbone.bn1."),
    (STAGE + r"shortcut\.convolution\.", lambda m: _block(m) + "downsample.0."),
    (STAGE + r"shortcut\.normalization\.", lambda m: _block(m) + "downsample.1."),
    (STAGE + r"layer\.(\d+)\.convolution\.", lambda m: _block(m) + f"conv{int(m[3]) + 1}."),
    (STAGE + r"layer\.(\d+)\.normalization\.", lambda m: _block(m) + f"bn{int(m[3]) + 1}."),
    (r"decoder\.level_embed$", "pixel_decoder.level_embed"),
    (r"decoder\.input_projections\.", "pixel_decoder.input_proj."),
    (r"decoder\.encoder\.layers\.(\d+)\.self_attn\.", r"pixel_decoder.layers.\1.attn."),
    (r"decoder\.encoder\.layers\.(\d+)\.self_attn_layer_norm\.", r"pixel_decoder.layers.\1.attn_norm."),
    (r"decoder\.encoder\.layers\.(\d+)\.fc(\d)\.", r"pixel_decoder.layers.\1.linear\2."),
    (r"decoder\.encoder\.layers\.(\d+)\.final_layer_norm\.", r"pixel_decoder.layers.\1.ffn_norm."),
    (r"decoder\.mask_projection\.", "pixel_decoder.mask_proj."),
    (r"decoder\.adapter_1\.", "pixel_decoder.lateral."),
    (r"decoder\.layer_1\.", "pixel_decoder.output."),
    (r"queries_embedder\.", "decoder.query_pos."),
    (r"queries_features\.", "decoder.query_feat."),
    (r"level_embed\.", "decoder.level_embed."),
    (r"decoder\.layers\.(\d+)\.self_attn\.out_proj\.", r"decoder.layers.\1.self_attn.out_proj."),
    (r"decoder\.layers\.(\d+)\.self_attn_layer_norm\.", r"decoder.layers.\1.self_norm."),
    (r"decoder\.layers\.(\d+)\.cross_attn\.", r"decoder.layers.\1.cross_attn."),
    (r"decoder\.layers\.(\d+)\.cross_attn_layer_norm\.", r"decoder.layers.\1.cross_norm."),
    (r"decoder\.layers\.(\d+)\.fc(\d)\.", r"decoder.layers.\1.linear\2."),
    (r"decoder\.layers\.(\d+)\.final_layer_norm\.", r"decoder.layers.\1.ffn_norm."),
    (r"decoder\.layernorm\.", "decoder.norm."),
    (r"decoder\.mask_predictor\.mask_embedder\.(\d+)\.0\.", r"decoder.mask_embed.layers.\1."),
]
QKV = re.compile(r"decoder\.layers\.(\d+)\.self_attn\.([qkv])_proj\.(weight|bias)$")


def config_from_hf(hf: dict) -> Mask2FormerConfig:
    """The instseg config of a HF ``Mask2FormerConfig`` dict, or a ``CheckpointError`` saying what differs."""
    bb = hf.get("backbone_config") or {}
    layout = (bb.get("layer_type"), tuple(bb.get("depths", ())), tuple(bb.get("hidden_sizes", ())))
    if bb.get("model_type") != "resnet" or layout not in RESNET_LAYOUTS or bb.get("downsample_in_bottleneck"):
        raise CheckpointError(
            f"backbone {bb.get('model_type')!r} {layout[1:]} is not one instseg builds; "
            "supported: HF ResNet-18/34/50 layouts"
        )
    dims = {hf.get(k, 256) for k in ("feature_size", "mask_feature_size", "hidden_dim")}
    if len(dims) != 1:
        raise CheckpointError(f"feature_size, mask_feature_size and hidden_dim differ ({sorted(dims)})")
    if hf.get("pre_norm") or hf.get("enforce_input_projection") or hf.get("common_stride", 4) != 4:
        raise CheckpointError("pre_norm, enforce_input_projection and common_stride != 4 are not supported")
    return Mask2FormerConfig(
        backbone=RESNET_LAYOUTS[layout],
        norm="bn",
        hidden_dim=dims.pop(),
        heads=hf.get("num_attention_heads", 8),
        encoder_layers=hf.get("encoder_layers", 6),
        encoder_ffn=hf.get("encoder_feedforward_dim", 1024),
        decoder_layers=hf.get("decoder_layers", 10) - 1,
        decoder_ffn=hf.get("dim_feedforward", 2048),
        num_queries=hf.get("num_queries", 100),
        class_weight=hf.get("class_weight", 2.0),
        mask_weight=hf.get("mask_weight", 5.0),
        dice_weight=hf.get("dice_weight", 5.0),
        no_object_weight=hf.get("no_object_weight", 0.1),
        num_points=hf.get("train_num_points", 12544),
        oversample_ratio=hf.get("oversample_ratio", 3.0),
        importance_ratio=hf.get("importance_sample_ratio", 0.75),
    )


def _rename(key: str) -> str | None:
    if key.startswith("class_predictor."):
        return "decoder.class_head." + key.split(".", 1)[1]
    for prefix in (PIXEL, DECODER):
        if key.startswith(prefix):
            rest = key[len(prefix) :]
            break
    else:
        return None
    for pattern, replacement in RENAMES:
        if re.match(pattern, rest):
            return re.sub(pattern, replacement, rest, count=1)
    return None


def convert_state_dict(hf_state: dict[str, Tensor]) -> dict[str, Tensor]:
    """HF tensor names -> instseg's; the separate q/k/v projections of self-attention become
    ``nn.MultiheadAttention``'s packed ``in_proj``. Unknown keys raise, so nothing is dropped silently."""
    out: dict[str, Tensor] = {}
    qkv: dict[tuple[str, str], dict[str, Tensor]] = {}
    unknown = []
    for key, value in hf_state.items():
        if key.startswith("criterion."):
            continue
        rest = key[len(DECODER) :] if key.startswith(DECODER) else key
        match = QKV.match(rest)
        if match:
            qkv.setdefault((match.group(1), match.group(3)), {})[match.group(2)] = value
            continue
        new = _rename(key)
        if new is None:
            unknown.append(key)
        else:
            out[new] = value
    if unknown:
        raise CheckpointError(f"unexpected tensors in the Mask2Former checkpoint: {unknown[:5]}")
    for (layer, kind), parts in qkv.items():
        packed = "in_proj_weight" if kind == "weight" else "in_proj_bias"
        out[f"decoder.layers.{layer}.self_attn.{packed}"] = torch.cat([parts["q"], parts["k"], parts["v"]])
    return out


def _read_state(source: Path) -> dict[str, Tensor]:
    if (source / "model.safetensors").is_file():
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(source / "model.safetensors"))
        except (SafetensorError, OSError) as exc:
            raise CheckpointError(f"{source / 'model.safetensors'}: cannot read weights ({exc})") from None
    if (source / "pytorch_model.bin").is_file():
        return read_state_dict(source / "pytorch_model.bin")
    raise CheckpointError(f"{source}: no model.safetensors or pytorch_model.bin")


def import_hf_mask2former(source: str | Path, out: str | Path) -> Path:
    """Convert a local HF Mask2Former directory into an instseg checkpoint at ``out``."""
    source = Path(source)
    config_file = source / "config.json"
    if not config_file.is_file():
        raise CheckpointError(f"{source}: no config.json (expected a save_pretrained directory)")
    try:
        hf = json.loads(config_file.read_text())
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{config_file}: malformed JSON ({exc})") from None
    if not isinstance(hf, dict):
        raise CheckpointError(f"{config_file}: expected a config object, got a {type(hf).__name__}")
    try:
        cfg = config_from_hf(hf)
        labels = hf.get("id2label") or {str(i): f"class_{i}" for i in range(hf.get("num_labels", 0))}
        categories = [
            Category(id=int(i), name=str(name))
            for i, name in sorted(labels.items(), key=lambda kv: int(kv[0]))
        ]
    except (AttributeError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{config_file}: malformed Mask2Former config ({exc})") from None
    meta = checkpoint_meta("mask2former", cfg, categories, source=f"transformers Mask2Former ({source.name})")
    return save_checkpoint(out, convert_state_dict(_read_state(source)), meta)
