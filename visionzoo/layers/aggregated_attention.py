"""TransNeXt's token mixers (Shi, CVPR 2024, arXiv 2311.17132): aggregated attention and its full-attention twin.

Both take and return channels-last maps (B, H, W, C) and compute everything that depends on the grid
(window padding mask, length scale, pooled grid, continuous position bias) from the actual H×W at
forward time, so one set of parameters serves every input size. Parameter names follow the official
release, so its checkpoints load without renaming inside these modules.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from visionzoo.ops import scaled_dot_product_attention
from visionzoo.ops.aggregated_attention import aggregated_attention, cpb_coordinates, local_window_mask

def pooled_grid(height: int, width: int, sr_ratio: int, fixed_pool_size: int | None) -> tuple[int, int]:
    """The pooled key grid of aggregated attention on an H×W token grid; a ValueError names the fix when the
    grid is too small to pool."""
    if fixed_pool_size is not None:
        if fixed_pool_size > min(height, width):
            raise ValueError(
                f"fixed_pool_size={fixed_pool_size} exceeds the {height}x{width} token grid of this "
                f"stage; use a larger input or a fixed_pool_size of at most {min(height, width)}"
            )
        return fixed_pool_size, fixed_pool_size
    if height < sr_ratio or width < sr_ratio:
        raise ValueError(
            f"a {height}x{width} token grid pools to nothing at sr_ratio {sr_ratio}; "
            f"the input must be at least {sr_ratio} tokens on each side at this stage (use a larger image)"
        )
    return height // sr_ratio, width // sr_ratio


# The grid depends on the input's size, which a symbolic trace cannot branch on: traced graphs call it whole.
torch.fx.wrap("pooled_grid")

CPB_HIDDEN = 512
# softplus(τ) starts at 1/0.24: the initial inverse temperature of the cosine-similarity logits.
INITIAL_INVERSE_TEMPERATURE = 1 / 0.24


def continuous_position_bias(
    fc1: nn.Linear,
    fc2: nn.Linear,
    query_size: tuple[int, int],
    key_size: tuple[int, int],
    pretrain_size: tuple[int, int],
) -> torch.Tensor:
    """(heads, Hq·Wq, Hk·Wk) bias: fc2(ReLU(fc1(log-spaced offsets))), run once per distinct offset pair."""
    table, index = cpb_coordinates(query_size, key_size, pretrain_size, device=fc1.weight.device)
    bias_table = fc2(F.relu(fc1(table.to(fc1.weight.dtype))))
    return bias_table.transpose(0, 1)[:, index]


class _CosineAttentionParameters(nn.Module):
    """The parameters both mixers share: learnable inverse temperature, query embedding, CPB MLP."""

    def __init__(self, dim: int, num_heads: int, pretrain_size: tuple[int, int], device=None, dtype=None):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.pretrain_size = tuple(pretrain_size)
        self.temperature = nn.Parameter(torch.empty(num_heads, 1, 1, device=device, dtype=dtype))
        self.query_embedding = nn.Parameter(torch.empty(num_heads, 1, self.head_dim, device=device, dtype=dtype))
        self.cpb_fc1 = nn.Linear(2, CPB_HIDDEN, device=device, dtype=dtype)
        self.cpb_fc2 = nn.Linear(CPB_HIDDEN, num_heads, device=device, dtype=dtype)

    def reset_parameters(self) -> None:
        nn.init.constant_(self.temperature, math.log(math.expm1(INITIAL_INVERSE_TEMPERATURE)))
        nn.init.trunc_normal_(self.query_embedding, std=0.02)

    def _scale_query(self, q_normalised: torch.Tensor, length_scale) -> torch.Tensor:
        return (q_normalised + self.query_embedding) * F.softplus(self.temperature) * length_scale

    def _split_heads(self, x: torch.Tensor, parts: int) -> tuple[torch.Tensor, ...]:
        """(B, N, parts·C) with head-major channels per part → ``parts`` tensors of (B, heads, N, d)."""
        batch, tokens, _ = x.shape
        return x.reshape(batch, tokens, parts, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)

    def _merge_heads(self, x: torch.Tensor, height: int, width: int) -> torch.Tensor:
        return x.transpose(1, 2).reshape(x.shape[0], height, width, self.num_heads * self.head_dim)


class AggregatedAttention(_CosineAttentionParameters):
    """Pixel-focused aggregated attention: a k×k sliding window plus pooled tokens under one softmax.

    ``sr_ratio`` sets the pooled grid to (H // sr_ratio, W // sr_ratio) of the actual input, unless
    ``fixed_pool_size`` fixes it to P×P (the paper's linear-complexity inference mode). ``pretrain_size``
    is the token grid of this stage at the pre-training resolution; it normalises the CPB offsets.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        sr_ratio: int,
        pretrain_size: tuple[int, int],
        window_size: int = 3,
        fixed_pool_size: int | None = None,
        qkv_bias: bool = True,
        device=None,
        dtype=None,
    ):
        super().__init__(dim, num_heads, pretrain_size, device=device, dtype=dtype)
        if window_size % 2 == 0:
            raise ValueError(f"window_size must be odd so the window centres on its query, got {window_size}")
        if fixed_pool_size is not None and fixed_pool_size < 1:
            raise ValueError(f"fixed_pool_size must be a positive grid side, got {fixed_pool_size}")
        self.sr_ratio = sr_ratio
        self.window_size = window_size
        self.fixed_pool_size = fixed_pool_size
        window_len = window_size * window_size
        factory = dict(device=device, dtype=dtype)
        self.relative_pos_bias_local = nn.Parameter(torch.empty(num_heads, window_len, **factory))
        self.learnable_tokens = nn.Parameter(torch.empty(num_heads, self.head_dim, window_len, **factory))
        self.learnable_bias = nn.Parameter(torch.empty(num_heads, 1, window_len, **factory))
        self.q = nn.Linear(dim, dim, bias=qkv_bias, **factory)
        self.kv = nn.Linear(dim, dim * 2, bias=qkv_bias, **factory)
        self.proj = nn.Linear(dim, dim, **factory)
        self.sr = nn.Conv2d(dim, dim, kernel_size=1, **factory)
        self.act = nn.GELU()
        self.norm = nn.LayerNorm(dim, eps=1e-5, **factory)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        super().reset_parameters()
        nn.init.trunc_normal_(self.relative_pos_bias_local, std=4e-4)
        nn.init.trunc_normal_(self.learnable_tokens, std=0.02)
        nn.init.zeros_(self.learnable_bias)

    def pool_size(self, height: int, width: int) -> tuple[int, int]:
        """The pooled key grid for an H×W input, with an error naming the fix when it would be empty."""
        return pooled_grid(height, width, self.sr_ratio, self.fixed_pool_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, height, width, channels = x.shape
        pool_size = self.pool_size(height, width)
        tokens = x.reshape(batch, height * width, channels)
        (q,) = self._split_heads(self.q(tokens), 1)
        q = F.normalize(q, dim=-1)
        k, v = self._split_heads(self.kv(tokens), 2)

        pooled = F.adaptive_avg_pool2d(self.act(self.sr(x.permute(0, 3, 1, 2))), pool_size)
        k_pool, v_pool = self._split_heads(self.kv(self.norm(pooled.flatten(2).transpose(1, 2))), 2)

        # λ_p = ln(#keys query p sees): in-image window slots plus every pooled token.
        window_count = local_window_mask(height, width, self.window_size, device=x.device).sum(-1, keepdim=True)
        length_scale = torch.log(window_count + pool_size[0] * pool_size[1]).to(q.dtype)
        pool_bias = continuous_position_bias(self.cpb_fc1, self.cpb_fc2, (height, width), pool_size, self.pretrain_size)
        out = aggregated_attention(
            self._scale_query(q, length_scale),
            F.normalize(k, dim=-1),
            v,
            F.normalize(k_pool, dim=-1),
            v_pool,
            self.relative_pos_bias_local,
            pool_bias,
            q @ self.learnable_tokens + self.learnable_bias,
            (height, width),
        )
        return self.proj(self._merge_heads(out, height, width))


class LengthScaledCosineAttention(_CosineAttentionParameters):
    """TransNeXt's full attention (its last stage): cosine logits with query embedding, learnable
    temperature, length scale ln(N) and a continuous position bias between all token pairs."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        pretrain_size: tuple[int, int],
        qkv_bias: bool = True,
        device=None,
        dtype=None,
    ):
        super().__init__(dim, num_heads, pretrain_size, device=device, dtype=dtype)
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias, device=device, dtype=dtype)
        self.proj = nn.Linear(dim, dim, device=device, dtype=dtype)
        self.reset_parameters()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, height, width, channels = x.shape
        q, k, v = self._split_heads(self.qkv(x.reshape(batch, height * width, channels)), 3)
        q = self._scale_query(F.normalize(q, dim=-1), math.log(height * width))
        bias = continuous_position_bias(self.cpb_fc1, self.cpb_fc2, (height, width), (height, width), self.pretrain_size)
        out = scaled_dot_product_attention(q, F.normalize(k, dim=-1), v, attn_bias=bias, scale=1.0)
        return self.proj(self._merge_heads(out, height, width))
