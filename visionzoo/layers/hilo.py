"""HiLo attention module (LITv2, arXiv 2205.13213 §3.2); the math is :mod:`visionzoo.ops.hilo`."""
from __future__ import annotations

import torch
from torch import nn

from visionzoo.ops.hilo import hilo_attention


class HiLoAttention(nn.Module):
    """HiLo self-attention on (B, H, W, C) maps of any size.

    ``alpha`` of the ``num_heads`` heads (rounded down) are Lo-Fi heads attending to s×s-pooled keys;
    the rest are Hi-Fi heads attending inside s×s windows. With ``window_size == 1`` every head is a
    Lo-Fi head without pooling, i.e. plain global multi-head attention, and no Hi-Fi layers exist.
    Parameter names follow the official release (``l_q``, ``l_kv``, ``l_proj``, ``h_qkv``, ``h_proj``).
    """

    def __init__(
        self,
        dim: int,
        num_heads: int = 8,
        window_size: int = 2,
        alpha: float = 0.5,
        qkv_bias: bool = True,
        device=None,
        dtype=None,
    ):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        if window_size < 1:
            raise ValueError(f"window_size must be >= 1, got {window_size}")
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha (the Lo-Fi share of heads) must be in [0, 1], got {alpha}")
        head_dim = dim // num_heads
        self.window_size = window_size
        self.lofi_heads = num_heads if window_size == 1 else int(num_heads * alpha)
        self.hifi_heads = num_heads - self.lofi_heads
        self.scale = head_dim**-0.5
        lofi_dim, hifi_dim = self.lofi_heads * head_dim, self.hifi_heads * head_dim
        if self.lofi_heads:
            self.l_q = nn.Linear(dim, lofi_dim, bias=qkv_bias, device=device, dtype=dtype)
            self.l_kv = nn.Linear(dim, lofi_dim * 2, bias=qkv_bias, device=device, dtype=dtype)
            self.l_proj = nn.Linear(lofi_dim, lofi_dim, device=device, dtype=dtype)
        if self.hifi_heads:
            self.h_qkv = nn.Linear(dim, hifi_dim * 3, bias=qkv_bias, device=device, dtype=dtype)
            self.h_proj = nn.Linear(hifi_dim, hifi_dim, device=device, dtype=dtype)
        self.split = [hifi_dim, lofi_dim]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hifi, lofi = hilo_attention(
            x,
            self.window_size,
            self.hifi_heads,
            self.lofi_heads,
            hifi_qkv_weight=self.h_qkv.weight if self.hifi_heads else None,
            hifi_qkv_bias=self.h_qkv.bias if self.hifi_heads else None,
            lofi_q_weight=self.l_q.weight if self.lofi_heads else None,
            lofi_q_bias=self.l_q.bias if self.lofi_heads else None,
            lofi_kv_weight=self.l_kv.weight if self.lofi_heads else None,
            lofi_kv_bias=self.l_kv.bias if self.lofi_heads else None,
            scale=self.scale,
        ).split(self.split, dim=-1)
        outputs = []
        if self.hifi_heads:
            outputs.append(self.h_proj(hifi))
        if self.lofi_heads:
            outputs.append(self.l_proj(lofi))
        return torch.cat(outputs, dim=-1)
