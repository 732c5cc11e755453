"""Residual wrapper whose identity folds into a depthwise conv where that is exact."""
from __future__ import annotations

import torch
from torch import nn

from visionzoo.layers.drop import DropPath


def _is_identity_foldable(conv: nn.Module) -> bool:
    if not isinstance(conv, nn.Conv2d) or conv.bias is None:
        return False
    kh, kw = conv.kernel_size
    same_size = conv.stride == (1, 1) and conv.dilation == (1, 1) and conv.padding == ((kh - 1) // 2, (kw - 1) // 2)
    depthwise = conv.groups == conv.in_channels == conv.out_channels
    return depthwise and same_size and kh % 2 == 1 and kw % 2 == 1 and conv.padding_mode == "zeros"


class Residual(nn.Module):
    """y = x + f(x), optionally with stochastic depth on the branch (identity at eval, so folding stays exact)."""

    def __init__(self, fn: nn.Module, drop_path: float = 0.0):
        super().__init__()
        self.m = fn
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.drop_path(self.m(x))

    @torch.no_grad()
    def fuse(self) -> nn.Module:
        """Fold the branch; a depthwise same-size conv absorbs the identity as +1 on its centre tap."""
        inner = self.m.fuse() if hasattr(self.m, "fuse") else self.m
        if not _is_identity_foldable(inner):
            self.m = inner
            return self
        kh, kw = inner.kernel_size
        inner.weight[:, 0, kh // 2, kw // 2] += 1.0
        return inner
