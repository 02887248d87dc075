"""A checkpoint saved by segment-anything itself imports and gives the same masks and IoU predictions."""

from functools import partial

import pytest
import torch

from instseg.cli import main
from instseg.errors import CheckpointError
from instseg.importers.sam import convert_state_dict, import_sam
from instseg.models.sam.model import SAM, vit_b_preset, vit_h_preset, vit_l_preset
from instseg.prompt_predictor import PromptPredictor

sam_ref = pytest.importorskip("segment_anything", reason="segment-anything is a test dependency ([dev])")
from segment_anything.modeling import (  # noqa: E402
    ImageEncoderViT,
    MaskDecoder,
    PromptEncoder,
    Sam,
    TwoWayTransformer,
)

SIZE = 256  # a 16x16-token grid: windows of 14 need padding, as a 1024 input's 64 tokens do


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The official modules at vit_b's width, two blocks (one windowed, one global), a 256 input;
    every tensor moved off its initial value (zeros included), saved as segment-anything saves."""
    torch.manual_seed(0)
    model = Sam(
        image_encoder=ImageEncoderViT(
            img_size=SIZE,
            patch_size=16,
            embed_dim=768,
            depth=2,
            num_heads=12,
            mlp_ratio=4,
            norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
            qkv_bias=True,
            use_rel_pos=True,
            global_attn_indexes=[1],
            window_size=14,
            out_chans=256,
        ),
        prompt_encoder=PromptEncoder(
            embed_dim=256, image_embedding_size=(16, 16), input_image_size=(SIZE, SIZE), mask_in_chans=16
        ),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=3,
            transformer=TwoWayTransformer(depth=2, embedding_dim=256, mlp_dim=2048, num_heads=8),
            transformer_dim=256,
            iou_head_depth=3,
            iou_head_hidden_dim=256,
        ),
        pixel_mean=[123.675, 116.28, 103.53],
        pixel_std=[58.395, 57.12, 57.375],
    ).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    path = tmp_path_factory.mktemp("sam") / "sam_small.pth"
    torch.save(model.state_dict(), path)
    return model, path


def prompts(size: int, generator: torch.Generator):
    points = torch.rand(2, 3, 2, generator=generator) * size
    labels = torch.tensor([[1, 0, 1], [1, 1, 0]])
    xy = torch.rand(2, 2, 2, generator=generator) * size
    boxes = torch.cat([xy.amin(1), xy.amax(1) + 1], dim=1)
    masks = torch.randn(2, 1, 64, 64, generator=generator)
    return points, labels, boxes, masks


def test_imported_sam_gives_the_reference_masks_and_iou(reference, tmp_path):
    model, path = reference
    assert main(["import", "sam", str(path), str(tmp_path / "ck")]) == 0
    ours = PromptPredictor.from_checkpoint(tmp_path / "ck", device="cpu").model
    assert ours.cfg.global_blocks == (1,) and ours.cfg.window == 14 and ours.cfg.image_size == SIZE
    g = torch.Generator().manual_seed(1)
    image = torch.rand(3, SIZE, 200, generator=g)  # resized already; padded on the right
    with torch.no_grad():
        theirs_embedding = model.image_encoder(model.preprocess(image[None] * 255))
        our_embedding = ours.network(ours.transform.normalize(image)[None])
        torch.testing.assert_close(our_embedding, theirs_embedding, rtol=1e-4, atol=1e-4)
        points, labels, boxes, masks = prompts(SIZE, g)
        cases = [
            {"points": (points, labels)},
            {"boxes": boxes},
            {"points": (points, labels), "boxes": boxes},
            {"points": (points, labels), "masks": masks},
            {"boxes": boxes, "masks": masks},
        ]
        for case in cases:
            for multimask in (True, False):
                sparse, dense = model.prompt_encoder(
                    points=case.get("points"), boxes=case.get("boxes"), masks=case.get("masks")
                )
                their_logits, their_iou = model.mask_decoder(
                    theirs_embedding, model.prompt_encoder.get_dense_pe(), sparse, dense, multimask
                )
                our_logits, our_iou = ours.decode(
                    theirs_embedding, case.get("points"), case.get("boxes"), case.get("masks"), multimask
                )
                assert our_logits.shape == their_logits.shape == (2, 3 if multimask else 1, 64, 64)
                torch.testing.assert_close(our_logits, their_logits, rtol=1e-4, atol=1e-4)
                torch.testing.assert_close(our_iou, their_iou, rtol=1e-4, atol=1e-4)
                theirs_full = model.postprocess_masks(their_logits, (SIZE, 200), (300, 234))
                ours_full = ours.upsample(our_logits, (SIZE, 200), (300, 234))
                torch.testing.assert_close(ours_full, theirs_full, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("preset", ["vit_b", "vit_l", "vit_h"])
def test_presets_have_the_official_shapes(preset):
    """Every tensor of the official builders, renamed, has the same shape in instseg's SAM (built on
    the meta device: nothing is allocated)."""
    builders = {
        "vit_b": (sam_ref.build_sam_vit_b, vit_b_preset),
        "vit_l": (sam_ref.build_sam_vit_l, vit_l_preset),
    }
    builders["vit_h"] = (sam_ref.build_sam_vit_h, vit_h_preset)
    build_theirs, build_ours = builders[preset]
    with torch.device("meta"):
        theirs = convert_state_dict(build_theirs().state_dict())
        ours = SAM(build_ours()).state_dict()
    assert sorted(theirs) == sorted(ours)
    assert all(theirs[k].shape == ours[k].shape for k in ours)


def test_refuses_what_is_not_a_sam_checkpoint(reference, tmp_path):
    _, path = reference
    state = torch.load(path, weights_only=True)
    torch.save({**state, "mask_decoder.extra.weight": torch.zeros(2)}, tmp_path / "extra.pth")
    with pytest.raises(CheckpointError, match="does not fit SAM"):
        import_sam(tmp_path / "extra.pth", tmp_path / "out")
    torch.save({k: v for k, v in state.items() if "iou_prediction_head" not in k}, tmp_path / "partial.pth")
    with pytest.raises(CheckpointError, match="does not fit SAM"):
        import_sam(tmp_path / "partial.pth", tmp_path / "out")
    torch.save({"a.weight": torch.zeros(1)}, tmp_path / "other.pth")
    with pytest.raises(CheckpointError, match="not a segment-anything checkpoint"):
        import_sam(tmp_path / "other.pth", tmp_path / "out")


def test_an_imported_sam_fine_tunes_with_its_encoder_frozen(reference, tiny_coco, tmp_path, caplog):
    """``instseg train --init`` on an imported checkpoint: ``--backbone-lr 0`` leaves the image encoder
    as imported and trains the decoder; the result loads for prompting."""
    _, path = reference
    assert main(["import", "sam", str(path), str(tmp_path / "ck")]) == 0
    out = tmp_path / "ft"
    args = ["train", "--init", str(tmp_path / "ck"), "--data", str(tiny_coco), "--out", str(out)]
    args += ["--steps", "2", "--batch-size", "2", "--workers", "0", "--backbone-lr", "0", "--lr", "1e-3"]
    args += ["--prompts-per-image", "2", "--click-rounds", "1", "--points-per-side", "4"]
    args += ["--precise-bn-batches", "0"]
    with caplog.at_level("INFO"):
        assert main(args) == 0
    assert "backbone_lr 0 (every tensor under image_encoder.): " in caplog.text
    before = PromptPredictor.from_checkpoint(tmp_path / "ck", device="cpu").model.state_dict()
    after = PromptPredictor.from_checkpoint(out / "checkpoint", device="cpu").model.state_dict()
    encoder = [k for k in before if k.startswith("image_encoder.")]
    assert encoder and all(torch.equal(before[k], after[k]) for k in encoder)
    decoder = [k for k in before if k.startswith("mask_decoder.") and before[k].is_floating_point()]
    assert any(not torch.equal(before[k], after[k]) for k in decoder)
    assert all(torch.isfinite(after[k]).all() for k in decoder)
