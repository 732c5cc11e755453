"""Aggregated (pixel-focused) attention, TransNeXt (Shi, CVPR 2024, arXiv 2311.17132, §3.2–3.3).

Each query position p of an H×W map attends to two key sets at once, normalised by ONE softmax:

* its k×k sliding-window neighbourhood at full resolution (zero padding; neighbours that fall outside the
  image get logit −∞), with a learnable per-head bias per window slot;
* P tokens pooled from the whole map, with a continuous position bias per (query, pooled key) pair.

The local branch then adds a query-dependent "dynamic bias" (from learnable tokens) to its softmax weights
before weighting the neighbourhood values; the sum is deliberately not renormalised.

Shapes: q, k, v (B, heads, H·W, d) in row-major token order; k_pool, v_pool (B, heads, P, d);
local_bias (heads, k²); pool_bias broadcastable to (B, heads, H·W, P); value_bias (B, heads, H·W, k²).
q must already carry every scale (the module applies normalisation, query embedding, temperature and
the length scale); k and k_pool are expected L2-normalised, but the op does not rely on it.

This module also holds the coordinate maths the attention needs at any input size: which window slots
lie inside the image, and the log-spaced relative coordinates fed to the continuous-position-bias MLP.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from visionzoo.ops._dispatch import Op, Sample, seeded_randn, trace_leaf
from visionzoo.ops._flex import FLEX_DEVICES, cached_block_mask, flex_attention, flex_is_fused


@trace_leaf
def local_window_mask(height: int, width: int, window_size: int = 3, device=None) -> torch.Tensor:
    """(H·W, k²) bool: True where slot j of position p's k×k window (row-major, top-left first) is inside."""
    offsets = torch.arange(window_size, device=device) - window_size // 2
    rows = torch.arange(height, device=device)[:, None] + offsets
    cols = torch.arange(width, device=device)[:, None] + offsets
    # logical_and rather than ``&``: coremltools converts no bitwise and.
    rows_inside = torch.logical_and(rows >= 0, rows < height)
    cols_inside = torch.logical_and(cols >= 0, cols < width)
    inside = torch.logical_and(rows_inside[:, None, :, None], cols_inside[None, :, None, :])
    return inside.reshape(height * width, window_size * window_size)


