"""Channel-group self-attention module; the math is :mod:`visionzoo.ops.channel_attention`."""
from __future__ import annotations

import torch
from torch import nn

from visionzoo.ops.channel_attention import channel_attention


class ChannelGroupAttention(nn.Module):
    """DaViT's channel attention (arXiv 2204.03645 §3.2) on channels-last tokens (B, ..., C) of any spatial shape.

    Channels form ``num_groups`` groups; within each, a c × c map built from keys and values over all tokens
    mixes the queries' channels, so the cost grows linearly with the number of tokens.
    """

    def __init__(self, dim: int, num_groups: int, qkv_bias: bool = True, device=None, dtype=None):
        super().__init__()
        if dim % num_groups:
            raise ValueError(f"dim {dim} is not divisible by num_groups {num_groups}")
        self.num_groups = num_groups
        self.scale = (dim // num_groups) ** -0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias, device=device, dtype=dtype)
        self.proj = nn.Linear(dim, dim, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        qkv = self.qkv(x).reshape(x.shape[0], -1, 3 * x.shape[-1])
        out = channel_attention(qkv, self.num_groups, self.scale)
        return self.proj(out.reshape(x.shape))
