"""Dilated reparameterisable depthwise convolution (UniRepLKNet, Ding et al., CVPR 2024, arXiv 2311.15599).

A large depthwise K×K conv + BatchNorm runs in parallel with smaller dilated depthwise convs + BatchNorm during
training; for inference the branches merge into one K×K conv with bias (a dilated k×k kernel with rate r equals a
dense (r(k-1)+1)-sized kernel with zeros between the taps, centred in the K×K window). ``fuse()`` produces that conv,
so ``visionzoo.layers.fuse_model`` (bench ``--deploy``, export) reparameterises every block.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from visionzoo.layers.conv_bn import fuse_conv_bn

# (kernel, dilation) of the parallel branches per large kernel size, as UniRepLKNet and OverLoCK configure them.
DILATED_BRANCHES = {
    17: ((5, 1), (7, 1), (9, 2), (3, 4), (3, 5), (3, 7)),
    15: ((5, 1), (7, 1), (7, 2), (3, 3), (3, 5), (3, 7)),
    13: ((5, 1), (7, 1), (7, 2), (3, 3), (3, 4), (3, 5)),
    7: ((5, 1), (3, 1), (3, 2), (3, 3)),
}


def dilated_to_dense(kernel: torch.Tensor, dilation: int, size: int) -> torch.Tensor:
    """A (C, 1, k, k) kernel applied with ``dilation`` as the equal undilated (C, 1, size, size) kernel."""
    span = dilation * (kernel.shape[-1] - 1) + 1
    if span > size or (size - span) % 2:
        raise ValueError(f"a {kernel.shape[-1]}x{kernel.shape[-1]} kernel with dilation {dilation} spans {span} "
                         f"pixels, which does not centre in a {size}x{size} kernel")
    dense = kernel.new_zeros(*kernel.shape[:2], span, span)
    dense[..., ::dilation, ::dilation] = kernel
    return F.pad(dense, [(size - span) // 2] * 4)


class DilatedReparamBlock(nn.Module):
    """Depthwise K×K conv + BN plus dilated depthwise branches + BN, summed; ``deploy=True`` builds the merged form
    (``lk_origin`` with a bias, nothing else), which is what :meth:`fuse` returns and the ``_reparam`` checkpoints
    hold. Parameter names follow UniRepLKNet's."""

    def __init__(self, channels: int, kernel_size: int, deploy: bool = False, device=None, dtype=None):
        super().__init__()
        if kernel_size not in DILATED_BRANCHES:
            raise ValueError(
                f"DilatedReparamBlock has branch settings for kernel sizes {sorted(DILATED_BRANCHES)}, "
                f"got {kernel_size}"
            )
        dd = dict(device=device, dtype=dtype)
        self.kernel_size = kernel_size
        self.branches = () if deploy else DILATED_BRANCHES[kernel_size]
        self.lk_origin = nn.Conv2d(
            channels, channels, kernel_size, padding=kernel_size // 2, groups=channels, bias=deploy, **dd
        )
        if deploy:
            return
        self.origin_bn = nn.BatchNorm2d(channels, **dd)
        for k, r in self.branches:
            conv = nn.Conv2d(channels, channels, k, padding=(r * (k - 1) + 1) // 2, dilation=r, groups=channels,
                             bias=False, **dd)
            self.add_module(f"dil_conv_k{k}_{r}", conv)
            self.add_module(f"dil_bn_k{k}_{r}", nn.BatchNorm2d(channels, **dd))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.branches:
            return self.lk_origin(x)
        out = self.origin_bn(self.lk_origin(x))
        for k, r in self.branches:
            out = out + getattr(self, f"dil_bn_k{k}_{r}")(getattr(self, f"dil_conv_k{k}_{r}")(x))
        return out

    @torch.no_grad()
    def fuse(self) -> nn.Conv2d:
        """One depthwise K×K conv with bias computing this block with eval-mode BN statistics."""
        if not self.branches:
            return self.lk_origin
        merged = fuse_conv_bn(self.lk_origin, self.origin_bn)
        for k, r in self.branches:
            branch = fuse_conv_bn(getattr(self, f"dil_conv_k{k}_{r}"), getattr(self, f"dil_bn_k{k}_{r}"))
            merged.weight += dilated_to_dense(branch.weight, r, self.kernel_size)
            merged.bias += branch.bias
        return merged
