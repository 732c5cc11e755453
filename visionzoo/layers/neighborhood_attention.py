"""Neighbourhood attention and its transformer block on channels-last maps (NAT, DiNAT, DiNAT-s).

The layer pads a map smaller than kernel_size · dilation on some axis as NATTEN 0.14–0.15 did (the version the
released checkpoints were trained with): the normed map is zero-padded at the bottom and right up to that size,
the padded tokens take part as keys and values made from zero vectors (their projections are the qkv biases),
and the output is cropped back.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from timm.layers import trunc_normal_
from torch import nn

from visionzoo.layers.activations import InferenceInplaceGELU
from visionzoo.layers.drop import DropPath
from visionzoo.layers.mlp import Mlp
from visionzoo.ops._dispatch import trace_leaf
from visionzoo.ops.neighborhood_attention import neighborhood_attention


@trace_leaf
def pad_to_span(x: torch.Tensor, span: int) -> torch.Tensor:
    """Zero-pad a (B, H, W, C) map at the bottom and right so that both sides are at least ``span``."""
    pad_bottom, pad_right = max(span - x.shape[1], 0), max(span - x.shape[2], 0)
    if pad_bottom or pad_right:
        return F.pad(x, (0, 0, 0, pad_right, 0, pad_bottom))
    return x


class NeighborhoodAttention2d(nn.Module):
    """Multi-head neighbourhood attention over a (B, H, W, C) map with a (heads, 2k−1, 2k−1) bias table ``rpb``."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        kernel_size: int = 7,
        dilation: int = 1,
        qkv_bias: bool = True,
        device=None,
        dtype=None,
    ):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.kernel_size = kernel_size
        self.dilation = dilation
        self.rpb = nn.Parameter(torch.empty(num_heads, 2 * kernel_size - 1, 2 * kernel_size - 1, device=device,
                                            dtype=dtype))
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias, device=device, dtype=dtype)
        self.proj = nn.Linear(dim, dim, device=device, dtype=dtype)
        trunc_normal_(self.rpb, std=0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[1], x.shape[2]
        x = pad_to_span(x, self.kernel_size * self.dilation)
        batch, padded_h, padded_w, channels = x.shape
        # Rank 5 at most (Core ML's limit): tokens flattened while the heads are split off.
        qkv = self.qkv(x).view(batch, padded_h * padded_w, 3, self.num_heads, channels // self.num_heads)
        shape = (batch, self.num_heads, padded_h, padded_w, channels // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        q, k, v = q.reshape(shape), k.reshape(shape), v.reshape(shape)
        out = neighborhood_attention(q, k, v, self.kernel_size, self.dilation, self.rpb)
        out = out.permute(0, 2, 3, 1, 4).reshape(batch, padded_h, padded_w, channels)
        return self.proj(out[:, :height, :width])


class NATBlock(nn.Module):
    """x + γ₁·attn(norm1(x)), then x + γ₂·mlp(norm2(x)) on channels-last maps; γ (``gamma1``/``gamma2``,
    NAT's layer scale) exists only when ``layer_scale`` is a number."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        kernel_size: int,
        dilation: int,
        mlp_ratio: float,
        drop_path: float,
        layer_scale: float | None = None,
        norm_eps: float = 1e-5,
        device=None,
        dtype=None,
    ):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps, **dd)
        self.attn = NeighborhoodAttention2d(dim, num_heads, kernel_size, dilation, **dd)
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps, **dd)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=InferenceInplaceGELU, **dd)
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        self.layer_scale = layer_scale is not None
        if self.layer_scale:
            self.gamma1 = nn.Parameter(torch.full((dim,), float(layer_scale), **dd))
            self.gamma2 = nn.Parameter(torch.full((dim,), float(layer_scale), **dd))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        attended = self.attn(self.norm1(x))
        if self.layer_scale:
            attended = self.gamma1 * attended
        x = x + self.drop_path(attended)
        mixed = self.mlp(self.norm2(x))
        if self.layer_scale:
            mixed = self.gamma2 * mixed
        return x + self.drop_path(mixed)
