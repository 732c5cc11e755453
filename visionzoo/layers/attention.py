"""Self-attention modules shared by the families; the math lives in :mod:`visionzoo.ops`."""
from __future__ import annotations

import torch
from torch import nn

from visionzoo.layers.conv_bn import ConvNorm
from visionzoo.ops import scaled_dot_product_attention
from visionzoo.ops.channels_first_attention import channels_first_attention


class MultiHeadSelfAttention(nn.Module):
    """ViT-style multi-head attention on (B, N, C) tokens, with an optional additive bias or boolean mask.

    ``attn_bias`` broadcasts to (B, heads, N, N). Subclasses and callers that need windows, halos or
    pooled keys reshape tokens around this module or call the ops directly.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int = 8,
        qkv_bias: bool = False,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        head_dim: int | None = None,
        device=None,
        dtype=None,
    ):
        super().__init__()
        if head_dim is None and dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = head_dim or dim // num_heads
        self.scale = self.head_dim**-0.5
        inner = self.num_heads * self.head_dim
        self.qkv = nn.Linear(dim, inner * 3, bias=qkv_bias, device=device, dtype=dtype)
        self.attn_drop = attn_drop
        self.proj = nn.Linear(inner, dim, device=device, dtype=dtype)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: torch.Tensor, attn_bias: torch.Tensor | None = None) -> torch.Tensor:
        batch, tokens, _ = x.shape
        qkv = self.qkv(x).reshape(batch, tokens, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        out = scaled_dot_product_attention(
            q, k, v, attn_bias=attn_bias, scale=self.scale, dropout_p=self.attn_drop if self.training else 0.0
        )
        out = out.transpose(1, 2).reshape(batch, tokens, -1)
        return self.proj_drop(self.proj(out))


class SingleHeadSelfAttention(nn.Module):
    """Single-head global attention on a partial channel slice of an NCHW map (SHViT, arXiv 2401.16456 §3).

    The first ``partial_dim`` channels are GroupNorm-ed and attend with one head of query/key width
    ``qk_dim``; the other channels pass through untouched; ReLU and a ConvNorm projection (BN starting
    at 0) mix both halves.
    """

    def __init__(self, dim: int, qk_dim: int, partial_dim: int, device=None, dtype=None):
        super().__init__()
        if not 0 < partial_dim <= dim:
            raise ValueError(f"partial_dim must be in (0, {dim}], got {partial_dim}")
        self.qk_dim = qk_dim
        self.partial_dim = partial_dim
        self.scale = qk_dim**-0.5
        self.pre_norm = nn.GroupNorm(1, partial_dim, device=device, dtype=dtype)
        self.qkv = ConvNorm(partial_dim, qk_dim * 2 + partial_dim, device=device, dtype=dtype)
        self.proj = nn.Sequential(nn.ReLU(), ConvNorm(dim, dim, bn_weight_init=0.0, device=device, dtype=dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, _, height, width = x.shape
        attended, passed = torch.split(x, [self.partial_dim, x.shape[1] - self.partial_dim], dim=1)
        qkv = self.qkv(self.pre_norm(attended)).flatten(2)
        q, k, v = qkv.split([self.qk_dim, self.qk_dim, self.partial_dim], dim=1)
        # One head on (B, C, N) tokens straight from the map: no transposes to tokens-last and back.
        out = channels_first_attention(q, k, v, scale=self.scale)
        out = out.reshape(batch, self.partial_dim, height, width)
        return self.proj(torch.cat([out, passed], dim=1))
