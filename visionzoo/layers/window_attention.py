"""Window self-attention on channels-last maps of any size (DaViT's spatial attention; the Swin family's base)."""
from __future__ import annotations

import torch
from torch import nn

from visionzoo.ops.window import pad_to_windows, window_attention


class WindowAttention(nn.Module):
    """Multi-head self-attention inside non-overlapping windows of a (B, H, W, C) map.

    The map is zero-padded at the bottom and right to whole windows before the qkv projection and cropped
    back afterwards. Padded tokens take part unmasked, as keys and values made from zero vectors (their
    projections are the qkv biases): DaViT (arXiv 2204.03645) was trained that way.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        window_size: int | tuple[int, int] = 7,
        qkv_bias: bool = True,
        device=None,
        dtype=None,
    ):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.window_size = (window_size, window_size) if isinstance(window_size, int) else tuple(window_size)
        self.scale = (dim // num_heads) ** -0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias, device=device, dtype=dtype)
        self.proj = nn.Linear(dim, dim, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[1], x.shape[2]
        padded = pad_to_windows(x, self.window_size)
        out = window_attention(padded, self.qkv.weight, self.qkv.bias, self.window_size, self.num_heads, self.scale)
        return self.proj(out[:, :height, :width])
