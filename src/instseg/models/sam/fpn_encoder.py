"""A convolutional image encoder for SAM that trains on a CPU: one of the toolkit's trunks with an
FPN, its levels at strides 8, 16 and 32 summed at stride 8, and a neck to the prompt width.

The official ViT-B costs ~0.5 TFLOP per 1024-px image; this encoder is fully
convolutional, so it runs at the input's own scale (small nuclei stay
large enough to see) and its embedding cells are 8 pixels apart, which gives
masks at stride 2 after the decoder's 4x upsampling.
"""

from __future__ import annotations

from torch import Tensor, nn
from torch.nn import functional as F

from instseg.models.backbones import build_fpn_backbone
from instseg.models.sam.image_encoder import ChannelLayerNorm

STRIDE = 8


class FPNImageEncoder(nn.Module):
    def __init__(self, backbone: str, norm: str, fpn_channels: int, out_dim: int) -> None:
        super().__init__()
        self.fpn = build_fpn_backbone(backbone, norm, fpn_channels, returned_layers=(2, 3, 4))
        self.neck = nn.Sequential(
            nn.Conv2d(fpn_channels, out_dim, 3, padding=1, bias=False),
            ChannelLayerNorm(out_dim, eps=1e-6),
            nn.GELU(),
            nn.Conv2d(out_dim, out_dim, 1, bias=False),
            ChannelLayerNorm(out_dim, eps=1e-6),
        )

    def forward(self, images: Tensor) -> Tensor:
        levels = self.fpn(images)
        finest = levels["0"]  # stride 8
        x = finest + sum(
            F.interpolate(levels[k], size=finest.shape[-2:], mode="bilinear", align_corners=False)
            for k in ("1", "2")
        )
        return self.neck(x)
