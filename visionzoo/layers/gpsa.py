"""Gated positional self-attention module with ConViT's convolutional ("local") initialisation.

d'Ascoli et al., "ConViT: Improving Vision Transformers with Soft Convolutional Inductive Biases",
ICML 2021 (arXiv 2103.10697), §3. The math is :func:`visionzoo.ops.gpsa.gated_positional_attention`.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from visionzoo.ops.gpsa import gated_positional_attention, relative_position_features


def _grid_features(cached: torch.Tensor, cached_grid: tuple[int, int], grid_size: tuple[int, int]) -> torch.Tensor:
    """The relative-position features of ``grid_size``: the cached ones when it is the build grid."""
    if tuple(grid_size) == tuple(cached_grid):
        return cached
    return relative_position_features(*grid_size, device=cached.device, dtype=cached.dtype)


def _check_token_grid(tokens: int, grid_size: tuple[int, int]) -> None:
    if tokens != grid_size[0] * grid_size[1]:
        raise ValueError(f"GPSA got {tokens} tokens for a {grid_size[0]}x{grid_size[1]} grid; pass the token grid")


# Both branch on the input's size, which a symbolic trace cannot: traced graphs call them whole.
torch.fx.wrap("_grid_features")
torch.fx.wrap("_check_token_grid")


class GatedPositionalSelfAttention(nn.Module):
    """GPSA on (B, N, C) patch tokens laid out row-major on a (height, width) grid.

    Parameters keep ConViT's names (``qk``, ``v``, ``proj``, ``pos_proj``, ``gating_param``) so official and
    timm checkpoints load unchanged. The relative-position features of the build grid are cached in a
    non-persistent buffer; other grids build theirs on the fly (cheap: N²·3 values), so the forward pass
    never mutates state and stays traceable by torch.compile and torch.export.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int = 8,
        qkv_bias: bool = False,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        locality_strength: float = 1.0,
        grid_size: tuple[int, int] = (14, 14),
        device=None,
        dtype=None,
    ):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.dim = dim
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim**-0.5
        self.locality_strength = locality_strength
        self.grid_size = tuple(grid_size)
        self.attn_drop = attn_drop
        self.qk = nn.Linear(dim, dim * 2, bias=qkv_bias, device=device, dtype=dtype)
        self.v = nn.Linear(dim, dim, bias=qkv_bias, device=device, dtype=dtype)
        self.proj = nn.Linear(dim, dim, device=device, dtype=dtype)
        self.proj_drop = nn.Dropout(proj_drop)
        self.pos_proj = nn.Linear(3, num_heads, device=device, dtype=dtype)
        self.gating_param = nn.Parameter(torch.ones(num_heads, device=device, dtype=dtype))
        self.register_buffer(
            "rel_pos", relative_position_features(*self.grid_size, device=device, dtype=dtype), persistent=False
        )
        for linear in (self.qk, self.v, self.proj, self.pos_proj):
            nn.init.trunc_normal_(linear.weight, std=0.02)
            if linear.bias is not None:
                nn.init.zeros_(linear.bias)
        self.local_init()

    @torch.no_grad()
    def local_init(self) -> None:
        """Start as a convolution: v = identity, head h = h1 + k·h2 attends to offset (Δx, Δy) = (h2 − c, h1 − c).

        With k = ⌊√H⌋ heads per side and c the kernel centre, head h scores
        −α · ((Δx − (h2 − c))² + (Δy − (h1 − c))²) + const, i.e. pos_proj row α · (2(h2 − c), 2(h1 − c), −1).
        Heads beyond k² (H not a square) keep their generic init, scaled by α.
        """
        nn.init.eye_(self.v.weight)
        kernel_size = math.isqrt(self.num_heads)
        center = (kernel_size - 1) / 2 if kernel_size % 2 == 0 else kernel_size // 2
        offsets = [divmod(head, kernel_size) for head in range(kernel_size**2)]  # head = h1 + k·h2 -> (h2, h1)
        rows = torch.tensor([[2.0 * (h2 - center), 2.0 * (h1 - center), -1.0] for h2, h1 in offsets])
        self.pos_proj.weight[: kernel_size**2] = rows.to(self.pos_proj.weight.device, self.pos_proj.weight.dtype)
        # ConViT scales every row, the generic ones of a non-square head count included.
        self.pos_proj.weight.mul_(self.locality_strength)

    def init_non_persistent_buffers(self) -> None:
        """Refill the cached features (e.g. after ``to_empty`` from the meta device); timm calls this hook."""
        self.rel_pos = relative_position_features(*self.grid_size, device=self.rel_pos.device, dtype=self.rel_pos.dtype)

    def positional_logits(self, grid_size: tuple[int, int]) -> torch.Tensor:
        """(H, N, N) positional logits for a row-major grid of ``grid_size`` tokens."""
        return self.pos_proj(_grid_features(self.rel_pos, self.grid_size, grid_size)).permute(2, 0, 1)

    def forward(self, x: torch.Tensor, grid_size: tuple[int, int]) -> torch.Tensor:
        batch, tokens, channels = x.shape
        _check_token_grid(tokens, grid_size)
        q, k = self.qk(x).reshape(batch, tokens, 2, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        v = self.v(x).reshape(batch, tokens, self.num_heads, self.head_dim).transpose(1, 2)
        out = gated_positional_attention(
            q,
            k,
            v,
            self.positional_logits(grid_size),
            self.gating_param,
            scale=self.scale,
            dropout_p=self.attn_drop if self.training else 0.0,
        )
        out = out.transpose(1, 2).reshape(batch, tokens, channels)
        return self.proj_drop(self.proj(out))
