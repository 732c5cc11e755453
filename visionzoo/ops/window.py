"""Multi-head self-attention inside non-overlapping windows of a channels-last map (Swin / DaViT style).

Maps are (B, H, W, C) with H and W multiples of the window (pad first; what the padded tokens hold is
the caller's choice). :func:`window_attention` takes such a map and the qkv projection (weight
(3 · heads · head_dim, C) with outputs laid out q | k | v, head-major inside each, and an optional bias),
and returns the attended map (B, H, W, heads · head_dim) before the output projection. The projection is
part of the op because the fast path partitions the C-wide input rather than the 3C-wide projection.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from visionzoo.ops._dispatch import Op, Sample, seeded_randn, trace_leaf
from visionzoo.ops._flex import FLEX_DEVICES, cached_block_mask, flex_attention, flex_is_fused, window_mask_mod
from visionzoo.ops.attention import sdpa_reference


def _check_window_grid(height: int, width: int, window_size: tuple[int, int]) -> None:
    if height % window_size[0] or width % window_size[1]:
        raise ValueError(
            f"a {height}x{width} map does not tile into {window_size[0]}x{window_size[1]} windows; "
            f"pad it to multiples of the window first (e.g. visionzoo.ops.window.pad_to_windows)"
        )


@trace_leaf
def pad_to_windows(x: torch.Tensor, window_size: tuple[int, int]) -> torch.Tensor:
    """Zero-pad a (B, H, W, C) map at the bottom and right to multiples of the window (a no-op if it tiles)."""
    pad_bottom = -x.shape[1] % window_size[0]
    pad_right = -x.shape[2] % window_size[1]
    if pad_bottom or pad_right:
        return F.pad(x, (0, 0, 0, pad_right, 0, pad_bottom))
    return x  # F.pad would copy even when there is nothing to add


@trace_leaf
def window_partition(x: torch.Tensor, window_size: tuple[int, int]) -> torch.Tensor:
    """(B, H, W, C) → (B · nH · nW, wh · ww, C): the tokens of each window, windows in row-major order."""
    batch, height, width, channels = x.shape
    _check_window_grid(height, width, window_size)
    wh, ww = window_size
    grid = x.reshape(batch, height // wh, wh, width // ww, ww, channels)
    return grid.permute(0, 1, 3, 2, 4, 5).reshape(-1, wh * ww, channels)


@trace_leaf
def window_reverse(windows: torch.Tensor, window_size: tuple[int, int], height: int, width: int) -> torch.Tensor:
    """Inverse of :func:`window_partition`: (B · nH · nW, wh · ww, C) → (B, H, W, C)."""
    _check_window_grid(height, width, window_size)
    wh, ww = window_size
    channels = windows.shape[-1]
    grid = windows.reshape(-1, height // wh, width // ww, wh, ww, channels)
    return grid.permute(0, 1, 3, 2, 4, 5).reshape(-1, height, width, channels)


def _check_projection(x: torch.Tensor, qkv_weight: torch.Tensor, num_heads: int) -> None:
    if x.dim() != 4 or qkv_weight.dim() != 2 or qkv_weight.shape[1] != x.shape[-1]:
        raise ValueError(
            f"window_attention expects a (B, H, W, C) map and a (3 * heads * head_dim, C) qkv weight, "
            f"got {tuple(x.shape)} and {tuple(qkv_weight.shape)}"
        )
    if qkv_weight.shape[0] % (3 * num_heads):
        raise ValueError(
            f"the qkv weight's {qkv_weight.shape[0]} outputs do not split into q, k, v of {num_heads} heads"
        )


def window_attention_reference(
    x: torch.Tensor,
    qkv_weight: torch.Tensor,
    qkv_bias: torch.Tensor | None,
    window_size: tuple[int, int],
    num_heads: int,
    scale: float | None = None,
) -> torch.Tensor:
    """Project to q, k, v; partition into windows; softmax(q kᵀ · scale) v per window and head; reverse."""
    _check_projection(x, qkv_weight, num_heads)
    batch, height, width, _ = x.shape
    qkv = F.linear(x, qkv_weight, qkv_bias)
    head_dim = qkv.shape[-1] // (3 * num_heads)
    windows = window_partition(qkv, window_size)
    tokens = windows.shape[1]
    q, k, v = windows.reshape(-1, tokens, 3, num_heads, head_dim).permute(2, 0, 3, 1, 4).unbind(0)
    out = sdpa_reference(q, k, v, scale=scale)
    out = out.transpose(1, 2).reshape(-1, tokens, num_heads * head_dim)
    return window_reverse(out, window_size, height, width)


window_attention = Op("window_attention", window_attention_reference)


@window_attention.sample_inputs
def _samples() -> list[Sample]:
    randn = seeded_randn()
    return [
        Sample("batch 1, 3x2 windows of a 6x4 map", (randn(1, 6, 4, 5), randn(12, 5) / 5**0.5, randn(12), (3, 2), 2)),
        Sample("no bias, 1x1 windows, given scale", (randn(2, 3, 5, 7), randn(9, 7) / 7**0.5, None, (1, 1), 1),
               {"scale": 0.5}),
    ]


@window_attention.register("sdpa", priority=10, portable=True)
def _window_attention_sdpa(x, qkv_weight, qkv_bias, window_size, num_heads, scale=None):
    # Partition the C-wide input rather than the 3C-wide projection; SDPA reads q, k, v as strided views of
    # the projection, and one copy brings the result back to the map with the head merge riding along.
    _check_projection(x, qkv_weight, num_heads)
    batch, height, width, channels = x.shape
    _check_window_grid(height, width, window_size)
    wh, ww = window_size
    rows, cols = height // wh, width // ww
    head_dim = qkv_weight.shape[0] // (3 * num_heads)
    if torch.compiler.is_exporting():  # rank ≤ 5 for Core ML, see _merge_windows_low_rank
        windows = x.reshape(batch * rows, wh, cols, ww * channels).transpose(1, 2).reshape(-1, wh * ww, channels)
    else:
        windows = x.reshape(batch, rows, wh, cols, ww, channels).permute(0, 1, 3, 2, 4, 5).reshape(-1, wh * ww, channels)
    qkv = F.linear(windows, qkv_weight, qkv_bias).view(-1, wh * ww, 3, num_heads, head_dim)
    q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
    out = F.scaled_dot_product_attention(q, k, v, scale=scale)
    if torch.compiler.is_exporting():
        return _merge_windows_low_rank(out, batch, rows, cols, wh, ww)
    out = out.view(batch, rows, cols, num_heads, wh, ww, head_dim).permute(0, 1, 4, 2, 5, 3, 6)
    return out.reshape(batch, height, width, num_heads * head_dim)


def _merge_windows_low_rank(out: torch.Tensor, batch: int, rows: int, cols: int, wh: int, ww: int) -> torch.Tensor:
    """(B·rows·cols, heads, wh·ww, d) → (B, H, W, heads·d) through tensors of rank ≤ 5, for export.

    The same result as the 7-D view above, in two copies instead of one: Core ML takes rank ≤ 5 and XNNPACK
    rank ≤ 6, and the explicit copy keeps torch.export from baking in a view that is valid only for the
    fused kernel's output strides (ExecuTorch decomposes SDPA into contiguous math ops).
    """
    out = out.transpose(1, 2).clone(memory_format=torch.contiguous_format)
    out = out.reshape(batch * rows, cols, wh, -1).transpose(1, 2)
    return out.reshape(batch, rows * wh, cols * ww, -1)


def _flex_supports(x, qkv_weight, qkv_bias, *args, **kwargs) -> bool:
    return flex_is_fused(x, qkv_weight, qkv_bias)


@window_attention.register("flex", priority=5, devices=FLEX_DEVICES, portable=False, differentiable=False,
                          supports=_flex_supports)
def _window_attention_flex(x, qkv_weight, qkv_bias, window_size, num_heads, scale=None):
    # The map stays in row-major token order: the block mask confines each query to its own window, so neither
    # the partition nor the merge is a copy, and the projection runs on the map as it is.
    _check_projection(x, qkv_weight, num_heads)
    batch, height, width, _ = x.shape
    _check_window_grid(height, width, window_size)
    head_dim = qkv_weight.shape[0] // (3 * num_heads)
    qkv = F.linear(x, qkv_weight, qkv_bias).view(batch, height * width, 3, num_heads, head_dim)
    q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
    mask = cached_block_mask(window_mask_mod, (width, *window_size), height * width, height * width, x.device)
    out = flex_attention(q, k, v, block_mask=mask, scale=scale)
    return out.transpose(1, 2).reshape(batch, height, width, num_heads * head_dim)


# One program holds a window's logits (tokens²) and q, k, v (tokens × head_dim) in registers.
TRITON_MAX_TOKENS = 256
TRITON_MAX_HEAD_DIM = 128


def _triton_supports(x, qkv_weight, qkv_bias, window_size, num_heads, scale=None) -> bool:
    head_dim = qkv_weight.shape[0] // (3 * num_heads) if num_heads else 0
    recorded = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (x, qkv_weight, qkv_bias))
    return (not recorded and x.dtype in (torch.float32, torch.float16, torch.bfloat16)
            and window_size[0] * window_size[1] <= TRITON_MAX_TOKENS and 0 < head_dim <= TRITON_MAX_HEAD_DIM)


@window_attention.register("triton", priority=20, devices=("cuda",), requires=("triton",), portable=False,
                           differentiable=False, supports=_triton_supports)
def _window_attention_triton(x, qkv_weight, qkv_bias, window_size, num_heads, scale=None):
    """The projection by the BLAS, then one fused kernel for partition, attention and merge (inference only)."""
    from visionzoo.ops.triton.window_attention import window_attention as fused_window_attention

    _check_projection(x, qkv_weight, num_heads)
    _check_window_grid(x.shape[1], x.shape[2], window_size)
    head_dim = qkv_weight.shape[0] // (3 * num_heads)
    qkv = F.linear(x, qkv_weight, qkv_bias)
    return fused_window_attention(qkv, *window_size, num_heads, head_dim**-0.5 if scale is None else scale)
