"""Deformable convolution (Dai et al., ICCV 2017) with its own offset branch, on ``torchvision.ops.deform_conv2d``.

:func:`deform_conv2d_sampled` computes the same function from ``grid_sample`` and a plain conv. Every export
target has those ops (Core ML and ExecuTorch have no deformable-conv kernel; ``visionzoo.export`` sets a layer's
``use_portable`` flag for them), and on the CPU they run several times faster than torchvision's kernel, so the
layer uses them there too. torchvision's op stays on CUDA and in exported graphs (ONNX has a DeformConv node).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import deform_conv2d

# torchvision's deformable im2col kernels lack bfloat16 (and float16 on the CPU): those run in float32.
_NATIVE_DTYPES = (torch.float32, torch.float64)


def deform_conv2d_sampled(
    x: torch.Tensor,
    offset: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    stride: int,
    padding: int,
    dilation: int,
) -> torch.Tensor:
    """``torchvision.ops.deform_conv2d`` (no mask, one offset group) as bilinear sampling, then a plain conv.

    Each output position's kh×kw taps are sampled into a contiguous kh×kw patch of a (Ho·kh, Wo·kw) map,
    so a conv with stride k applies the kernel; ``grid_sample`` with zero padding reproduces the
    deformable kernel's bilinear weights and its zeros outside the image.
    """
    batch, _, height, width = x.shape
    kernel = weight.shape[-1]
    out_height, out_width = offset.shape[-2], offset.shape[-1]
    # Ranks stay ≤ 5 (Core ML's limit): channel 2t is tap t's Δy, 2t + 1 its Δx.
    offset = offset.reshape(batch, kernel * kernel, 2, out_height, out_width)
    taps = torch.arange(kernel, device=x.device, dtype=x.dtype) * dilation - padding
    rows = torch.arange(out_height, device=x.device, dtype=x.dtype) * stride
    cols = torch.arange(out_width, device=x.device, dtype=x.dtype) * stride

    def sampled_positions(start: torch.Tensor, shift: torch.Tensor, along_rows: bool) -> torch.Tensor:
        # (B, Ho, kh, Wo, kw) -> (B, Ho·kh, Wo·kw): the pixel that output (i, j), tap (a, b) samples.
        shift = shift.reshape(batch, kernel, kernel, out_height, out_width).permute(0, 3, 1, 4, 2)
        if along_rows:
            base = start[:, None, None, None] + taps[None, :, None, None]
        else:
            base = start[None, None, :, None] + taps[None, None, None, :]
        return (base + shift).reshape(batch, out_height * kernel, out_width * kernel)

    y = sampled_positions(rows, offset[:, :, 0], along_rows=True)
    x_pos = sampled_positions(cols, offset[:, :, 1], along_rows=False)
    # grid_sample's align_corners=False maps pixel p to (2p + 1) / size - 1.
    grid = torch.stack(((2 * x_pos + 1) / width - 1, (2 * y + 1) / height - 1), dim=-1)
    patches = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return F.conv2d(patches, weight, bias, stride=kernel)


class DeformConv2d(nn.Module):
    """Conv2d whose kernel taps sample the input at learned fractional offsets (bilinear, zero outside).

    ``conv_offset`` (a plain conv with this layer's geometry) predicts, per output position, a row and
    a column shift (Δy, Δx) for each of the kh·kw taps (channel 2t is Δy, 2t + 1 is Δx for tap t in
    row-major order). It starts at zero, so a fresh layer equals a plain Conv2d with the same weights.
    Weight and bias start like ``nn.Conv2d``'s. Names match the official LITv2 DTM (``weight``, ``bias``,
    ``conv_offset``). It runs :func:`deform_conv2d_sampled` (same function, standard ops only) on the CPU and,
    with ``use_portable = True``, everywhere: for export to runtimes without the kernel.
    """

    use_portable: bool = False

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
        offset = self.conv_offset(x)
        if not self._torchvision_kernel_wanted(x):
            return deform_conv2d_sampled(x, offset, self.weight, self.bias, self.stride, self.padding, self.dilation)
        if x.dtype in _NATIVE_DTYPES:
            return deform_conv2d(x, offset, self.weight, self.bias, self.stride, self.padding, self.dilation)
        bias = None if self.bias is None else self.bias.float()
        out = deform_conv2d(
            x.float(), offset.float(), self.weight.float(), bias, self.stride, self.padding, self.dilation
        )
        return out.to(x.dtype)

    def _torchvision_kernel_wanted(self, x: torch.Tensor) -> bool:
        # torchvision's CPU kernel fills its columns one image at a time: at batch 16 LITv2-S's three merges took
        # 187 ms forward (sampled: 39 ms) and 9x longer to train. An exporter keeps the op for ONNX's DeformConv.
        return not self.use_portable and (x.device.type != "cpu" or torch.compiler.is_exporting())

    def extra_repr(self) -> str:
        out_chs, in_chs, kernel_size, _ = self.weight.shape
        return (
            f"{in_chs}, {out_chs}, kernel_size={kernel_size}, stride={self.stride}, padding={self.padding}, "
            f"dilation={self.dilation}, bias={self.bias is not None}"
        )
