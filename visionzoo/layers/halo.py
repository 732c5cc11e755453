"""Halo attention module (HaloNet, arXiv 2103.12731): 1×1 q / kv projections around ``ops.halo_attention``.

Widths: the output (value) width is ``dim_out`` split over ``num_heads``; the per-head query/key width is
``dim_head`` or ``make_divisible(dim_out · qk_ratio, 8) / num_heads``. With ``stride = 2`` the queries are
projected at stride 2 when the block side is even (``block/2`` queries per block side); otherwise (or with
``avg_down``) attention runs at stride 1 and a 2×2 average pool halves the output. Parameter names
(``q``, ``kv``, ``pos_embed.height_rel`` / ``width_rel``) follow timm's HaloAttn, so its weights load as is.
"""
from __future__ import annotations

import torch
from timm.layers import make_divisible
from torch import nn

from visionzoo.ops.halo import halo_attention


class RelativePositionTables(nn.Module):
    """The (2·win − 1, dim_head) row and column tables of relative-position logits, shared by all heads."""

    def __init__(self, win_size: int, dim_head: int, device=None, dtype=None):
        super().__init__()
        self.height_rel = nn.Parameter(torch.empty(2 * win_size - 1, dim_head, device=device, dtype=dtype))
        self.width_rel = nn.Parameter(torch.empty(2 * win_size - 1, dim_head, device=device, dtype=dtype))


def _check_strided_map(x: torch.Tensor, stride: int) -> None:
    height, width = x.shape[-2:]
    if height % stride or width % stride:
        raise ValueError(
            f"strided halo attention needs even map sides, got {height}x{width}; "
            f"use an input size that is a multiple of the network stride"
        )


# The check reads the input's size, which a symbolic trace cannot branch on: traced graphs call it whole.
torch.fx.wrap("_check_strided_map")


class HaloAttention(nn.Module):
    """Blocked local self-attention with a halo; any map size (padded to whole blocks, padding masked)."""

    def __init__(
        self,
        dim: int,
        dim_out: int | None = None,
        stride: int = 1,
        num_heads: int = 8,
        dim_head: int | None = None,
        block_size: int = 8,
        halo_size: int = 3,
        qk_ratio: float = 1.0,
        qkv_bias: bool = False,
        avg_down: bool = False,
        device=None,
        dtype=None,
    ):
        super().__init__()
        dim_out = dim_out or dim
        if dim_out % num_heads:
            raise ValueError(f"dim_out {dim_out} must be divisible by num_heads {num_heads}")
        if stride not in (1, 2):
            raise ValueError(f"halo attention supports stride 1 or 2, got {stride}")
        self.num_heads = num_heads
        self.dim_head_qk = dim_head or make_divisible(dim_out * qk_ratio, divisor=8) // num_heads
        self.dim_head_v = dim_out // num_heads
        self.scale = self.dim_head_qk ** -0.5
        self.block_size = block_size
        self.halo_size = halo_size
        pool_output = stride > 1 and (avg_down or block_size % stride != 0)
        self.query_stride = 1 if pool_output else stride
        dd = dict(device=device, dtype=dtype)
        self.q = nn.Conv2d(dim, num_heads * self.dim_head_qk, 1, stride=self.query_stride, bias=qkv_bias, **dd)
        self.kv = nn.Conv2d(dim, num_heads * (self.dim_head_qk + dim_out // num_heads), 1, bias=qkv_bias, **dd)
        self.pos_embed = RelativePositionTables(block_size + 2 * halo_size, self.dim_head_qk, **dd)
        self.pool = nn.AvgPool2d(2, 2) if pool_output else nn.Identity()
        self.reset_parameters()

    def reset_parameters(self) -> None:
        std = self.q.weight.shape[1] ** -0.5  # fan-in
        nn.init.trunc_normal_(self.q.weight, std=std)
        nn.init.trunc_normal_(self.kv.weight, std=std)
        nn.init.trunc_normal_(self.pos_embed.height_rel, std=self.scale)
        nn.init.trunc_normal_(self.pos_embed.width_rel, std=self.scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_strided_map(x, self.query_stride)
        q = self.q(x).unflatten(1, (self.num_heads, self.dim_head_qk))
        k, v = self.kv(x).unflatten(1, (self.num_heads, -1)).split([self.dim_head_qk, self.dim_head_v], dim=2)
        out = halo_attention(
            q, k, v, self.pos_embed.height_rel, self.pos_embed.width_rel,
            self.block_size, self.halo_size, self.query_stride, self.scale,
        )
        return self.pool(out.flatten(1, 2))
