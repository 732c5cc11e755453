"""Deformable convolution (Dai et al., ICCV 2017): a conv whose kernel taps sample the input at learned offsets.

:func:`deform_conv2d` takes the input x (B, C, H, W), the per-position tap offsets (B, 2·kh·kw, Ho, Wo) (channel
2t is tap t's Δy, 2t + 1 its Δx, taps in row-major order), the weight (O, C, kh, kw) with its optional bias, and
the conv's stride, padding and dilation; it returns (B, O, Ho, Wo). Samples are bilinear, zero outside the image:
``torchvision.ops.deform_conv2d`` with no mask and one offset group.

The reference computes it from ``grid_sample`` and a plain conv. Every export target has those ops (Core ML and
ExecuTorch have no deformable-conv kernel), and on the CPU they run several times faster than torchvision's
kernel, which is the ``torchvision`` backend: on CUDA, and in graphs exported to ONNX (which has a DeformConv node).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from visionzoo.ops._dispatch import Op, Sample, seeded_randn

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


deform_conv2d = Op("deform_conv2d", deform_conv2d_sampled)


@deform_conv2d.sample_inputs
def _samples() -> list[Sample]:
    randn = seeded_randn()
    return [
        # Offsets of a few pixels reach outside the image, where samples are zero.
        Sample("batch 1, 2x2 taps at stride 2 on 7x6", (randn(1, 3, 7, 6), randn(1, 8, 3, 3) * 2, randn(4, 3, 2, 2),
                                                        randn(4), 2, 0, 1)),
        Sample("3x3 taps, padding 1, dilation 2, no bias", (randn(2, 2, 5, 5), randn(2, 18, 3, 3) * 2,
                                                             randn(3, 2, 3, 3), None, 1, 1, 2)),
    ]


def _native_kernel_pays_off(x, offset, weight, bias, stride, padding, dilation) -> bool:
    # torchvision's CPU kernel fills its columns one image at a time: at batch 16 LITv2-S's three merges took
    # 187 ms forward (sampled: 39 ms) and 9x longer to train. An exporter keeps the op for ONNX's DeformConv.
    return x.device.type != "cpu" or torch.compiler.is_exporting()


@deform_conv2d.register(
    "torchvision", priority=10, devices=("cpu", "cuda", "meta"), requires=("torchvision",), portable=False,
    supports=_native_kernel_pays_off,
)
def _deform_conv2d_torchvision(x, offset, weight, bias, stride, padding, dilation):
    from torchvision.ops import deform_conv2d as torchvision_deform_conv2d

    if x.dtype in _NATIVE_DTYPES:
        return torchvision_deform_conv2d(x, offset, weight, bias, stride, padding, dilation)
    bias = None if bias is None else bias.float()
    out = torchvision_deform_conv2d(x.float(), offset.float(), weight.float(), bias, stride, padding, dilation)
    return out.to(x.dtype)
