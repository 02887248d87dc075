"""Seesaw loss (Wang et al., CVPR 2021) and the normalised linear classifier it trains.

A softmax classifier trained on long-tailed data learns a rare class mostly as
the negative of frequent samples: every sample of a frequent class pushes the
rare logit down, and the rare class's few positives cannot push it back up.
Seesaw rescales the negative term of class ``j`` on a sample of class ``i``:

- mitigation ``(N_j / N_i) ** p`` where class ``j`` has seen fewer samples
  than ``i`` (``N``: counts accumulated over training), so frequent samples
  press less on rare classes;
- compensation ``(s_j / s_i) ** q`` where the sample's own probability ``s_i``
  is below ``s_j``, so a negative that is wrongly high is still punished.

Both are applied as ``log`` offsets added to the negative logits before
cross-entropy, which equals weighting the ``exp`` terms of the softmax. The
paper trains it with a cosine classifier (``NormedLinear``) whose logits are a
temperature times cosine similarities, so that no class wins by its weight
norm alone.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from instseg import distributed

P_MITIGATION = 0.8
Q_COMPENSATION = 2.0
TEMPERATURE = 20.0


def seesaw_logits(
    logits: Tensor, labels: Tensor, counts: Tensor, p: float = P_MITIGATION, q: float = Q_COMPENSATION
) -> Tensor:
    """``logits [N, C]`` with the log of the seesaw factors added to each sample's negative classes.

    The first ``K = len(counts)`` columns are the classes seesaw weighs; columns
    after them (Mask2Former's "no object") and samples labelled with them are
    left as they are. The compensation's own probability is floored at 0.01 (the
    reference's epsilon), which bounds each offset by ``q * log(100)``.
    """
    k = counts.numel()
    foreground = (labels < k)[:, None]
    own = labels.clamp(max=k - 1)[:, None]
    offset = logits.new_zeros((len(labels), k), dtype=torch.float32)
    if p > 0:
        log_counts = counts.float().clamp(min=1).log().to(logits.device)
        offset += p * (log_counts[None, :] - log_counts[own]).clamp(max=0)
    if q > 0:
        log_probs = F.log_softmax(logits.detach().float(), dim=1)[:, :k]
        floor = math.log(0.01)
        offset += q * (log_probs - log_probs.gather(1, own).clamp(min=floor)).clamp(min=0)
    offset = offset * foreground  # the own class gets 0 from both terms: N_i / N_i = s_i / s_i = 1
    return torch.cat([logits[:, :k].float() + offset, logits[:, k:].float()], dim=1)


class SeesawLoss(nn.Module):
    """Per-sample cross-entropy over seesaw-adjusted logits, with the class counts it needs.

    ``counts`` is a buffer, so it is saved and resumed with the weights; on
    several ranks every rank adds the samples of all ranks (``count``).
    """

    counts_while_training = True  # its buffers are counts, not weights (engine/fine_tune.py)

    def __init__(self, num_classes: int, p: float = P_MITIGATION, q: float = Q_COMPENSATION) -> None:
        super().__init__()
        self.p, self.q = p, q
        self.register_buffer("counts", torch.zeros(num_classes))

    def count(self, labels: Tensor) -> None:
        """Add a batch's samples of the ``K`` classes (labels ``>= K`` are not counted)."""
        k = self.counts.numel()
        labels = labels.detach().long()
        batch = torch.bincount(labels[labels < k], minlength=k).float()
        self.counts += distributed.mean_over_ranks(batch).to(self.counts) * distributed.world_size()

    def forward(self, logits: Tensor, labels: Tensor) -> Tensor:
        """``[N]`` losses for ``logits [N, C]`` and ``labels [N]`` in ``0..C-1``."""
        adjusted = seesaw_logits(logits, labels, self.counts, self.p, self.q)
        return F.cross_entropy(adjusted, labels.long(), reduction="none")


class NormedLinear(nn.Linear):
    """``temperature * cos(x, w_k)`` plus a bias: the classifier the seesaw paper trains."""

    def __init__(self, in_features: int, out_features: int, temperature: float = TEMPERATURE) -> None:
        super().__init__(in_features, out_features)
        self.temperature = temperature
        nn.init.normal_(self.weight, std=0.01)
        nn.init.zeros_(self.bias)

    def forward(self, x: Tensor) -> Tensor:
        cosine = F.linear(F.normalize(x, dim=-1), F.normalize(self.weight, dim=-1))
        return self.temperature * cosine + self.bias
