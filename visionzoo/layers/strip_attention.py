"""Strip self-attention and the Hybrid Perception Block (S2AFormer, arXiv 2505.22195); the math is
:mod:`visionzoo.ops.strip_attention`.

The paper names the parts (depthwise-conv residual → SSA → LIM → MLP, pre-LN residuals; SSA with spatially
reduced K/V and channel-compressed Q/K) but publishes no code; widths, the reduction's BatchNorm, the 1×1
projections with bias and LIM's inner layout are the zoo's reconstruction (``shared/specs/s2aformer.md`` §5).
"""
from __future__ import annotations

from collections import OrderedDict

import torch
from timm.layers import LayerNorm2d
from torch import nn

from visionzoo.layers.conv_bn import fuse_conv_bn
from visionzoo.layers.drop import DropPath
from visionzoo.ops.strip_attention import strip_attention


class StripSelfAttention(nn.Module):
    """SSA on (B, C, H, W) maps of any size: q from x, k and v from x reduced by a depthwise r×r/stride-r conv
    (then BatchNorm), q and k ``qk_dim`` wide, v ``dim`` wide, ``num_heads`` heads, then a 1×1 output projection.

    Sides not divisible by ``reduction`` are zero-padded up to a multiple before the reduction (the op's rule).
    """

    def __init__(self, dim: int, qk_dim: int, num_heads: int, reduction: int = 1, device=None, dtype=None):
        super().__init__()
        if qk_dim % num_heads or dim % num_heads:
            raise ValueError(f"qk_dim {qk_dim} and dim {dim} must both be divisible by num_heads {num_heads}")
        if reduction < 1:
            raise ValueError(f"reduction must be >= 1, got {reduction}")
        dd = dict(device=device, dtype=dtype)
        self.num_heads = num_heads
        self.reduction = reduction
        self.q = nn.Conv2d(dim, qk_dim, 1, **dd)
        self.k = nn.Conv2d(dim, qk_dim, 1, **dd)
        self.v = nn.Conv2d(dim, dim, 1, **dd)
        if reduction > 1:
            self.sr = nn.Conv2d(dim, dim, reduction, stride=reduction, groups=dim, **dd)
            self.sr_norm = nn.BatchNorm2d(dim, **dd)
        self.proj = nn.Conv2d(dim, dim, 1, **dd)

    def _reduction_args(self) -> dict:
        if self.reduction == 1:
            return {}
        args = dict(reduction=self.reduction, reduction_weight=self.sr.weight, reduction_bias=self.sr.bias)
        norm = self.sr_norm
        if isinstance(norm, nn.BatchNorm2d):
            # nn.BatchNorm2d's own rule: batch statistics in training or when it tracks none.
            training = self.training or norm.running_mean is None
            momentum = norm.momentum
            if self.training and norm.num_batches_tracked is not None:
                norm.num_batches_tracked.add_(1)
                if momentum is None:  # a cumulative average over the batches seen
                    momentum = 1.0 / float(norm.num_batches_tracked)
            args.update(norm_weight=norm.weight, norm_bias=norm.bias, norm_mean=norm.running_mean,
                        norm_var=norm.running_var, norm_eps=norm.eps, norm_momentum=momentum,
                        norm_training=training)
        return args

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = strip_attention(
            x, self.num_heads,
            self.q.weight.flatten(1), self.q.bias, self.k.weight.flatten(1), self.k.bias,
            self.v.weight.flatten(1), self.v.bias,
            **self._reduction_args(),
        )
        return self.proj(out)

    @torch.no_grad()
    def fuse(self) -> nn.Module:
        """Deploy form: the eval-mode BatchNorm folds into the reduction conv."""
        if self.reduction > 1 and isinstance(self.sr_norm, nn.BatchNorm2d):
            self.sr = fuse_conv_bn(self.sr, self.sr_norm)
            self.sr_norm = nn.Identity()
        return self


class HybridPerceptionBlock(nn.Module):
    """HPB on (B, C, H, W) maps: x + DWConv(x), then pre-LN residuals of SSA, LIM and a 1×1-conv MLP.

    LIM (the paper's Local Interaction Module, structure unpublished) is rebuilt as depthwise 3×3 → BN → GELU →
    1×1: local mixing after the global, low-resolution attention. Stochastic depth acts on the three pre-LN branches.
    """

    def __init__(
        self,
        dim: int,
        qk_dim: int,
        num_heads: int,
        reduction: int,
        mlp_ratio: float = 4.0,
        drop_path: float = 0.0,
        device=None,
        dtype=None,
    ):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        hidden = int(dim * mlp_ratio)
        self.dwconv = nn.Conv2d(dim, dim, 3, padding=1, groups=dim, **dd)
        self.norm1 = LayerNorm2d(dim, eps=1e-6, **dd)
        self.attn = StripSelfAttention(dim, qk_dim, num_heads, reduction, **dd)
        self.norm2 = LayerNorm2d(dim, eps=1e-6, **dd)
        self.lim = nn.Sequential(OrderedDict(
            dwconv=nn.Conv2d(dim, dim, 3, padding=1, groups=dim, **dd),
            bn=nn.BatchNorm2d(dim, **dd),
            act=nn.GELU(),
            pwconv=nn.Conv2d(dim, dim, 1, **dd),
        ))
        self.norm3 = LayerNorm2d(dim, eps=1e-6, **dd)
        self.mlp = nn.Sequential(OrderedDict(
            fc1=nn.Conv2d(dim, hidden, 1, **dd),
            act=nn.GELU(),
            fc2=nn.Conv2d(hidden, dim, 1, **dd),
        ))
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.dwconv(x)
        x = x + self.drop_path(self.attn(self.norm1(x)))
        x = x + self.drop_path(self.lim(self.norm2(x)))
        return x + self.drop_path(self.mlp(self.norm3(x)))
