"""The seam every family plugs into: transform -> network -> criterion (train) or postprocessor (eval).

Written once here, as torchvision's ``GeneralizedRCNN`` writes it for its
detectors (and Mask R-CNN, which is torchvision's own, follows that same seam):

    batch, targets = transform(images, targets)      resize, normalise, pad to one tensor
    outputs = network(batch.tensors)                 a small typed record of raw predictions
    train: criterion(outputs, targets) -> losses     named losses; never calls back into the model
           (outputs = training_network(batch.tensors, targets) there: a family whose network reads
           the targets in training, as Mask2Former's denoising queries do, defines it)
    eval:  postprocessor(outputs, sizes) -> results  one dict per image, in the input's pixels

A family subclasses ``SegmentationModel``, defines ``network`` and hands in a
criterion and a postprocessor. Each of the four can be read and tested alone;
an exported graph is the network plus the postprocessor.
"""

from __future__ import annotations

from typing import Any, Protocol

from torch import Tensor, nn

from instseg.models.transform import ResizeNormalize

Sizes = list[tuple[int, int]]


class Criterion(Protocol):
    def __call__(self, outputs: Any, targets: list[dict[str, Tensor]]) -> dict[str, Tensor]: ...


class Postprocessor(Protocol):
    def __call__(self, outputs: Any, resized: Sizes, original: Sizes) -> list[dict[str, Tensor]]: ...


class SegmentationModel(nn.Module):
    """The detection contract: ``model(images, targets)`` -> losses; ``model(images)`` -> results.

    ``images``: ``list[Tensor[3, H, W]]`` in [0, 1]; results carry ``boxes``,
    ``labels`` (1..K), ``scores`` (descending) and bool ``masks`` (none empty)
    in each input's own pixels.
    """

    def __init__(
        self, transform: ResizeNormalize, criterion: Criterion, postprocessor: Postprocessor
    ) -> None:
        super().__init__()
        self.transform = transform
        self.criterion = criterion
        self.postprocessor = postprocessor

    def network(self, pixels: Tensor) -> Any:
        """Normalised, padded ``[B, 3, H, W]`` -> the family's record of raw predictions."""
        raise NotImplementedError

    def training_network(self, pixels: Tensor, targets: list[dict[str, Tensor]]) -> Any:
        """The network in training, where a family may also read the targets (Mask2Former's denoising
        queries are built from them); ``network`` otherwise."""
        return self.network(pixels)

    def forward(
        self, images: list[Tensor], targets: list[dict[str, Tensor]] | None = None
    ) -> dict[str, Tensor] | list[dict[str, Tensor]]:
        if self.training and targets is None:
            raise ValueError("targets are required in training mode")
        original = [(int(im.shape[-2]), int(im.shape[-1])) for im in images]
        batch, targets = self.transform(images, targets)
        if self.training:
            return self.criterion(self.training_network(batch.tensors, targets), targets)
        outputs = self.network(batch.tensors)
        return self.postprocessor(outputs, batch.image_sizes, original)
