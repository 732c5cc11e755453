"""Blocked local self-attention with a halo and relative-position logits (HaloNet, arXiv 2103.12731).

The map is cut into non-overlapping ``block × block`` query blocks; every query of a block attends to the
keys of the same block widened by ``halo`` pixels on each side (a ``win × win`` window, win = block + 2·halo).
With ``query_stride = 2`` the queries come from a stride-2 map, so a block holds ``block/2 × block/2`` queries
that still see the full-resolution window (the network's downsampling attention).

The logit of query (y, x) of a block for window key (u, v) is

    scale · q·k + q·R_h[u − y + win − 1] + q·R_w[v − x + win − 1]

with (y, x) the query's position in its own (possibly strided) block grid and R_h, R_w (2·win − 1, dim_qk)
tables shared by all heads. As in the published models, the halo ring around the image holds zero keys and
values that take part in the softmax. Maps whose sides are not multiples of ``block`` are padded to the
next multiple; keys in that block padding (beyond the zero ring) are masked out and the extra queries are
cropped, so any size works and block-aligned sizes give exactly the unpadded result.

Shapes: q (B, heads, dim_qk, H/s, W/s), k (B, heads, dim_qk, H, W), v (B, heads, dim_v, H, W);
the output is (B, heads, dim_v, H/s, W/s).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from visionzoo.ops._dispatch import Op, Sample, eager_cpu_inference, seeded_randn
from visionzoo.ops._flex import FLEX_DEVICES, cached_block_mask, flex_attention, flex_is_fused


def _check_shapes(q, k, v, height_rel, width_rel, block_size, halo_size, query_stride):
    if q.dim() != 5 or k.dim() != 5 or v.dim() != 5:
        raise ValueError(
            "halo_attention expects q, k, v of shape (batch, heads, channels, height, width), got "
            f"{tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}"
        )
    if block_size % query_stride:
        raise ValueError(f"block_size {block_size} must be a multiple of query_stride {query_stride}")
    height, width = k.shape[-2:]
    if height % query_stride or width % query_stride:
        raise ValueError(f"a {height}x{width} map cannot be queried at stride {query_stride}: make its sides even")
    if q.shape[-2:] != (height // query_stride, width // query_stride) or v.shape[-2:] != (height, width):
        raise ValueError(
            f"q map {tuple(q.shape[-2:])} and v map {tuple(v.shape[-2:])} do not match a key map of "
            f"{height}x{width} at query stride {query_stride}"
        )
    win = block_size + 2 * halo_size
    expected = (2 * win - 1, q.shape[2])
    if tuple(height_rel.shape) != expected or tuple(width_rel.shape) != expected:
        raise ValueError(
            f"relative-position tables must be {expected} for block {block_size}, halo {halo_size} and "
            f"dim_qk {q.shape[2]}; got {tuple(height_rel.shape)} and {tuple(width_rel.shape)}"
        )


def _padded_size(size: int, block_size: int) -> int:
    return -(-size // block_size) * block_size


def _key_windows(x: torch.Tensor, block_size: int, halo_size: int) -> torch.Tensor:
    """(B, heads, C, H, W) → (B, heads, blocks_h, blocks_w, win·win, C) windows of each block plus its halo."""
    height, width = x.shape[-2:]
    pad_h = _padded_size(height, block_size) - height
    pad_w = _padded_size(width, block_size) - width
    x = F.pad(x, (halo_size, halo_size + pad_w, halo_size, halo_size + pad_h))
    win = block_size + 2 * halo_size
    windows = x.unfold(3, win, block_size).unfold(4, win, block_size)  # B, heads, C, nbh, nbw, win, win
    return windows.permute(0, 1, 3, 4, 5, 6, 2).flatten(4, 5)


def _window_index(blocks: int, block_size: int, win: int, device) -> torch.Tensor:
    """Padded-map positions of ``blocks`` windows of ``win`` at stride ``block_size``, flattened: a constant."""
    return torch.tensor([b * block_size + i for b in range(blocks) for i in range(win)], device=device)


def _key_windows_low_rank(x: torch.Tensor, block_size: int, halo_size: int) -> torch.Tensor:
    """:func:`_key_windows` flattened to (B·heads·blocks, win·win, C) for export: one axis at a time, gathered with
    ``index_select`` (coremltools has no ``unfold``) through tensors of rank ≤ 5 (XNNPACK takes ≤ 6, Core ML ≤ 5)."""
    channels, height, width = x.shape[2:]
    pad_h = _padded_size(height, block_size) - height
    pad_w = _padded_size(width, block_size) - width
    x = F.pad(x.flatten(0, 1), (halo_size, halo_size + pad_w, halo_size, halo_size + pad_h))
    win = block_size + 2 * halo_size
    nbh, nbw = (height + pad_h) // block_size, (width + pad_w) // block_size
    rows = x.index_select(2, _window_index(nbh, block_size, win, x.device))
    rows = rows.reshape(-1, channels, nbh, win, x.shape[-1]).transpose(1, 2).reshape(-1, channels, win, x.shape[-1])
    windows = rows.index_select(3, _window_index(nbw, block_size, win, x.device))
    windows = windows.reshape(-1, channels, win, nbw, win).permute(0, 3, 2, 4, 1)  # Bn·nbh, nbw, win, win, C
    return windows.reshape(-1, win * win, channels)


def _query_blocks_low_rank(q: torch.Tensor, block_size: int, query_stride: int) -> torch.Tensor:
    """:func:`_query_blocks` flattened to (B·heads·blocks, bq, bq, C) through tensors of rank ≤ 5, for export."""
    bq = block_size // query_stride
    height, width = q.shape[-2:]
    pad_h = _padded_size(height, bq) - height
    pad_w = _padded_size(width, bq) - width
    q = q.flatten(0, 1)
    if pad_h or pad_w:
        q = F.pad(q, (0, pad_w, 0, pad_h))
    channels, height, width = q.shape[1:]
    rows = q.reshape(-1, channels, height // bq, bq, width).permute(0, 2, 3, 4, 1)  # Bn, nbh, bq, W, C
    blocks = rows.reshape(-1, bq, width // bq, bq, channels).transpose(1, 2)  # Bn·nbh, nbw, bq, bq, C
    return blocks.reshape(-1, bq, bq, channels)


def _merge_blocks_low_rank(out: torch.Tensor, batch: int, heads: int, nbh: int, nbw: int, bq: int,
                           height: int, width: int) -> torch.Tensor:
    """(B·heads·blocks, bq·bq, C) → (B, heads, C, height, width) through tensors of rank ≤ 5, for export."""
    channels = out.shape[-1]
    out = out.reshape(batch * heads * nbh, nbw, bq, bq, channels).transpose(1, 2)  # Bn·nbh, bq, nbw, bq, C
    out = out.reshape(batch * heads, nbh * bq, nbw * bq, channels).permute(0, 3, 1, 2)
    out = out.reshape(batch, heads, channels, nbh * bq, nbw * bq)
    if nbh * bq != height or nbw * bq != width:
        out = out[..., :height, :width]
    return out


def _key_valid(height: int, width: int, block_size: int, halo_size: int, device) -> torch.Tensor | None:
    """(blocks, win·win) bool, False for keys in the block padding; None when the map needs no padding."""
    if height % block_size == 0 and width % block_size == 0:
        return None
    win = block_size + 2 * halo_size

    def valid_1d(size: int) -> torch.Tensor:
        # Window I covers padded positions I·block … I·block + win − 1; the image and its zero halo ring
        # span the first size + 2·halo of them, everything after is block padding.
        starts = torch.arange(0, _padded_size(size, block_size), block_size, device=device)
        return starts[:, None] + torch.arange(win, device=device)[None, :] < size + 2 * halo_size

    rows, cols = valid_1d(height), valid_1d(width)
    return torch.logical_and(rows[:, None, :, None], cols[None, :, None, :]).flatten(2).flatten(0, 1)


def _query_blocks(q: torch.Tensor, block_size: int, query_stride: int) -> torch.Tensor:
    """(B, heads, C, H/s, W/s) → (B, heads, blocks_h, blocks_w, bq, bq, C), zero-padded to whole blocks."""
    bq = block_size // query_stride
    height, width = q.shape[-2:]
    pad_h = _padded_size(height, bq) - height
    pad_w = _padded_size(width, bq) - width
    if pad_h or pad_w:
        q = F.pad(q, (0, pad_w, 0, pad_h))
    batch, heads, channels, height, width = q.shape
    q = q.reshape(batch, heads, channels, height // bq, bq, width // bq, bq)
    return q.permute(0, 1, 3, 5, 4, 6, 2)


def _merge_blocks(out: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """(B, heads, blocks_h, blocks_w, bq, bq, C) → (B, heads, C, height, width), cropping block padding."""
    batch, heads, nbh, nbw, bq, _, channels = out.shape
    out = out.permute(0, 1, 6, 2, 4, 3, 5).reshape(batch, heads, channels, nbh * bq, nbw * bq)
    if nbh * bq != height or nbw * bq != width:
        out = out[..., :height, :width]
    return out


def halo_attention_reference(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    height_rel: torch.Tensor,
    width_rel: torch.Tensor,
    block_size: int,
    halo_size: int,
    query_stride: int = 1,
    scale: float | None = None,
) -> torch.Tensor:
    """Halo attention written out term by term (the readable spec; see the module docstring)."""
    _check_shapes(q, k, v, height_rel, width_rel, block_size, halo_size, query_stride)
    scale = q.shape[2] ** -0.5 if scale is None else scale
    out_height, out_width = q.shape[-2:]
    bq = block_size // query_stride
    win = block_size + 2 * halo_size
    queries = _query_blocks(q, block_size, query_stride)  # B, n, nbh, nbw, y, x, d
    keys = _key_windows(k, block_size, halo_size).unflatten(4, (win, win))  # B, n, nbh, nbw, u, w, d
    values = _key_windows(v, block_size, halo_size)  # B, n, nbh, nbw, u·w, d

    content = torch.einsum("bnijyxd,bnijuwd->bnijyxuw", queries, keys) * scale
    # rel_index[y, u] = u − y + win − 1: the table row for key offset u seen from query row y.
    rel_index = torch.arange(win, device=q.device)[None, :] - torch.arange(bq, device=q.device)[:, None] + win - 1
    rel_h = torch.einsum("bnijyxd,yud->bnijyxu", queries, height_rel[rel_index])
    rel_w = torch.einsum("bnijyxd,xwd->bnijyxw", queries, width_rel[rel_index])
    logits = content + rel_h[..., :, None] + rel_w[..., None, :]
    logits = logits.flatten(-2).flatten(4, 5)  # B, n, nbh, nbw, y·x, u·w

    valid = _key_valid(*k.shape[-2:], block_size, halo_size, q.device)
    if valid is not None:
        valid = valid.unflatten(0, queries.shape[2:4])[:, :, None, :]
        logits = logits.masked_fill(valid.logical_not(), float("-inf"))
    out = logits.softmax(dim=-1) @ values  # B, n, nbh, nbw, y·x, d
    return _merge_blocks(out.unflatten(4, (bq, bq)), out_height, out_width)


halo_attention = Op("halo_attention", halo_attention_reference)


@halo_attention.sample_inputs
def _samples() -> list[Sample]:
    randn = seeded_randn()

    def call(batch, heads, dim_qk, dim_v, height, width, block, halo, stride):
        win = block + 2 * halo
        return (), {
            "q": randn(batch, heads, dim_qk, height // stride, width // stride),
            "k": randn(batch, heads, dim_qk, height, width), "v": randn(batch, heads, dim_v, height, width),
            "height_rel": randn(2 * win - 1, dim_qk) * dim_qk**-0.5,
            "width_rel": randn(2 * win - 1, dim_qk) * dim_qk**-0.5,
            "block_size": block, "halo_size": halo, "query_stride": stride,
        }

    return [
        Sample("batch 1, 7x5 map padded to 4x4 blocks", *call(1, 2, 4, 6, 7, 5, 4, 1, 1)),
        Sample("query stride 2, block-aligned 8x4 map", *call(2, 1, 4, 4, 8, 4, 4, 2, 2)),
    ]


def _relative_logits(queries: torch.Tensor, table: torch.Tensor, win: int, axis: int) -> torch.Tensor:
    """q·table[u − pos + win − 1] for queries (Z, bq, bq, d) → (Z, bq, bq, win); pos: row (axis 1) or column.

    One matmul against the whole table gives every query all 2·win − 1 offsets; the window's ``win`` of them
    start at column win − 1 − pos, a diagonal band that a strided view reads without copying.
    """
    logits = (queries @ table.transpose(0, 1)).contiguous()  # Z, bq, bq, 2·win − 1, a fresh buffer
    z, bq, offsets = logits.shape[0], logits.shape[1], logits.shape[3]
    strides = [bq * bq * offsets, bq * offsets, offsets, 1]
    strides[axis] -= 1  # one column further left per step of pos
    return logits.as_strided((z, bq, bq, win), strides, win - 1)


def _relative_logits_gathered(queries: torch.Tensor, table: torch.Tensor, win: int, axis: int) -> torch.Tensor:
    """:func:`_relative_logits` for export: each position's ``win`` table rows gathered with a constant index,
    then one batched matmul per position (no ``as_strided``, which coremltools cannot convert)."""
    z, bq, _, dim = queries.shape
    index = torch.tensor([u - pos + win - 1 for pos in range(bq) for u in range(win)], device=queries.device)
    rows = table.index_select(0, index).reshape(bq, win, dim)  # position, u, d
    by_position = (queries.transpose(0, 1) if axis == 1 else queries.permute(2, 0, 1, 3)).reshape(bq, -1, dim)
    logits = torch.bmm(by_position, rows.transpose(1, 2)).reshape(bq, z, bq, win)  # position, Z, other, u
    return logits.transpose(0, 1) if axis == 1 else logits.permute(1, 2, 0, 3)


CPU_CHUNK_BYTES = 1 << 20


def _blocks_per_cache_chunk(logit_bytes_per_block: int) -> int:
    """How many blocks' logits fit in ``CPU_CHUNK_BYTES``.

    The logits of small heads are large next to their arithmetic (HaloNet-H1: 8 channels per head, 64 × 196
    logits a block), so on the CPU the add, softmax and matmul passes over them are bound by memory bandwidth.
    Run in chunks of about a megabyte, they stay in the cache between passes: 1.6-2x faster on the 2-core CI
    machine for H1's first stage (8192 blocks). Inference only: under autograd the chunks' many small backward
    ops cost more than the cache saves (HaloNet-H0's training step: 1.9 -> 1.3 img/s).
    """
    return max(1, CPU_CHUNK_BYTES // logit_bytes_per_block)


@halo_attention.register("blocked_bmm", priority=10, portable=True)
def _halo_attention_bmm(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    height_rel: torch.Tensor,
    width_rel: torch.Tensor,
    block_size: int,
    halo_size: int,
    query_stride: int = 1,
    scale: float | None = None,
) -> torch.Tensor:
    """Every block as one batch row of bmm; the content logits accumulate onto the relative ones in place."""
    _check_shapes(q, k, v, height_rel, width_rel, block_size, halo_size, query_stride)
    scale = q.shape[2] ** -0.5 if scale is None else scale
    out_height, out_width = q.shape[-2:]
    bq = block_size // query_stride
    win = block_size + 2 * halo_size
    batch, heads = q.shape[:2]
    nbh, nbw = _padded_size(out_height, bq) // bq, _padded_size(out_width, bq) // bq
    exporting = torch.compiler.is_exporting()
    if exporting:
        queries = _query_blocks_low_rank(q, block_size, query_stride)
        keys = _key_windows_low_rank(k, block_size, halo_size)
        values = _key_windows_low_rank(v, block_size, halo_size)
    else:
        queries = _query_blocks(q, block_size, query_stride).reshape(-1, bq, bq, q.shape[2])  # Z = B·heads·blocks
        keys = _key_windows(k, block_size, halo_size).reshape(queries.shape[0], win * win, k.shape[2])
        values = _key_windows(v, block_size, halo_size).reshape(queries.shape[0], win * win, v.shape[2])

    relative_logits = _relative_logits_gathered if exporting else _relative_logits
    valid = _key_valid(*k.shape[-2:], block_size, halo_size, q.device)
    # One row per block, blocks innermost: row z is block z mod (nbh·nbw).
    masked_keys = None if valid is None else valid.logical_not().repeat(batch * heads, 1)

    def attend(rows: slice) -> torch.Tensor:
        block_queries = queries[rows]
        rel_h = relative_logits(block_queries, height_rel, win, axis=1)
        rel_w = relative_logits(block_queries, width_rel, win, axis=2)
        logits = (rel_h[..., :, None] + rel_w[..., None, :]).reshape(-1, bq * bq, win * win)
        if masked_keys is not None:
            logits.masked_fill_(masked_keys[rows, None, :], float("-inf"))
        # The content term accumulates into the relative-logit buffer: no second logits-sized tensor.
        logits.baddbmm_(block_queries.reshape(-1, bq * bq, q.shape[2]), keys[rows].transpose(1, 2), alpha=scale)
        return torch.bmm(logits.softmax(dim=-1), values[rows])

    total = queries.shape[0]
    chunk = _blocks_per_cache_chunk(bq * bq * win * win * q.element_size())
    if chunk < total and eager_cpu_inference(q, (k, v, height_rel, width_rel)):
        out = torch.cat([attend(slice(start, start + chunk)) for start in range(0, total, chunk)])
    else:
        out = attend(slice(None))
    if exporting:
        return _merge_blocks_low_rank(out, batch, heads, nbh, nbw, bq, out_height, out_width)
    return _merge_blocks(out.reshape(batch, heads, nbh, nbw, bq, bq, v.shape[2]), out_height, out_width)


def _halo_mask_mod(query_width: int, key_width: int, block_size: int, query_block: int, win: int,
                   image_rows: int, image_cols: int):
    """Query (y, x) of a row-major query map ``query_width`` wide sees the keys of its block's window on the key
    map (the image with its zero halo ring, then block padding, ``key_width`` wide), except block padding."""

    def in_window(batch, head, query, key):
        key_row, key_col = key // key_width, key % key_width
        row_offset = key_row - query // query_width // query_block * block_size
        col_offset = key_col - query % query_width // query_block * block_size
        inside = (row_offset >= 0) & (row_offset < win) & (col_offset >= 0) & (col_offset < win)
        return inside & (key_row < image_rows) & (key_col < image_cols)

    return in_window


def _flex_supports(q, k, v, height_rel, width_rel, *args, **kwargs) -> bool:
    # Not on the CPU: inductor's CPU flex template (torch 2.14) reads q, k, v built inside the graph (the padded,
    # tokens-last maps here) with the wrong strides and returns wrong values; eager flex there is correct but
    # unfused. tests/ops/test_flex_backends.py shows the compiled CPU result.
    return q.device.type != "cpu" and flex_is_fused(q, k, v, height_rel, width_rel)


@halo_attention.register("flex", priority=5, devices=FLEX_DEVICES, portable=False, differentiable=False,
                         supports=_flex_supports)
def _halo_attention_flex(q, k, v, height_rel, width_rel, block_size, halo_size, query_stride=1, scale=None):
    """Queries over the whole (block-padded) query map against keys over the whole halo-padded key map, row-major:
    a block mask keeps each query's window, and a score modifier adds the two relative logits, read from
    q·R tables computed once per query (2·win − 1 offsets each) at the query's offset to the key."""
    _check_shapes(q, k, v, height_rel, width_rel, block_size, halo_size, query_stride)
    scale = q.shape[2] ** -0.5 if scale is None else scale
    out_height, out_width = q.shape[-2:]
    batch, heads, dim_qk = q.shape[:3]
    bq = block_size // query_stride
    win = block_size + 2 * halo_size
    height, width = k.shape[-2:]
    pad_h, pad_w = _padded_size(height, block_size) - height, _padded_size(width, block_size) - width
    key_rows, key_cols = height + pad_h + 2 * halo_size, width + pad_w + 2 * halo_size
    query_rows, query_cols = _padded_size(out_height, bq), _padded_size(out_width, bq)

    def tokens_last(t: torch.Tensor, padding: tuple[int, int, int, int]) -> torch.Tensor:
        return F.pad(t, padding).flatten(3).transpose(2, 3).contiguous()  # B, heads, tokens, C

    queries = tokens_last(q, (0, query_cols - out_width, 0, query_rows - out_height))
    ring = (halo_size, halo_size + pad_w, halo_size, halo_size + pad_h)
    keys, values = tokens_last(k, ring), tokens_last(v, ring)
    rel_h = queries @ height_rel.transpose(0, 1)  # B, heads, queries, 2·win − 1
    rel_w = queries @ width_rel.transpose(0, 1)

    def add_relative_logits(score, b, h, query, key):
        row, col = query // query_cols, query % query_cols
        key_row = key // key_cols - row // bq * block_size
        key_col = key % key_cols - col // bq * block_size
        # Table row u − y + win − 1 for window offset u seen from in-block position y; masked keys clamp.
        row_index = (key_row - row % bq + win - 1).clamp(0, 2 * win - 2)
        col_index = (key_col - col % bq + win - 1).clamp(0, 2 * win - 2)
        return score + rel_h[b, h, query, row_index] + rel_w[b, h, query, col_index]

    mask = cached_block_mask(
        _halo_mask_mod, (query_cols, key_cols, block_size, bq, win, height + 2 * halo_size, width + 2 * halo_size),
        query_rows * query_cols, key_rows * key_cols, q.device,
    )
    out = flex_attention(queries, keys, values, score_mod=add_relative_logits, block_mask=mask, scale=scale)
    out = out.transpose(2, 3).reshape(batch, heads, v.shape[2], query_rows, query_cols)
    return out[..., :out_height, :out_width]