def _pooled_axis_offsets(query_len: int, key_len: int, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Offsets between query rows and adaptive-average-pool bin centres along one axis.

    Returns ``values`` (L,), every distinct offset ``i − c_m`` (plus, for uneven bins, a few unused ones),
    and ``index`` (query_len, key_len) into ``values``. Bin m covers rows ⌊m·Q/K⌋ … ⌈(m+1)·Q/K⌉ − 1 and its
    centre c_m is their mean, a multiple of ½, so offsets are enumerated as integers 2·(i − c_m); enumerating
    them arithmetically (instead of torch.unique) keeps the computation shape-static for torch.compile.
    """
    bins = torch.arange(key_len, device=device)
    starts = bins * query_len // key_len
    ends = -((-(bins + 1) * query_len) // key_len)
    doubled_offsets = 2 * torch.arange(query_len, device=device)[:, None] - (starts + ends - 1)[None, :]
    lowest = -(((key_len - 1) * query_len) // key_len + query_len - 1)
    highest = 2 * (query_len - 1) - (-(-query_len // key_len) - 1)
    # Even bins put every centre on the same half-integer grid, so doubled offsets share one parity.
    step = 2 if query_len % key_len == 0 else 1
    values = torch.arange(lowest, highest + 1, step, device=device, dtype=torch.float32) / 2
    return values, (doubled_offsets - lowest) // step


def _log_spaced(offsets: torch.Tensor, pretrain_len: int) -> torch.Tensor:
    relative = offsets / (pretrain_len - 1) * 8
    return torch.sign(relative) * torch.log2(relative.abs() + 1.0) / 3.0


@trace_leaf
def cpb_coordinates(
    query_size: tuple[int, int],
    key_size: tuple[int, int],
    pretrain_size: tuple[int, int],
    device=None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs of the continuous-position-bias MLP for a query grid attending to a pooled key grid.

    Key coordinates are the adaptive-average-pool bin centres of the query coordinates (the plain grid
    when ``key_size == query_size``). Offsets are scaled by 8 / (pretrain_len − 1) and log-spaced:
    f(t) = sign(t)·log2(1 + |t|) / log2(8). Returns the deduplicated ``table`` (L, 2) float32 of
    (f(Δh), f(Δw)) and ``index`` (Hq·Wq, Hk·Wk) int64 into it, so the MLP runs once per distinct pair.
    """
    if min(pretrain_size) < 2:
        raise ValueError(f"pretrain grid must be at least 2x2 to normalise offsets, got {tuple(pretrain_size)}")
    row_values, row_index = _pooled_axis_offsets(query_size[0], key_size[0], device)
    col_values, col_index = _pooled_axis_offsets(query_size[1], key_size[1], device)
    rows, cols = torch.meshgrid(
        _log_spaced(row_values, pretrain_size[0]), _log_spaced(col_values, pretrain_size[1]), indexing="ij"
    )
    table = torch.stack([rows, cols], dim=-1).reshape(-1, 2)
    index = row_index[:, None, :, None] * col_values.numel() + col_index[None, :, None, :]
    return table, index.reshape(query_size[0] * query_size[1], key_size[0] * key_size[1])


def _window_size(local_bias: torch.Tensor) -> int:
    window_size = math.isqrt(local_bias.shape[-1])
    if window_size * window_size != local_bias.shape[-1] or window_size % 2 == 0:
        raise ValueError(f"local_bias must have k² slots for an odd window k, got {local_bias.shape[-1]}")
    return window_size


def _joint_softmax(local_logits, pool_logits):
    """One softmax over [local | pooled] logits, split back into the two branches."""
    weights = torch.cat([local_logits, pool_logits], dim=-1).softmax(dim=-1)
    return weights.split([local_logits.shape[-1], pool_logits.shape[-1]], dim=-1)


def aggregated_attention_reference(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    k_pool: torch.Tensor,
    v_pool: torch.Tensor,
    local_bias: torch.Tensor,
    pool_bias: torch.Tensor,
    value_bias: torch.Tensor,
    size: tuple[int, int],
) -> torch.Tensor:
    """The readable spec: gather every k×k neighbourhood with ``F.unfold`` (zero padding), then attend."""
    batch, heads, tokens, head_dim = q.shape
    height, width = size
    window_size = _window_size(local_bias)
    window_len = window_size * window_size

    def neighbourhoods(t):
        grid = t.transpose(-2, -1).reshape(batch, heads * head_dim, height, width)
        columns = F.unfold(grid, window_size, padding=window_size // 2)
        return columns.reshape(batch, heads, head_dim, window_len, tokens).permute(0, 1, 4, 3, 2)

    k_local, v_local = neighbourhoods(k), neighbourhoods(v)  # (B, heads, N, k², d)
    ones = torch.ones(1, 1, height, width, device=q.device)
    outside = F.unfold(ones, window_size, padding=window_size // 2)[0].transpose(0, 1) == 0
    local_logits = (q.unsqueeze(-2) @ k_local.transpose(-2, -1)).squeeze(-2) + local_bias.unsqueeze(1)
    local_logits = local_logits.masked_fill(outside, float("-inf"))
    pool_logits = q @ k_pool.transpose(-2, -1) + pool_bias
    local_weights, pool_weights = _joint_softmax(local_logits, pool_logits)
    local_out = ((local_weights + value_bias).unsqueeze(-2) @ v_local).squeeze(-2)
    return local_out + pool_weights @ v_pool


aggregated_attention = Op("aggregated_attention", aggregated_attention_reference)


@aggregated_attention.sample_inputs
def _samples() -> list[Sample]:
    randn = seeded_randn()

    def call(batch: int, heads: int, height: int, width: int, head_dim: int, pool_len: int, window_size: int):
        tokens, window_len = height * width, window_size * window_size
        tensors = {
            "q": randn(batch, heads, tokens, head_dim), "k": randn(batch, heads, tokens, head_dim),
            "v": randn(batch, heads, tokens, head_dim), "k_pool": randn(batch, heads, pool_len, head_dim),
            "v_pool": randn(batch, heads, pool_len, head_dim), "local_bias": randn(heads, window_len),
            "pool_bias": randn(heads, tokens, pool_len), "value_bias": randn(batch, heads, tokens, window_len),
        }
        return (), {**tensors, "size": (height, width)}

    return [
        Sample("batch 1, 5x3 map, 3x3 window", *call(1, 2, 5, 3, 4, 3, 3)),
        Sample("5x5 window wider than a 2x7 map", *call(2, 1, 2, 7, 3, 2, 5)),
    ]


@aggregated_attention.register("shifted", priority=10, portable=True)
def _aggregated_attention_shifted(q, k, v, k_pool, v_pool, local_bias, pool_bias, value_bias, size):
    """Window terms from k² shifted views of one zero-padded copy of k and v: no (N, k², d) tensor is built.

    Each slot's logit is an elementwise product summed over d, and the output accumulates slot by slot;
    autograd saves only views of the padded copies, so training memory stays at one copy of k and v.
    """
    batch, heads, tokens, head_dim = q.shape
    height, width = size
    window_size = _window_size(local_bias)
    radius = window_size // 2
    shifts = [(dy, dx) for dy in range(window_size) for dx in range(window_size)]

    def padded(t):
        return F.pad(t.reshape(batch, heads, height, width, head_dim), (0, 0, radius, radius, radius, radius))

    k_padded, v_padded = padded(k), padded(v)
    q_grid = q.reshape(batch, heads, height, width, head_dim)
    local_logits = torch.stack(
        [(q_grid * k_padded[:, :, dy:dy + height, dx:dx + width]).sum(-1) for dy, dx in shifts], dim=-1
    ).reshape(batch, heads, tokens, len(shifts))
    inside = local_window_mask(height, width, window_size, device=q.device)
    local_logits = (local_logits + local_bias.unsqueeze(1)).masked_fill(inside.logical_not(), float("-inf"))
    pool_logits = q @ k_pool.transpose(-2, -1) + pool_bias
    local_weights, pool_weights = _joint_softmax(local_logits, pool_logits)
    local_weights = (local_weights + value_bias).reshape(batch, heads, height, width, len(shifts))
    out = (pool_weights @ v_pool).reshape(batch, heads, height, width, head_dim)
    for slot, (dy, dx) in enumerate(shifts):
        out = out + local_weights[..., slot:slot + 1] * v_padded[:, :, dy:dy + height, dx:dx + width]
    return out.reshape(batch, heads, tokens, head_dim)


def _aggregated_mask_mod(height: int, width: int, window_size: int):
    """Keys 0 … H·W − 1 are the map (a query sees its k×k neighbours), the rest are pooled (seen by every query)."""
    tokens, radius = height * width, window_size // 2

    def neighbour_or_pooled(batch, head, query, key):
        near_rows = (query // width - key // width).abs() <= radius
        near_cols = (query % width - key % width).abs() <= radius
        return (key >= tokens) | (near_rows & near_cols)

    return neighbour_or_pooled


def _flex_supports(q, k, v, k_pool, v_pool, local_bias, pool_bias, value_bias, size) -> bool:
    return flex_is_fused(q, k, v, k_pool, v_pool, local_bias, pool_bias, value_bias)


@aggregated_attention.register("flex", priority=5, devices=FLEX_DEVICES, portable=False, differentiable=False,
                               supports=_flex_supports)
def _aggregated_attention_flex(q, k, v, k_pool, v_pool, local_bias, pool_bias, value_bias, size):
    """The joint softmax as one flex call over [map | pooled] keys: a block mask keeps each query's k×k
    neighbourhood and every pooled key, and a score modifier adds the window-slot or pooled position bias.

    The dynamic value bias is added to the softmax weights after normalisation, outside what flex computes, so
    its term Σ_slot bias · v_neighbour joins afterwards from k² shifted views of one zero-padded copy of v.
    """
    batch, heads, tokens, head_dim = q.shape
    height, width = size
    window_size = _window_size(local_bias)
    radius = window_size // 2
    pool_len = k_pool.shape[2]
    pool_bias = pool_bias.expand(batch, heads, tokens, pool_len)

    def add_position_bias(score, b, h, query, key):
        slot = (key // width - query // width + radius) * window_size + key % width - query % width + radius
        local = local_bias[h, slot.clamp(0, window_size * window_size - 1)]
        pooled = pool_bias[b, h, query, (key - tokens).clamp(0, pool_len - 1)]
        return score + torch.where(key < tokens, local, pooled)

    mask = cached_block_mask(_aggregated_mask_mod, (height, width, window_size), tokens, tokens + pool_len,
                             q.device)
    out = flex_attention(q, torch.cat([k, k_pool], dim=2), torch.cat([v, v_pool], dim=2),
                         score_mod=add_position_bias, block_mask=mask, scale=1.0)
    v_padded = F.pad(v.reshape(batch, heads, height, width, head_dim), (0, 0, radius, radius, radius, radius))
    value_bias = value_bias.reshape(batch, heads, height, width, window_size * window_size)
    biased_values = sum(
        value_bias[..., slot:slot + 1] * v_padded[:, :, slot // window_size:slot // window_size + height,
                                                  slot % window_size:slot % window_size + width]
        for slot in range(window_size * window_size)
    )
    # Summed as a reduction over a stack, not with ``+``: inductor's CPU flex template fails on a pointwise
    # epilogue that reads its output (NotImplementedError: epilogue_nodes), and a reduction is never one.
    return torch.stack([out, biased_values.reshape(batch, heads, tokens, head_dim)]).sum(0)
