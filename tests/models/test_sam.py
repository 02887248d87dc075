"""SAM's predictor: one embedding per image, prompts in the image's own pixels, clear errors."""

import pytest
import torch

from instseg.errors import PromptError
from instseg.models.sam.model import SAM, SAMConfig, resized_shape
from instseg.prompt_predictor import PromptPredictor

TINY = SAMConfig(
    image_size=128,
    vit_dim=64,
    vit_depth=2,
    vit_heads=4,
    global_blocks=(1,),
    window=4,
    prompt_dim=32,
    mask_channels=8,
    decoder_mlp=64,
    decoder_heads=4,
    iou_head_hidden=32,
)


@pytest.fixture
def predictor():
    torch.manual_seed(0)
    p = PromptPredictor(SAM(TINY), device="cpu")
    p.set_image(torch.rand(3, 60, 90))  # resized to 85 x 128, padded to 128 x 128
    return p


def test_the_image_is_embedded_once_for_many_prompts(predictor, monkeypatch):
    calls = []
    monkeypatch.setattr(predictor.model, "network", lambda x: calls.append(x))
    for x in (10, 40, 80):
        predictor.predict(points=[[x, 30]])
    assert calls == []  # set_image ran before the patch; prompts never re-embed
    assert predictor.resized == resized_shape(60, 90, 128) == (85, 128)


def test_one_prompt_gives_three_readings_by_descending_predicted_iou(predictor):
    out = predictor.predict(points=[[45, 30], [10, 10]], labels=[1, 0])
    assert len(out) == 3 and out.image_size == (60, 90) and out.masks.shape == (3, 60, 90)
    assert out.category_names == ["object"] * 3
    assert torch.all(out.scores[:-1] >= out.scores[1:])
    single = predictor.predict(box=[5, 5, 50, 40], multimask=False)
    assert len(single) == 1
    assert predictor.logits.shape == (1, 1, 32, 32)  # what goes back in as mask_input
    again = predictor.predict(points=[[45, 30]], mask_input=predictor.logits[0], multimask=False)
    assert len(again) == 1


def test_prompts_are_in_the_original_images_pixels(predictor):
    """A point at (45, 30) of the 90 x 60 image is the point (63.75, 42.5) of the 128 x 85 input."""
    out = predictor.predict(points=[[45, 30]], multimask=False)
    scaled = (torch.tensor([[[45 * 128 / 90, 30 * 85 / 60]]]), torch.ones(1, 1))
    with torch.no_grad():
        logits, iou = predictor.model.decode(predictor.embedding, scaled, None, None, False)
    torch.testing.assert_close(out.scores, iou[0])
    expected = predictor.model.upsample(logits, (85, 128), (60, 90))[0] > 0
    assert torch.equal(out.masks, expected)


def test_boxes_in_one_batch_give_one_result_each_in_order(predictor):
    boxes = [[0, 0, 30, 30], [40, 20, 89, 59]]
    outs = predictor.predict_batch(box=boxes)
    assert len(outs) == 2 and all(len(o) == 1 for o in outs)
    alone = predictor.predict(box=boxes[1], multimask=False)
    torch.testing.assert_close(outs[1].scores, alone.scores)


@pytest.mark.parametrize(
    ("prompt", "message"),
    [
        ({}, "empty prompt"),
        ({"points": [[100, 10]]}, "outside the 90x60 image"),
        ({"points": [[10, -1]]}, "outside"),
        ({"points": [[float("nan"), 1]]}, "outside"),
        ({"points": [[1, 2]], "labels": [2]}, "labels: expected one 1"),
        ({"points": [1, 2, 3]}, "points: expected shape"),
        ({"points": "here"}, "points: expected numbers"),
        ({"box": [10, 10, 5, 20]}, "x1 > x0"),
        ({"box": [0, 0, 95, 20]}, "outside"),
        ({"mask_input": torch.zeros(1, 16, 16)}, "mask_input: expected low-resolution logits"),
        ({"box": [[0, 0, 5, 5], [1, 1, 6, 6]]}, "predict takes one prompt"),
    ],
)
def test_bad_prompts_get_one_clear_error(predictor, prompt, message):
    with pytest.raises(PromptError, match=message):
        predictor.predict(**prompt)


def test_no_image_and_bad_images(predictor):
    fresh = PromptPredictor(predictor.model)
    with pytest.raises(PromptError, match="call set_image"):
        fresh.predict(points=[[1, 1]])
    with pytest.raises(PromptError, match="set_image"):
        fresh.set_image(torch.rand(1, 3, 10, 10))
    with pytest.raises(PromptError, match="set_image"):
        fresh.set_image(3.5)


def test_predict_cli_with_clicks_and_boxes(tmp_path, capsys):
    import numpy as np
    from PIL import Image

    from instseg.cli import main
    from instseg.engine.checkpoint import save_checkpoint
    from instseg.models.build import checkpoint_meta
    from instseg.models.sam.model import OBJECT

    torch.manual_seed(0)
    model = SAM(TINY)
    ck = save_checkpoint(tmp_path / "sam", model.state_dict(), checkpoint_meta("sam", TINY, list(OBJECT)))
    Image.fromarray((np.random.default_rng(0).random((60, 90, 3)) * 255).astype(np.uint8)).save(
        tmp_path / "a.png"
    )
    common = ["predict", "--model", str(ck), str(tmp_path / "a.png"), "--device", "cpu"]
    assert main([*common, "--out", str(tmp_path / "clicks"), "--points", "20,20", "50,30,0"]) == 0
    assert (tmp_path / "clicks" / "overlays" / "a.png").is_file()
    assert (tmp_path / "clicks" / "labels" / "a_labels.png").is_file()
    assert main([*common, "--out", str(tmp_path / "boxes"), "--box", "0,0,40,40", "45,10,89,59"]) == 0
    assert "1 images, 2 masks" in capsys.readouterr().out
    assert main([*common, "--out", str(tmp_path / "bad"), "--points", "20"]) == 2
    assert "--points '20': expected 2 or 3 comma-separated numbers" in capsys.readouterr().err
    assert main([*common, "--out", str(tmp_path / "bad"), "--points", "200,20"]) == 2
    assert "outside the 90x60 image" in capsys.readouterr().err
