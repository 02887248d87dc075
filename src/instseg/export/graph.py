"""One image in, the final detections out: the module that an exported graph is made from.

The seam's eval path (``SegmentationModel.forward``) with the transform written
on the image's symbolic shape: RGB bytes are scaled, normalised, resized by the
model's own rule and padded; then the family's network and its postprocessor
run unchanged. The postprocessors read no tensor value back into Python where
an export would need it, and assemble every mask at once while exporting, each
on a window as large as the largest detection (``models/postprocess.py``), so
NMS, Matrix NMS or the query readout and mask pasting are all inside the graph.
The graph returns each mask as that crop, at the input's resolution, with its
position: a few hundred detections on a large image would be gigabytes as
``[N, H, W]``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from instseg.models.segmentation_model import SegmentationModel
from instseg.models.transform import ResizeNormalize

OUTPUT_NAMES = ("boxes", "labels", "scores", "masks", "mask_origins")


class ImageGraph(nn.Module):
    """``image`` uint8 ``[H, W, 3]`` RGB -> ``boxes`` float ``[N, 4]`` xyxy, ``labels`` int64 ``[N]`` (1..K),
    ``scores`` float ``[N]`` (descending), ``masks`` bool ``[N, h, w]`` and ``mask_origins`` int64 ``[N, 2]``,
    all in the image's pixels: mask i is ``masks[i]`` with its top-left pixel at ``mask_origins[i] = (x,
    y)``, False elsewhere (run eagerly, the masks are the whole image, at origin 0)."""

    def __init__(self, model: SegmentationModel) -> None:
        super().__init__()
        self.model = model.eval()
        self.input = NetworkInput(model.transform)

    def forward(self, image: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        pixels, size = self.input(image)
        outputs = self.model.network(pixels)
        result = self.model.postprocessor(outputs, [size], [(image.shape[0], image.shape[1])])[0]
        return graph_outputs(result)


def graph_outputs(result: dict[str, Tensor]) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """A postprocessor's output dict as the graph's outputs; dense masks (eager) are crops at (0, 0)."""
    masks = result["masks"]
    origins = result.get("mask_origins")
    if origins is None:
        origins = torch.zeros((masks.shape[0], 2), dtype=torch.int64, device=masks.device)
    return result["boxes"], result["labels"], result["scores"], masks, origins


class NetworkInput(nn.Module):
    """RGB bytes ``[H, W, 3]`` -> the network's input ``[1, 3, H', W']`` (normalised, resized by the
    transform's rule, padded to its multiple) and the resized size, on the image's symbolic shape; the
    first step of every exported graph."""

    def __init__(self, transform: ResizeNormalize, antialias: bool = False) -> None:
        super().__init__()
        self.transform, self.antialias = transform, antialias
        self.register_buffer("mean", torch.tensor(transform.image_mean).view(3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(transform.image_std).view(3, 1, 1), persistent=False)

    def forward(self, image: Tensor) -> tuple[Tensor, tuple[int, int]]:
        pixels = (image.permute(2, 0, 1).float() / 255.0 - self.mean) / self.std
        size = self.transform.output_size(image.shape[0], image.shape[1])
        pixels = F.interpolate(
            pixels[None], size=size, mode="bilinear", align_corners=False, antialias=self.antialias
        )
        step = self.transform.size_divisible
        pad_h = (size[0] + step - 1) // step * step - size[0]
        pad_w = (size[1] + step - 1) // step * step - size[1]
        return F.pad(pixels, (0, pad_w, 0, pad_h)), size


class PreciseGroupNorm(nn.GroupNorm):
    """GroupNorm whose exported form sums each group in steps: along rows, over rows, over channels.

    The exporter writes GroupNorm as ONNX ``InstanceNormalization``, and ONNX
    Runtime's CPU kernel sums a whole group in one float32 pass: its error grows
    with the feature map, and on a large image's maps it moves a trained
    model's scores past the parity bar (BENCHMARKS.md, "ONNX export of trained
    checkpoints"). Summed in three shorter steps the error stays near PyTorch's.
    Outside an export it is ``nn.GroupNorm``.
    """

    def forward(self, x: Tensor) -> Tensor:
        if not torch.compiler.is_exporting() or x.dim() != 4:
            return super().forward(x)
        mean = self._group_mean(x)
        centred = x - mean
        scale = torch.rsqrt(self._group_mean(centred * centred) + self.eps)
        if not self.affine:
            return centred * scale
        return centred * (scale * self.weight[:, None, None]) + self.bias[:, None, None]

    def _group_mean(self, x: Tensor) -> Tensor:
        """``[n, c, h, w]`` -> its group's mean at every channel ``[n, c, 1, 1]``: the mean of each row, then
        of each channel's rows, then of each group's channels (equal counts at every step, and no
        reshape of the map, whose symbolic sizes would slow the export)."""
        n, c = x.shape[:2]
        per_group = c // self.num_groups
        channels = x.mean(dim=-1).mean(dim=-1).reshape(n, self.num_groups, per_group)
        return channels.mean(dim=-1, keepdim=True).expand(-1, -1, per_group).reshape(n, c, 1, 1)


def precise_group_norms(module: nn.Module) -> int:
    """Every ``nn.GroupNorm`` inside ``module`` replaced by a ``PreciseGroupNorm`` with its weights; returns
    how many. For modules built to be exported: it changes ``module`` in place."""
    swapped = 0
    for name, child in list(module.named_modules()):
        if type(child) is not nn.GroupNorm:
            continue
        precise = PreciseGroupNorm(child.num_groups, child.num_channels, child.eps, child.affine)
        precise.load_state_dict(child.state_dict())
        parent, _, leaf = name.rpartition(".")
        setattr(module.get_submodule(parent) if parent else module, leaf, precise)
        swapped += 1
    return swapped
