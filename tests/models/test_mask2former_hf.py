"""Parity with Hugging Face ``transformers``' Mask2Former: same weights, same outputs."""

from __future__ import annotations

import pytest
import torch

from instseg.api import load
from instseg.cli import main
from instseg.errors import CheckpointError
from instseg.importers.hf_mask2former import config_from_hf, import_hf_mask2former
from instseg.models.mask2former.decoder import mask_logits

transformers = pytest.importorskip(
    "transformers", reason="transformers is not installed (pip install '.[hf]')"
)


def _hf_model(tmp_path, layer_type="basic", depths=(2, 2, 2, 2), widths=(64, 128, 256, 512)):
    torch.manual_seed(0)
    backbone = transformers.ResNetConfig(
        embedding_size=64,
        hidden_sizes=list(widths),
        depths=list(depths),
        layer_type=layer_type,
        out_features=["stage1", "stage2", "stage3", "stage4"],
    )
    config = transformers.Mask2FormerConfig(
        backbone_config=backbone,
        feature_size=64,
        mask_feature_size=64,
        hidden_dim=64,
        encoder_feedforward_dim=96,
        dim_feedforward=96,
        encoder_layers=2,
        decoder_layers=4,
        num_attention_heads=4,
        num_queries=7,
        num_labels=3,
    )
    model = transformers.Mask2FormerForUniversalSegmentation(config).eval()
    with torch.no_grad():  # non-trivial BatchNorm statistics, so a mix-up of running stats shows
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
    model.save_pretrained(tmp_path / "hf")
    return model


def test_imported_model_matches_transformers(tmp_path):
    hf = _hf_model(tmp_path)
    assert main(["import", "hf-mask2former", str(tmp_path / "hf"), str(tmp_path / "instseg")]) == 0
    ckpt = tmp_path / "instseg"
    predictor = load(ckpt, device="cpu")
    model = predictor.model.eval()
    assert [c.name for c in predictor.categories] == [hf.config.id2label[i] for i in range(3)]
    pixels = torch.randn(2, 3, 96, 128)
    with torch.no_grad():
        ref = hf(pixel_values=pixels, output_auxiliary_logits=True)
        ours = [
            {
                "class_logits": o.class_logits,
                "mask_logits": mask_logits(o.mask_embed, o.mask_features),
            }
            for o in model.network(pixels).layers
        ]
    assert len(ours) == 4
    torch.testing.assert_close(ours[-1]["class_logits"], ref.class_queries_logits, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(ours[-1]["mask_logits"], ref.masks_queries_logits, atol=1e-4, rtol=1e-4)
    for mine, theirs in zip(ours[:-1], ref.auxiliary_logits, strict=True):
        torch.testing.assert_close(mine["mask_logits"], theirs["masks_queries_logits"], atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(mine["class_logits"], theirs["class_queries_logits"], atol=1e-4, rtol=1e-4)


def test_unsupported_backbone_is_refused_by_name(tmp_path):
    with pytest.raises(CheckpointError, match="swin"):
        config_from_hf({"backbone_config": {"model_type": "swin"}})
    with pytest.raises(CheckpointError, match=r"config\.json"):
        import_hf_mask2former(tmp_path, tmp_path / "out")
    assert main(["import", "hf-mask2former", str(tmp_path), str(tmp_path / "out")]) == 2  # one-line error
