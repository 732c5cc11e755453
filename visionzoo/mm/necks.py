"""Necks for backbones whose pyramid starts coarser than stride 4."""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from mmengine.model import BaseModule
from torch import nn


class TransposedConvFPN(BaseModule):
    """FPN that grows finer levels with transposed convs, for stride-16/32/64 backbones (SHViT, arXiv 2401.16456).

    Laterals (1x1) on every input level are merged top-down by nearest upsampling; ``num_upsample``
    ConvTranspose2d(k=2, s=2) layers then climb from the finest lateral to strides 8, 4, ...; a 3x3
    conv smooths each level. Plain convs start Xavier-uniform; the transposed convs keep
    PyTorch's own init, as the paper's configs do. Outputs are ordered finest first: the transposed-conv levels, then the
    lateral levels, then ``num_outs - ...`` extra levels (a stride-2 3x3 conv on the last backbone map
    with ``add_extra_convs='on_input'``, else stride-2 max pooling of the last output).
    """

    def __init__(
        self,
        in_channels: Sequence[int],
        out_channels: int,
        num_outs: int,
        num_upsample: int = 2,
        add_extra_convs: bool | str = False,
        init_cfg: dict | None = None,
    ):
        super().__init__(init_cfg=init_cfg or dict(type="Xavier", layer="Conv2d", distribution="uniform"))
        base_outs = len(in_channels) + num_upsample
        if num_outs < base_outs:
            raise ValueError(f"num_outs ({num_outs}) must be at least len(in_channels) + num_upsample ({base_outs})")
        if add_extra_convs not in (False, "on_input"):
            raise ValueError(f"add_extra_convs must be False or 'on_input', got {add_extra_convs!r}")
        self.lateral_convs = nn.ModuleList(nn.Conv2d(c, out_channels, 1) for c in in_channels)
        self.upsample_convs = nn.ModuleList(
            nn.ConvTranspose2d(out_channels, out_channels, 2, stride=2) for _ in range(num_upsample)
        )
        self.lateral_smooth = nn.ModuleList(nn.Conv2d(out_channels, out_channels, 3, padding=1) for _ in in_channels)
        self.upsample_smooth = nn.ModuleList(
            nn.Conv2d(out_channels, out_channels, 3, padding=1) for _ in range(num_upsample)
        )
        self.num_extra = num_outs - base_outs
        self.extra_conv = (
            nn.Conv2d(in_channels[-1], out_channels, 3, stride=2, padding=1)
            if add_extra_convs == "on_input" and self.num_extra
            else None
        )
        if self.num_extra > 1 and self.extra_conv is not None:
            raise ValueError("add_extra_convs='on_input' gives one extra level; lower num_outs or use max pooling")

    def forward(self, inputs: Sequence[torch.Tensor]) -> tuple[torch.Tensor, ...]:
        laterals = [conv(x) for conv, x in zip(self.lateral_convs, inputs)]
        for level in range(len(laterals) - 1, 0, -1):
            laterals[level - 1] = laterals[level - 1] + F.interpolate(
                laterals[level], size=laterals[level - 1].shape[-2:], mode="nearest"
            )
        upsampled = []
        current = laterals[0]
        for upsample in self.upsample_convs:
            current = upsample(current)
            upsampled.append(current)
        outs = [smooth(x) for smooth, x in zip(self.upsample_smooth, upsampled)][::-1]
        outs += [smooth(x) for smooth, x in zip(self.lateral_smooth, laterals)]
        if self.extra_conv is not None:
            outs.append(self.extra_conv(inputs[-1]))
        else:
            for _ in range(self.num_extra):
                outs.append(F.max_pool2d(outs[-1], 1, stride=2))
        return tuple(outs)
