"""A state dict saved by torchvision's own ``maskrcnn_resnet50_fpn`` imports and predicts the same."""

import pytest
import torch
from torchvision.models.detection import maskrcnn_resnet50_fpn, maskrcnn_resnet50_fpn_v2

import instseg
from instseg.cli import main
from instseg.errors import CheckpointError
from instseg.importers.torchvision_maskrcnn import import_torchvision_maskrcnn


@pytest.fixture(scope="module", params=[maskrcnn_resnet50_fpn, maskrcnn_resnet50_fpn_v2])
def reference(request, tmp_path_factory):
    """Random weights from torchvision (BatchNorm, as it builds without pretrained weights), the mask
    logits pushed up so that untrained masks are not empty; saved as users save theirs. Both the
    original heads and the v2 ones (convolutional box head, BatchNorm in the FPN and heads)."""
    torch.manual_seed(0)
    model = request.param(weights=None, weights_backbone=None, num_classes=91, box_score_thresh=0.0)
    with torch.no_grad():
        model.roi_heads.mask_predictor.mask_fcn_logits.bias.add_(2.0)
    path = tmp_path_factory.mktemp("tv") / "maskrcnn.pth"
    torch.save(model.state_dict(), path)
    return model.eval(), path


def test_imported_checkpoint_predicts_what_torchvision_predicts(reference, tmp_path):
    model, path = reference
    assert main(["import", "torchvision-maskrcnn", str(path), str(tmp_path / "ck")]) == 0
    predictor = instseg.load(tmp_path / "ck", device="cpu", score_threshold=0.0)
    assert len(predictor.categories) == 90 and predictor.categories[0].name == "person"
    assert predictor.categories[89].id == 90 and predictor.categories[89].name == "toothbrush"
    image = torch.rand(3, 120, 160, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        theirs = model([image])[0]
        ours = predictor.model([image])[0]
    masks = theirs["masks"][:, 0] > 0.5
    kept = masks.flatten(1).any(1)  # instseg drops empty masks (random boxes can be degenerate)
    assert len(theirs["scores"]) == 100 and len(ours["scores"]) == int(kept.sum()) > 20
    assert torch.equal(ours["labels"], theirs["labels"][kept])
    torch.testing.assert_close(ours["scores"], theirs["scores"][kept])
    torch.testing.assert_close(ours["boxes"], theirs["boxes"][kept])
    differ = (ours["masks"] != masks[kept]).float().mean()
    assert differ < 1e-3


def test_refuses_what_is_not_maskrcnn_resnet50_fpn(reference, tmp_path):
    _, path = reference
    state = torch.load(path, weights_only=True)
    torch.save({k: v for k, v in state.items() if "mask_head" not in k}, tmp_path / "partial.pth")
    with pytest.raises(CheckpointError, match=r"does not fit maskrcnn_resnet50_fpn.* \(missing"):
        import_torchvision_maskrcnn(tmp_path / "partial.pth", tmp_path / "out")
    torch.save({"a": 1}, tmp_path / "junk.pth")
    with pytest.raises(CheckpointError, match="expected a state dict of tensors"):
        import_torchvision_maskrcnn(tmp_path / "junk.pth", tmp_path / "out")
    (tmp_path / "text.pth").write_text("not a checkpoint")
    with pytest.raises(CheckpointError, match="not a readable state dict"):
        import_torchvision_maskrcnn(tmp_path / "text.pth", tmp_path / "out")
