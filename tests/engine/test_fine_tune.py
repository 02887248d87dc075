"""Fine-tuning from a checkpoint onto data with other classes: what is kept, what starts afresh."""

import json

import pytest
import torch

from instseg.cli import main
from instseg.config import TrainConfig
from instseg.engine import checkpoint as ckpt
from instseg.engine.fine_tune import fine_tune_config, load_for_fine_tuning
from instseg.engine.trainer import _optimizer
from instseg.errors import CheckpointError, InstsegError
from instseg.models.build import build_model, model_config

CLASS_SIZED = {
    "roi_heads.box_predictor.cls_score.weight",
    "roi_heads.box_predictor.cls_score.bias",
    "roi_heads.box_predictor.bbox_pred.weight",
    "roi_heads.box_predictor.bbox_pred.bias",
    "roi_heads.mask_predictor.mask_fcn_logits.weight",
    "roi_heads.mask_predictor.mask_fcn_logits.bias",
}


@pytest.fixture(scope="module")
def three_classes(tiny_coco, tmp_path_factory):
    """The tiny dataset with a third category, so that class-sized layers change size."""
    root = tmp_path_factory.mktemp("three")
    for split in ("train", "val"):
        data = json.loads((tiny_coco / "annotations" / f"instances_{split}.json").read_text())
        data["categories"].append({"id": 9, "name": "star", "supercategory": "shape"})
        (root / f"{split}.json").write_text(json.dumps(data))
    return root


def test_class_sized_tensors_start_afresh_and_the_rest_comes_from_the_checkpoint(trained):
    family, cfg = fine_tune_config(trained.checkpoint, None, {})
    assert family == "mask_rcnn" and cfg.fpn_channels == 32  # the checkpoint's config, not a preset's
    torch.manual_seed(0)
    model = build_model(family, cfg, 3)
    fresh = load_for_fine_tuning(model, trained.checkpoint, 3)
    assert set(fresh) == CLASS_SIZED
    saved = ckpt.load_weights(trained.checkpoint)
    for key, value in model.state_dict().items():
        if key not in CLASS_SIZED:
            assert torch.equal(value, saved[key]), key
    assert model.roi_heads.box_predictor.cls_score.weight.shape[0] == 4
    same = build_model(family, cfg, 2)
    assert load_for_fine_tuning(same, trained.checkpoint, 2) == []


def test_another_architecture_or_family_is_refused(trained):
    _, cfg = fine_tune_config(trained.checkpoint, None, {"fpn_channels": 48})
    with pytest.raises(CheckpointError, match="another architecture"):
        load_for_fine_tuning(build_model("mask_rcnn", cfg, 2), trained.checkpoint, 2)
    with pytest.raises(CheckpointError, match="cannot start a solov2 model"):
        fine_tune_config(trained.checkpoint, "solov2", {})


def test_train_init_on_the_command_line(trained, tiny_coco, three_classes, tmp_path, caplog):
    out = tmp_path / "ft"
    args = ["train", "--init", str(trained.checkpoint), "--data", str(three_classes / "train.json")]
    args += ["--images", str(tiny_coco / "train"), "--out", str(out), "--steps", "2", "--batch-size", "2"]
    args += ["--workers", "0", "--backbone-lr", "0.1", "--precise-bn-batches", "0"]
    with caplog.at_level("INFO"):
        assert main(args) == 0
    assert "re-initialised for 3 classes: roi_heads.box_predictor.cls_score.weight" in caplog.text
    meta = ckpt.load_meta(out / "checkpoint")
    assert meta["family"] == "mask_rcnn" and len(meta["categories"]) == 3
    assert meta["model_config"]["fpn_channels"] == 32
    assert meta["train_config"]["init"] == str(trained.checkpoint)


def test_backbone_learning_rate_is_a_fraction_of_the_rest(trained):
    _, cfg = fine_tune_config(trained.checkpoint, None, {})
    model = build_model("mask_rcnn", cfg, 2)
    groups = _optimizer(model, TrainConfig(backbone_lr=0.1)).param_groups
    assert [g["lr_scale"] for g in groups] == [0.1, 0.1, 1.0, 1.0]
    backbone = {id(p) for g in groups[:2] for p in g["params"]}
    assert backbone == {id(p) for n, p in model.named_parameters() if n.startswith("backbone.")}
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))
    assert len(_optimizer(model, TrainConfig()).param_groups) == 2  # as before: older resumes still load


