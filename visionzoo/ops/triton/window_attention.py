"""Window attention fused with its partition and merge: one Triton program per (window, head).

Each program gathers its window's q, k and v straight from the projection of the map (B, H, W, 3 · heads · d,
laid out q | k | v, head-major) by address arithmetic, runs softmax(q kᵀ · scale) v in registers, and writes
the result into the map (B, H, W, heads · d). No partitioned copy of the projection and no merge copy of the
output exist; the unfused paths make both. Forward only (inference).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch.library import triton_op, wrap_triton


@triton.jit
def _window_attention_kernel(
    qkv_ptr, out_ptr, height, width, windows_per_row, windows_per_image, heads, head_dim, scale,
    WINDOW_HEIGHT: tl.constexpr, WINDOW_WIDTH: tl.constexpr, TOKENS: tl.constexpr, DIM: tl.constexpr,
):
    window = tl.program_id(0)
    head = tl.program_id(1)
    image = window // windows_per_image
    top = (window % windows_per_image) // windows_per_row * WINDOW_HEIGHT
    left = (window % windows_per_image) % windows_per_row * WINDOW_WIDTH

    token = tl.arange(0, TOKENS)  # the window's tokens, row-major, padded to a power of two
    in_window = token < WINDOW_HEIGHT * WINDOW_WIDTH
    pixel = (image * height + top + token // WINDOW_WIDTH) * width + left + token % WINDOW_WIDTH
    channel = tl.arange(0, DIM)
    loaded = in_window[:, None] & (channel < head_dim)[None, :]

    width_qkv = 3 * heads * head_dim
    q_offsets = pixel[:, None] * width_qkv + head * head_dim + channel[None, :]
    q = tl.load(qkv_ptr + q_offsets, mask=loaded, other=0.0)
    k = tl.load(qkv_ptr + q_offsets + heads * head_dim, mask=loaded, other=0.0)
    v = tl.load(qkv_ptr + q_offsets + 2 * heads * head_dim, mask=loaded, other=0.0)

    logits = tl.dot(q, tl.trans(k)).to(tl.float32) * scale
    logits = tl.where(in_window[None, :], logits, float("-inf"))
    weights = tl.exp(logits - tl.max(logits, axis=1)[:, None])
    weights = weights / tl.sum(weights, axis=1)[:, None]
    out = tl.dot(weights.to(v.dtype), v)

    out_offsets = pixel[:, None] * (heads * head_dim) + head * head_dim + channel[None, :]
    tl.store(out_ptr + out_offsets, out.to(out_ptr.dtype.element_ty), mask=loaded)


def _block(size: int) -> int:
    # tl.dot takes tiles of at least 16 along each side.
    return max(16, triton.next_power_of_2(size))


@triton_op("visionzoo::window_attention", mutates_args=())
def window_attention(qkv: torch.Tensor, window_height: int, window_width: int, num_heads: int,
                     scale: float) -> torch.Tensor:
    """(B, H, W, 3 · heads · d) projection → (B, H, W, heads · d) attended map; H, W multiples of the window."""
    batch, height, width, channels = qkv.shape
    head_dim = channels // (3 * num_heads)
    qkv = qkv.contiguous()
    out = qkv.new_empty(batch, height, width, num_heads * head_dim)
    rows, cols = height // window_height, width // window_width
    grid = (batch * rows * cols, num_heads)
    wrap_triton(_window_attention_kernel)[grid](
        qkv, out, height, width, cols, rows * cols, num_heads, head_dim, scale,
        WINDOW_HEIGHT=window_height, WINDOW_WIDTH=window_width,
        TOKENS=_block(window_height * window_width), DIM=_block(head_dim),
    )
    return out
