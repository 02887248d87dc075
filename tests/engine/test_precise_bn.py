"""BatchNorm statistics recomputed at the end of training: the average over the batches, weights untouched."""

import torch
from torch import nn

from instseg.engine.precise_bn import recompute_batch_norm_statistics


class _Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 1)
        self.bn = nn.BatchNorm2d(4)

    def forward(self, images, targets):
        assert targets is not None, "the training forward gets its targets"
        return {"loss": self.bn(self.conv(torch.stack(images))).sum()}


def test_statistics_become_the_average_over_the_batches_and_weights_stay():
    model = _Tiny().eval()
    g = torch.Generator().manual_seed(0)
    images = [[torch.randn(3, 8, 8, generator=g) * (i + 1) + i for _ in range(2)] for i in range(5)]
    batches = [(pair, [{}, {}]) for pair in images]
    weights = {k: v.clone() for k, v in model.named_parameters()}
    assert recompute_batch_norm_statistics(model, iter(batches), 5, progress=False) == 5
    assert not model.training and model.bn.momentum == 0.1  # both restored
    with torch.no_grad():
        features = [model.conv(torch.stack(images)) for images, _ in batches]
    mean = torch.stack([f.mean((0, 2, 3)) for f in features]).mean(0)
    var = torch.stack([f.var((0, 2, 3), unbiased=True) for f in features]).mean(0)
    torch.testing.assert_close(model.bn.running_mean, mean)
    torch.testing.assert_close(model.bn.running_var, var)
    assert int(model.bn.num_batches_tracked) == 5
    for k, v in model.named_parameters():
        assert torch.equal(v, weights[k]), k


def test_models_without_batch_norm_are_left_alone():
    model = nn.Sequential(nn.Conv2d(3, 4, 1), nn.GroupNorm(2, 4))
    assert recompute_batch_norm_statistics(model, iter([]), 10, progress=False) == 0
