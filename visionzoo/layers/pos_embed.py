"""Position encodings computed from the input itself."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class ConvPosEnc(nn.Module):
    """Conditional position encoding x + DWConv(x) (CPVT, arXiv 2102.10882) on a channels-last (B, H, W, C) map.

    The depthwise conv runs on the channels-last memory directly (an NCHW view of it), so no copy is made, and
    the identity rides in the conv as +1 on the centre tap, which saves a full pass over the map for the sum.
    """

    def __init__(self, dim: int, kernel_size: int = 3, device=None, dtype=None):
        super().__init__()
        self.proj = nn.Conv2d(
            dim, dim, kernel_size, padding=kernel_size // 2, groups=dim, device=device, dtype=dtype
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        conv = self.proj
        centre = conv.kernel_size[0] // 2
        identity_tap = F.pad(conv.weight.new_ones(1, 1, 1, 1), (centre, centre, centre, centre))
        out = F.conv2d(x.permute(0, 3, 1, 2), conv.weight + identity_tap, conv.bias, padding=conv.padding, groups=conv.groups)
        return out.permute(0, 2, 3, 1)
