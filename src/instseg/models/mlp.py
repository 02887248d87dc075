"""The small ReLU MLP that query-based heads read their tokens with (Mask2Former's mask embedding,
SAM's hypernetworks and IoU head)."""

from __future__ import annotations

from torch import Tensor, nn
from torch.nn import functional as F


class MLP(nn.Module):
    def __init__(self, dim: int, hidden: int, out: int, layers: int = 3) -> None:
        super().__init__()
        dims = [dim] + [hidden] * (layers - 1)
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims, [*dims[1:], out], strict=True))

    def forward(self, x: Tensor) -> Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x) if i == len(self.layers) - 1 else F.relu(layer(x))
        return x
