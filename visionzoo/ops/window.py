"""Multi-head self-attention inside non-overlapping windows of a channels-last map (Swin / DaViT style).

Maps are (B, H, W, C) with H and W multiples of the window (pad first; what the padded tokens hold is
the caller's choice). :func:`window_attention` takes the packed projection ``qkv`` of such a map, laid
out q | k | v along the last axis and head-major inside each (``C = 3 · heads · head_dim``), and returns
the attended map (B, H, W, heads · head_dim) before the output projection.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from visionzoo.ops._dispatch import Op
from visionzoo.ops.attention import sdpa_reference


def _check_window_grid(height: int, width: int, window_size: tuple[int, int]) -> None:
    if height % window_size[0] or width % window_size[1]:
        raise ValueError(
            f"a {height}x{width} map does not tile into {window_size[0]}x{window_size[1]} windows; "
            f"pad it to multiples of the window first (e.g. visionzoo.ops.window.pad_to_windows)"
        )


def pad_to_windows(x: torch.Tensor, window_size: tuple[int, int]) -> torch.Tensor:
    """Zero-pad a (B, H, W, C) map at the bottom and right to multiples of the window (a no-op if it tiles)."""
    pad_bottom = -x.shape[1] % window_size[0]
    pad_right = -x.shape[2] % window_size[1]
    if pad_bottom or pad_right:
        return F.pad(x, (0, 0, 0, pad_right, 0, pad_bottom))
    return x  # F.pad would copy even when there is nothing to add


def window_partition(x: torch.Tensor, window_size: tuple[int, int]) -> torch.Tensor:
    """(B, H, W, C) → (B · nH · nW, wh · ww, C): the tokens of each window, windows in row-major order."""
    batch, height, width, channels = x.shape
    _check_window_grid(height, width, window_size)
    wh, ww = window_size
    grid = x.reshape(batch, height // wh, wh, width // ww, ww, channels)
    return grid.permute(0, 1, 3, 2, 4, 5).reshape(-1, wh * ww, channels)


def window_reverse(windows: torch.Tensor, window_size: tuple[int, int], height: int, width: int) -> torch.Tensor:
    """Inverse of :func:`window_partition`: (B · nH · nW, wh · ww, C) → (B, H, W, C)."""
    _check_window_grid(height, width, window_size)
    wh, ww = window_size
    channels = windows.shape[-1]
    grid = windows.reshape(-1, height // wh, width // ww, wh, ww, channels)
    return grid.permute(0, 1, 3, 2, 4, 5).reshape(-1, height, width, channels)


def _check_qkv(qkv: torch.Tensor, num_heads: int) -> None:
    if qkv.dim() != 4 or qkv.shape[-1] % (3 * num_heads):
        raise ValueError(
            f"window_attention expects a packed (B, H, W, 3 * heads * head_dim) map with {num_heads} heads, "
            f"got shape {tuple(qkv.shape)}"
        )


def window_attention_reference(
    qkv: torch.Tensor, window_size: tuple[int, int], num_heads: int, scale: float | None = None
) -> torch.Tensor:
    """Partition into windows, split q/k/v and heads, softmax(q kᵀ · scale) v per window and head, reverse."""
    _check_qkv(qkv, num_heads)
    batch, height, width, packed = qkv.shape
    head_dim = packed // (3 * num_heads)
    windows = window_partition(qkv, window_size)
    tokens = windows.shape[1]
    q, k, v = windows.reshape(-1, tokens, 3, num_heads, head_dim).permute(2, 0, 3, 1, 4).unbind(0)
    out = sdpa_reference(q, k, v, scale=scale)
    out = out.transpose(1, 2).reshape(-1, tokens, num_heads * head_dim)
    return window_reverse(out, window_size, height, width)


window_attention = Op("window_attention", window_attention_reference)


@window_attention.register("sdpa")
def _window_attention_sdpa(qkv, window_size, num_heads, scale=None):
    # One copy brings q, k, v of every window and head into SDPA's (batch, heads, tokens, dim) layout, and one
    # copy brings the result back to the map: the partition and the head split/merge ride along for free.
    _check_qkv(qkv, num_heads)
    batch, height, width, packed = qkv.shape
    _check_window_grid(height, width, window_size)
    wh, ww = window_size
    rows, cols = height // wh, width // ww
    head_dim = packed // (3 * num_heads)
    grid = qkv.reshape(batch, rows, wh, cols, ww, 3, num_heads, head_dim)
    q, k, v = grid.permute(5, 0, 1, 3, 6, 2, 4, 7).reshape(3, batch * rows * cols, num_heads, wh * ww, head_dim)
    out = F.scaled_dot_product_attention(q, k, v, scale=scale)
    out = out.view(batch, rows, cols, num_heads, wh, ww, head_dim).permute(0, 1, 4, 2, 5, 3, 6)
    return out.reshape(batch, height, width, num_heads * head_dim)