@pytest.mark.parametrize(
    ("family", "loss", "counts"),
    [
        ("condinst", "equalized_focal", "criterion.equalized.negative"),
        ("mask2former", "seesaw", "criterion.seesaw.counts"),
    ],
)
def test_a_class_loss_that_counts_starts_its_counts_afresh_and_nothing_else_is_missing(
    family, loss, counts, tiny_coco, tmp_path, caplog
):
    import instseg
    from tests.conftest import tiny_train_options
    from tests.models.test_mask2former import TINY as M2F_TINY

    options = M2F_TINY if family == "mask2former" else {"fpn_channels": 32, "head_channels": 32, "scale": 1.0}
    plain = instseg.train(
        family,
        tiny_coco,
        model_options=options,
        progress=False,
        **tiny_train_options(tmp_path / "plain", steps=1, checkpoint_every=0),
    ).checkpoint
    _, cfg = fine_tune_config(plain, None, {"class_loss": loss})
    model = build_model(family, cfg, 2)
    model.get_buffer(counts).fill_(7.0)  # so that loading cannot leave it as it was by chance
    with caplog.at_level("INFO"):
        assert load_for_fine_tuning(model, plain, 2) == []
    assert f"has no {counts}" in caplog.text
    assert (model.get_buffer(counts) == 7.0).all()  # its own start
    saved = ckpt.load_weights(plain)
    assert all(torch.equal(v, saved[k]) for k, v in model.state_dict().items() if k != counts and k in saved)
    missing = {k for k in model.state_dict() if k not in saved}
    assert missing <= {counts, counts.replace("negative", "positive")}
    if family == "condinst":  # a parameter the checkpoint lacks is still another architecture
        _, cfg = fine_tune_config(plain, None, {"point_refine": True})
        with pytest.raises(CheckpointError, match="has no point_head"):
            load_for_fine_tuning(build_model(family, cfg, 2), plain, 2)


def test_training_only_the_classifier_changes_its_layers_alone(tiny_coco, tmp_path, caplog):
    """Decoupled re-training: every other weight and BatchNorm statistic stays the checkpoint's, also
    through the BatchNorm re-estimation at the end."""
    import instseg
    from tests.conftest import tiny_train_options

    options = {"fpn_channels": 32, "head_channels": 32, "scale": 1.0, "norm": "bn"}
    plain = instseg.train(
        "condinst",
        tiny_coco,
        model_options=options,
        progress=False,
        **tiny_train_options(tmp_path / "plain", steps=2, checkpoint_every=0, precise_bn_batches=2),
    ).checkpoint
    with caplog.at_level("INFO"):
        retrained = instseg.train(
            "condinst",
            tiny_coco,
            progress=False,
            init=str(plain),
            train_only="classifier",
            repeat_threshold=1.0,
            **tiny_train_options(tmp_path / "retrained", steps=3, checkpoint_every=0, precise_bn_batches=2),
        ).checkpoint
    before, after = ckpt.load_weights(plain), ckpt.load_weights(retrained)
    classifier = ("head.cls_tower.", "head.cls_out.")
    changed = {k for k, v in after.items() if not torch.equal(v, before[k])}
    assert changed and all(k.startswith(classifier) for k in changed), sorted(changed)[:5]
    assert "head.cls_out.weight" in changed
    assert any(k.startswith("backbone.") and k.endswith("running_mean") for k in before)  # BN was there
    params = [
        n for n, _ in build_model("condinst", fine_tune_config(plain, None, {})[1], 2).named_parameters()
    ]
    learning = sum(n.startswith(classifier) for n in params)
    assert f"{len(params) - learning} weight tensors frozen, {learning} train" in caplog.text


def test_only_the_class_layers_train_and_a_family_without_them_is_refused(trained):
    from instseg.engine.trainer import _freeze

    _, cfg = fine_tune_config(trained.checkpoint, None, {})
    model = build_model("mask_rcnn", cfg, 2)
    frozen = _freeze(model, TrainConfig(train_only="classifier"), "mask_rcnn")
    learning = [n for n, p in model.named_parameters() if p.requires_grad]
    assert learning == ["roi_heads.box_predictor.cls_score.weight", "roi_heads.box_predictor.cls_score.bias"]
    assert len(frozen) == len(list(model.parameters())) - 2
    with pytest.raises(InstsegError, match="sam has no class layers"):
        _freeze(build_model("sam", model_config("sam"), 1), TrainConfig(train_only="classifier"), "sam")


@pytest.mark.parametrize("family", ["mask_rcnn", "solov2", "yolact", "condinst", "mask2former"])
def test_every_family_names_class_layers_it_has(family):
    """A renamed module would otherwise leave nothing to train; the class logits must be among them."""
    model = build_model(family, model_config(family), 3)
    names = [n for n, _ in model.named_parameters()]
    for prefix in model.classifier_prefixes:
        assert any(n.startswith(prefix) for n in names), prefix
    learning = [n for n in names if n.startswith(tuple(model.classifier_prefixes))]
    assert any(model.get_parameter(n).shape[0] in (3, 4) for n in learning)  # K, or K + 1 with background
