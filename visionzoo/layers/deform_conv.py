"""Deformable convolution layer (Dai et al., ICCV 2017) with its own offset branch; the math is the
:func:`visionzoo.ops.deform_conv.deform_conv2d` op (its reference from ``grid_sample`` and a plain conv, which
every export target has, and torchvision's kernel as a backend).
"""
from __future__ import annotations

import math

import torch
from torch import nn

from visionzoo.ops.deform_conv import deform_conv2d, deform_conv2d_sampled

__all__ = ["DeformConv2d", "deform_conv2d_sampled"]  # the sampled form keeps its old import path


class DeformConv2d(nn.Module):
    """Conv2d whose kernel taps sample the input at learned fractional offsets (bilinear, zero outside).

    ``conv_offset`` (a plain conv with this layer's geometry) predicts, per output position, a row and
    a column shift (Δy, Δx) for each of the kh·kw taps (channel 2t is Δy, 2t + 1 is Δx for tap t in
    row-major order). It starts at zero, so a fresh layer equals a plain Conv2d with the same weights.
    Weight and bias start like ``nn.Conv2d``'s. Names match the official LITv2 DTM (``weight``, ``bias``,
    ``conv_offset``).
    """

    def __init__(
        self,
        in_chs: int,
        out_chs: int,
        kernel_size: int,
        stride: int = 1,
        padding: int = 0,
        dilation: int = 1,
        bias: bool = True,
        device=None,
        dtype=None,
    ):
        super().__init__()
        self.stride, self.padding, self.dilation = stride, padding, dilation
        self.weight = nn.Parameter(torch.empty(out_chs, in_chs, kernel_size, kernel_size, device=device, dtype=dtype))
        self.bias = nn.Parameter(torch.empty(out_chs, device=device, dtype=dtype)) if bias else None
        self.conv_offset = nn.Conv2d(
            in_chs, 2 * kernel_size * kernel_size, kernel_size, stride, padding, dilation, device=device, dtype=dtype
        )
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            bound = 1.0 / math.sqrt(self.weight[0].numel())
            nn.init.uniform_(self.bias, -bound, bound)
        nn.init.zeros_(self.conv_offset.weight)
        nn.init.zeros_(self.conv_offset.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return deform_conv2d(x, self.conv_offset(x), self.weight, self.bias, self.stride, self.padding, self.dilation)

    def extra_repr(self) -> str:
        out_chs, in_chs, kernel_size, _ = self.weight.shape
        return (
            f"{in_chs}, {out_chs}, kernel_size={kernel_size}, stride={self.stride}, padding={self.padding}, "
            f"dilation={self.dilation}, bias={self.bias is not None}"
        )
