"""2-D neighbourhood attention with NATTEN's semantics: NAT (Hassani et al., CVPR 2023, arXiv 2204.07143) and
its dilated form DiNAT (Hassani & Shi, arXiv 2209.15001).

Every query (i, j) of an H×W map attends to a k×k set of keys: per axis, k keys spaced by the dilation δ, taken
from the query's dilation group (positions congruent to the query modulo δ) and centred on the query except near a
border, where the window is shifted inward so that it never leaves the map (no padding, no masking). Dilated
attention is therefore ordinary neighbourhood attention run on each of the δ×δ sub-grids ``x[g::δ, h::δ]``.
The optional relative position bias ``rpb`` (heads, 2k − 1, 2k − 1) is indexed by *key minus query* counted in
dilated steps, plus k − 1, per axis; near a border that is not the offset from the window centre.

Layout: q, k, v are (B, heads, H, W, head_dim); the attention logits and weights of the two halves are
(B, heads, H, W, k²) with the neighbours flattened row-major (row offset · k + column offset), which is the layout of
NATTEN's ``na2d_qk`` / ``na2d_av``. Every axis must hold at least k·δ positions (NATTEN ≥ 0.17 refuses smaller maps
too; NAT's layers pad their input up to that size before projecting, see :mod:`visionzoo.models.nat`).

* :func:`neighborhood_qk` — q·k for every neighbour, plus the bias (NATTEN ``na2d_qk``; q not scaled here).
* :func:`neighborhood_av` — the weighted sum of the neighbours' values (``na2d_av``; OverLoCK feeds per-pixel
  dynamic kernels through it).
* :func:`neighborhood_attention` — softmax(q·k · scale + bias) applied to v, the two halves in one op.
"""
from __future__ import annotations

import functools

import torch

from visionzoo.ops._dispatch import Op, Sample, seeded_randn, trace_leaf


def _check_window(height: int, width: int, kernel_size: int, dilation: int) -> None:
    if not isinstance(kernel_size, int) or kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(f"neighbourhood attention needs an odd integer kernel_size >= 1, got {kernel_size!r}")
    if not isinstance(dilation, int) or dilation < 1:
        raise ValueError(f"neighbourhood attention needs an integer dilation >= 1, got {dilation!r}")
    span = kernel_size * dilation
    if height < span or width < span:
        raise ValueError(
            f"a {height}x{width} map is smaller than kernel_size * dilation = {kernel_size}*{dilation} = {span} "
            f"on some axis; pad the map to at least {span}x{span} first (NAT pads its normed input, "
            f"see visionzoo.models.nat)"
        )


def _check_qk(q: torch.Tensor, k: torch.Tensor, kernel_size: int, dilation: int, rpb: torch.Tensor | None) -> None:
    if q.dim() != 5 or k.shape != q.shape:
        raise ValueError(
            f"neighbourhood attention expects q and k of one shape (B, heads, H, W, head_dim), "
            f"got {tuple(q.shape)} and {tuple(k.shape)}"
        )
    _check_window(q.shape[2], q.shape[3], kernel_size, dilation)
    table = 2 * kernel_size - 1
    if rpb is not None and tuple(rpb.shape) != (q.shape[1], table, table):
        raise ValueError(
            f"rpb must be (heads, 2k-1, 2k-1) = ({q.shape[1]}, {table}, {table}) for kernel_size {kernel_size}, "
            f"got {tuple(rpb.shape)}"
        )


def _check_av(attn: torch.Tensor, v: torch.Tensor, kernel_size: int, dilation: int) -> None:
    if attn.dim() != 5 or v.dim() != 5 or attn.shape[:4] != v.shape[:4] or attn.shape[4] != kernel_size**2:
        raise ValueError(
            f"neighborhood_av expects attention (B, heads, H, W, k*k) and values (B, heads, H, W, head_dim) with "
            f"k = {kernel_size}, got {tuple(attn.shape)} and {tuple(v.shape)}"
        )
    _check_window(v.shape[2], v.shape[3], kernel_size, dilation)


@trace_leaf
def neighbor_indices(
    length: int, kernel_size: int, dilation: int = 1, device=None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-axis neighbour tables of one axis of ``length`` positions: ``(neighbours, bias_rows)``, each (L, k) int64.

    ``neighbours[i, m]`` is the position of query i's m-th key and ``bias_rows[i, m]`` its row in the
    (2k − 1)-row bias table: key minus query in dilated steps, plus k − 1.
    """
    position = torch.arange(length, device=device)
    group = position % dilation
    in_group = position // dilation
    group_length = (length - group + dilation - 1) // dilation
    start = torch.minimum((in_group - kernel_size // 2).clamp(min=0), group_length - kernel_size)
    window = start[:, None] + torch.arange(kernel_size, device=device)
    return group[:, None] + window * dilation, window - in_group[:, None] + (kernel_size - 1)


def _neighbor_tables(height: int, width: int, kernel_size: int, dilation: int, device):
    """(H, W, k²) flat token index of every neighbour and (H, W, k²) flat index into a (2k−1)² bias table."""
    rows, bias_rows = neighbor_indices(height, kernel_size, dilation, device)
    cols, bias_cols = neighbor_indices(width, kernel_size, dilation, device)
    tokens = rows[:, None, :, None] * width + cols[None, :, None, :]
    bias = bias_rows[:, None, :, None] * (2 * kernel_size - 1) + bias_cols[None, :, None, :]
    flat = (height, width, kernel_size * kernel_size)
    return tokens.reshape(flat), bias.reshape(flat)


def _gather_neighbors(x: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """(B, heads, H, W, d) → (B, heads, H, W, k², d): each position's neighbours, by flat token index."""
    batch, heads, height, width, dim = x.shape
    return x.reshape(batch, heads, height * width, dim)[:, :, tokens]


def _bias(rpb: torch.Tensor, bias_index: torch.Tensor) -> torch.Tensor:
    """(heads, 2k−1, 2k−1) table → (heads, H, W, k²) bias of every query's neighbours."""
    return rpb.flatten(1)[:, bias_index]


def neighborhood_qk_reference(
    q: torch.Tensor, k: torch.Tensor, kernel_size: int, dilation: int = 1, rpb: torch.Tensor | None = None
) -> torch.Tensor:
    """Logits q·k (plus ``rpb``) of every query against its k×k neighbours: (B, heads, H, W, k²). q is not scaled."""
    _check_qk(q, k, kernel_size, dilation, rpb)
    tokens, bias_index = _neighbor_tables(q.shape[2], q.shape[3], kernel_size, dilation, q.device)
    logits = torch.einsum("bhijd,bhijnd->bhijn", q, _gather_neighbors(k, tokens))
    return logits if rpb is None else logits + _bias(rpb, bias_index).to(logits.dtype)


def neighborhood_av_reference(
    attn: torch.Tensor, v: torch.Tensor, kernel_size: int, dilation: int = 1
) -> torch.Tensor:
    """Σ over the k×k neighbours of attn[..., n] · v[neighbour n]: (B, heads, H, W, k²) and (B, heads, H, W, d)
    → (B, heads, H, W, d)."""
    _check_av(attn, v, kernel_size, dilation)
    tokens, _ = _neighbor_tables(v.shape[2], v.shape[3], kernel_size, dilation, v.device)
    return torch.einsum("bhijn,bhijnd->bhijd", attn, _gather_neighbors(v, tokens))


def neighborhood_attention_reference(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    kernel_size: int,
    dilation: int = 1,
    rpb: torch.Tensor | None = None,
    scale: float | None = None,
) -> torch.Tensor:
    """softmax(q·k · scale + rpb) over each query's k×k neighbours, applied to their values: (B, heads, H, W, d)."""
    if v.shape[:4] != q.shape[:4]:
        raise ValueError(f"v must share q's (B, heads, H, W), got q {tuple(q.shape)} and v {tuple(v.shape)}")
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    logits = neighborhood_qk_reference(q * scale, k, kernel_size, dilation, rpb)
    return neighborhood_av_reference(logits.softmax(dim=-1), v, kernel_size, dilation)


neighborhood_qk = Op("neighborhood_qk", neighborhood_qk_reference)
neighborhood_av = Op("neighborhood_av", neighborhood_av_reference)
neighborhood_attention = Op("neighborhood_attention", neighborhood_attention_reference)


# Shapes cover odd maps, maps just larger than the window (k·δ + 1), dilations 2 and 3, batch 1 and one map
# whose length is not a multiple of the dilation (groups of unequal length).
_SAMPLE_SHAPES = [
    ("batch 1, 9x11 map, k=3, dilation 2", 1, 2, 9, 11, 4, 3, 2),
    ("8x7 map just above k=7, dilation 1", 2, 1, 8, 7, 3, 7, 1),
    ("13x10 map, k=3, dilation 3", 1, 3, 13, 10, 5, 3, 3),
]


def _shaped_samples(seed: int, make_args) -> list[Sample]:
    """One sample per shape of ``_SAMPLE_SHAPES``; ``make_args(randn, map_shape, kernel, dilation)`` builds its args."""
    randn = seeded_randn(seed)
    return [Sample(label, make_args(randn, (batch, heads, height, width, dim), kernel, dilation))
            for label, batch, heads, height, width, dim, kernel, dilation in _SAMPLE_SHAPES]


def _bias_table(randn, heads: int, kernel: int) -> torch.Tensor:
    return randn(heads, 2 * kernel - 1, 2 * kernel - 1)


@neighborhood_attention.sample_inputs
def _attention_samples() -> list[Sample]:
    samples = _shaped_samples(0, lambda randn, shape, kernel, dilation: (
        randn(shape), randn(shape), randn(shape), kernel, dilation, _bias_table(randn, shape[1], kernel)))
    randn = seeded_randn(3)
    q, k, v = (randn(1, 2, 5, 5, 3) for _ in range(3))
    return [*samples, Sample("no bias, given scale", (q, k, v, 3, 1), {"scale": 0.7})]


@neighborhood_qk.sample_inputs
def _qk_samples() -> list[Sample]:
    return _shaped_samples(1, lambda randn, shape, kernel, dilation: (
        randn(shape), randn(shape), kernel, dilation, _bias_table(randn, shape[1], kernel)))


@neighborhood_av.sample_inputs
def _av_samples() -> list[Sample]:
    return _shaped_samples(2, lambda randn, shape, kernel, dilation: (
        randn(*shape[:4], kernel * kernel), randn(shape), kernel, dilation))


@functools.lru_cache(maxsize=64)
def _flex_block_mask(height: int, width: int, kernel_size: int, dilation: int, device: str):
    from torch.nn.attention.flex_attention import create_block_mask

    mask_mod = _flex_mask_mod(height, width, kernel_size, dilation)
    tokens = height * width
    return create_block_mask(mask_mod, B=None, H=None, Q_LEN=tokens, KV_LEN=tokens, device=device)


def _axis_window_start(position, length: int, kernel_size: int, dilation: int):
    """Window start, in group steps, of the query at ``position`` (the rule of :func:`neighbor_indices`)."""
    group = position % dilation
    group_length = (length - group + dilation - 1) // dilation
    start = torch.clamp(position // dilation - kernel_size // 2, min=0)
    return torch.minimum(start, group_length - kernel_size)


def _flex_mask_mod(height: int, width: int, kernel_size: int, dilation: int):
    def axis_keeps(query, key, length):
        start = _axis_window_start(query, length, kernel_size, dilation)
        step = key // dilation
        same_group = (query % dilation) == (key % dilation)
        return same_group & (step >= start) & (step < start + kernel_size)

    def mask_mod(batch, head, q_index, kv_index):
        return axis_keeps(q_index // width, kv_index // width, height) & axis_keeps(
            q_index % width, kv_index % width, width
        )

    return mask_mod


# CUDA only: compiled on the CPU (torch 2.14, 1 thread, 8×2×56×56×32, k = 7, NAT-Tiny's first stage) flex took
# 645 ms against 47 ms for the compiled tiled_sdpa path (its 128-token blocks cover ~13× the keys a window needs, a
# tile 3.4×), and inductor's CPU template refuses q/k/v that are views of 5-D buffers, as this op's inputs are.
@neighborhood_attention.register(
    "flex", priority=10, devices=("cuda",), portable=False,
    supports=lambda q, k, v, *args, **kwargs: q.shape[-1] >= 16 and q.shape == v.shape,
)
def _neighborhood_attention_flex(q, k, v, kernel_size, dilation=1, rpb=None, scale=None):
    # FlexAttention skips the blocks of the flattened H·W × H·W score matrix that the mask empties, so the cost
    # follows the k² neighbours rather than the whole map; the bias is a score_mod read from the captured table.
    from torch.nn.attention.flex_attention import flex_attention

    _check_qk(q, k, kernel_size, dilation, rpb)
    batch, heads, height, width, dim = q.shape
    block_mask = _flex_block_mask(height, width, kernel_size, dilation, str(q.device))
    score_mod = None
    if rpb is not None:
        last = 2 * kernel_size - 2

        def score_mod(score, b, h, q_index, kv_index):
            row = (kv_index // width) // dilation - (q_index // width) // dilation + (kernel_size - 1)
            col = (kv_index % width) // dilation - (q_index % width) // dilation + (kernel_size - 1)
            return score + rpb[h, row.clamp(0, last), col.clamp(0, last)].to(score.dtype)

    out = flex_attention(q.reshape(batch, heads, height * width, dim), k.reshape(batch, heads, height * width, dim),
                         v.reshape(batch, heads, height * width, dim), score_mod=score_mod, block_mask=block_mask,
                         scale=scale)
    return out.reshape(batch, heads, height, width, dim)


_TILE = 7  # queries per tile and axis; with k = 7 a tile's keys span 13 positions, (13/7)² ≈ 3.4× the k² needed


@functools.lru_cache(maxsize=256)
def _axis_tiles(length: int, kernel_size: int, dilation: int) -> tuple[int, list[int], list[int], list[list[int]],
                                                                     list[int]]:
    """One axis cut into tiles of up to ``_TILE`` queries from one dilation group each, with the keys they need.

    Returns the tile size t, ``queries`` (tiles · t) and ``keys`` (tiles · span) positions on the axis, ``bias_rows``
    (tiles · t rows of span entries: the row of the (2k−1)-row bias table, or 2k − 1 where the key is outside
    the query's window), and ``outputs``: for each position, its slot in ``queries``. A short group repeats its
    last query (and key) to fill the tile; the repeats are masked or dropped.
    """
    group_lengths = [(length - group + dilation - 1) // dilation for group in range(dilation)]
    tile = min(_TILE, max(group_lengths))
    span = min(tile + kernel_size - 1, max(group_lengths))
    queries, keys, bias_rows, outputs = [], [], [], [0] * length
    for group, group_length in enumerate(group_lengths):
        for first in range(0, group_length, tile):
            steps = [min(first + slot, group_length - 1) for slot in range(tile)]
            starts = [min(max(step - kernel_size // 2, 0), group_length - kernel_size) for step in steps]
            region = max(0, min(starts[0], group_length - span))
            for slot, (step, start) in enumerate(zip(steps, starts)):
                if first + slot < group_length:
                    outputs[group + step * dilation] = len(queries)
                queries.append(group + step * dilation)
                bias_rows.append([
                    key - step + kernel_size - 1 if start <= key < start + kernel_size else 2 * kernel_size - 1
                    for key in range(region, region + span)
                ])
            keys.extend(group + min(key, group_length - 1) * dilation for key in range(region, region + span))
    return tile, queries, keys, bias_rows, outputs


@functools.lru_cache(maxsize=64)
def _tile_bias_index(height: int, width: int, kernel_size: int, dilation: int) -> torch.Tensor:
    """(tiles, t_h·t_w, span_h·span_w) int64 CPU index into a (2k)×(2k) bias table flattened (row and column
    2k − 1 hold −∞): each tile's queries against the keys its windows cover. Built once per shape outside any
    graph in eager mode and under export, so that its rank-6 arithmetic never reaches an exported program."""
    tile_h, _, _, row_bias, _ = _axis_tiles.__wrapped__(height, kernel_size, dilation)
    tile_w, _, _, col_bias, _ = _axis_tiles.__wrapped__(width, kernel_size, dilation)
    rows = torch.tensor(row_bias).reshape(-1, tile_h, 1, len(row_bias[0]), 1)
    cols = torch.tensor(col_bias).reshape(-1, 1, tile_w, 1, len(col_bias[0]))
    index = rows[:, None] * (2 * kernel_size) + cols[None]  # (tiles_h, tiles_w, t_h, t_w, span_h, span_w)
    return index.reshape(rows.shape[0] * cols.shape[0], tile_h * tile_w, -1)


@functools.lru_cache(maxsize=64)
def _tile_neighbor_slots(height: int, width: int, kernel_size: int, dilation: int) -> torch.Tensor:
    """(tiles, t_h·t_w, k²) int64 CPU index: where each tile query's k² neighbours (in the reference's row-major
    order) sit among the span_h·span_w keys of its tile."""
    outside = 2 * kernel_size - 1

    def axis_slots(length):
        tile, _, _, bias_rows, _ = _axis_tiles.__wrapped__(length, kernel_size, dilation)
        slots = torch.tensor([[slot for slot, row in enumerate(keys) if row < outside] for keys in bias_rows])
        return tile, len(bias_rows[0]), slots

    tile_h, _, row_slots = axis_slots(height)
    tile_w, span_w, col_slots = axis_slots(width)
    rows = row_slots.reshape(-1, tile_h, 1, kernel_size, 1)
    cols = col_slots.reshape(-1, 1, tile_w, 1, kernel_size)
    index = rows[:, None] * span_w + cols[None]  # (tiles_h, tiles_w, t_h, t_w, k, k)
    return index.reshape(rows.shape[0] * cols.shape[0], tile_h * tile_w, kernel_size * kernel_size)


class _Tiling:
    """An H×W map cut into tiles of t_h×t_w queries from one dilation group, each with the span_h×span_w keys its
    windows cover (:func:`_axis_tiles` per axis), and the moves between the map and the tiles."""

    def __init__(self, height: int, width: int, kernel_size: int, dilation: int, device: torch.device):
        # Dynamo traces the table arithmetic once per shape itself (it would ignore the caches); eager calls and
        # export (which runs this Python as is) read the caches, so the tables enter an exported program as
        # constants.
        compiling = torch.compiler.is_dynamo_compiling()
        tables = _axis_tiles.__wrapped__ if compiling else _axis_tiles
        self.tile_h, self.row_queries, self.row_keys, _, self.row_outputs = tables(height, kernel_size, dilation)
        self.tile_w, self.col_queries, self.col_keys, _, self.col_outputs = tables(width, kernel_size, dilation)
        self.tiles_h = len(self.row_queries) // self.tile_h
        self.tiles_w = len(self.col_queries) // self.tile_w
        self.span_h, self.span_w = len(self.row_keys) // self.tiles_h, len(self.col_keys) // self.tiles_w
        self.height, self.width, self.kernel_size, self.dilation = height, width, kernel_size, dilation
        self.device, self.compiling = device, compiling

    @property
    def count(self) -> int:
        return self.tiles_h * self.tiles_w

    def cached(self, table):
        """``table(H, W, k, δ)`` from its cache (or built anew under dynamo), on the tiling's device."""
        if self.compiling:
            return table.__wrapped__(self.height, self.width, self.kernel_size, self.dilation).to(self.device)
        with torch.inference_mode(False):  # a table cached in inference mode could not be saved for backward later
            return table(self.height, self.width, self.kernel_size, self.dilation).to(self.device)

    def _split(self, x, row_index, col_index, size_h, size_w):
        # (B, heads, H, W, d) → (tiles · heads, B, size_h · size_w, d), heads before batch to meet a per-head mask.
        batch, heads, height, width, dim = x.shape
        x = x.transpose(0, 1).reshape(heads * batch, height, width, dim)
        x = self._take(self._take(x, 1, row_index), 2, col_index)
        x = x.reshape(heads * batch, self.tiles_h, size_h, self.tiles_w, size_w * dim).permute(1, 3, 0, 2, 4)
        return x.reshape(self.count * heads, batch, size_h * size_w, dim)

    def queries(self, x: torch.Tensor) -> torch.Tensor:
        """Per-query tensor (B, heads, H, W, d) → (tiles · heads, B, t_h · t_w, d)."""
        return self._split(x, self.row_queries, self.col_queries, self.tile_h, self.tile_w)

    def keys(self, x: torch.Tensor) -> torch.Tensor:
        """Per-key tensor (B, heads, H, W, d) → (tiles · heads, B, span_h · span_w, d)."""
        return self._split(x, self.row_keys, self.col_keys, self.span_h, self.span_w)

    def merge(self, out: torch.Tensor, batch: int, heads: int) -> torch.Tensor:
        """Inverse of :meth:`queries`: (tiles · heads, B, t_h · t_w, d) → (B, heads, H, W, d)."""
        dim = out.shape[-1]
        out = out.reshape(self.tiles_h, self.tiles_w, heads * batch, self.tile_h, self.tile_w * dim)
        out = out.permute(2, 0, 3, 1, 4).reshape(heads, batch, self.tiles_h * self.tile_h,
                                                 self.tiles_w * self.tile_w, dim)
        return self._take(self._take(out, 2, self.row_outputs), 3, self.col_outputs).transpose(0, 1)

    def _take(self, x: torch.Tensor, dim: int, positions: list[int]) -> torch.Tensor:
        # Tiles that cut an axis evenly, undilated, take its positions in order: no gather (nor copy) needed.
        if positions == list(range(x.shape[dim])):
            return x
        return x.index_select(dim, torch.tensor(positions, device=self.device))

    def neighbor_slots(self, heads: int, batch: int) -> torch.Tensor:
        """(tiles · heads, B, t_h · t_w, k²): each tile query's neighbours among its tile's keys."""
        slots = self.cached(_tile_neighbor_slots)
        return slots[:, None, None].expand(-1, heads, batch, -1, -1).reshape(self.count * heads, batch,
                                                                             *slots.shape[1:])


def _tiled_supports(q, k, v, kernel_size, dilation=1, rpb=None, scale=None) -> bool:
    return q.device.type == "cpu" and q.shape == v.shape


@neighborhood_attention.register("tiled_sdpa", priority=10, devices=("cpu",), portable=True,
                                 supports=_tiled_supports)
def _neighborhood_attention_tiled(q, k, v, kernel_size, dilation=1, rpb=None, scale=None):
    # The gather reference is a matrix-vector product per query over k² copied keys; here each tile of t×t queries
    # from one dilation group attends densely (one SDPA call, fused softmax) to the (t+k−1)² keys its windows
    # cover, and an additive mask carries both the bias and the −∞ of keys outside a query's window. Tensors stay
    # at rank ≤ 5 (XNNPACK takes ≤ 6, Core ML ≤ 5).
    _check_qk(q, k, kernel_size, dilation, rpb)
    batch, heads, height, width, dim = q.shape
    tiling = _Tiling(height, width, kernel_size, dilation, q.device)
    table = torch.zeros(heads, 2 * kernel_size - 1, 2 * kernel_size - 1, dtype=q.dtype, device=q.device)
    if rpb is not None:
        table = rpb.to(q.dtype)
    table = torch.nn.functional.pad(table, (0, 1, 0, 1), value=float("-inf")).flatten(1)
    mask = table[:, tiling.cached(_tile_bias_index)].transpose(0, 1)
    mask = mask.reshape(tiling.count * heads, 1, tiling.tile_h * tiling.tile_w, tiling.span_h * tiling.span_w)
    out = torch.nn.functional.scaled_dot_product_attention(
        tiling.queries(q), tiling.keys(k), tiling.keys(v), attn_mask=mask, scale=scale,
    )
    if torch.compiler.is_exporting():
        # torch.export would bake in a view that holds only for the fused kernel's output strides; ExecuTorch
        # decomposes SDPA into math ops whose output is laid out otherwise, so the program copies explicitly.
        out = out.clone(memory_format=torch.contiguous_format)
    return tiling.merge(out, batch, heads)


_cached_neighbor_tables = functools.lru_cache(maxsize=64)(_neighbor_tables)


def _bias_index(height: int, width: int, kernel_size: int, dilation: int, device) -> torch.Tensor:
    """The reference's (H, W, k²) bias index, cached per shape outside compiled code."""
    if torch.compiler.is_dynamo_compiling():
        return _neighbor_tables(height, width, kernel_size, dilation, device)[1]
    with torch.inference_mode(False):  # a table cached in inference mode could not be saved for backward later
        return _cached_neighbor_tables(height, width, kernel_size, dilation, "cpu")[1].to(device)


def _cpu_supports(*args, **kwargs) -> bool:
    return args[0].device.type == "cpu"


@neighborhood_qk.register("tiled_bmm", priority=10, devices=("cpu",), portable=True, supports=_cpu_supports)
def _neighborhood_qk_tiled(q, k, kernel_size, dilation=1, rpb=None):
    # One small matmul per tile (t² queries against the (t+k−1)² keys their windows cover) instead of a
    # matrix-vector product per query over k² gathered keys; each query then picks its k² logits from the tile's.
    _check_qk(q, k, kernel_size, dilation, rpb)
    batch, heads, height, width, _ = q.shape
    tiling = _Tiling(height, width, kernel_size, dilation, q.device)
    scores = tiling.queries(q) @ tiling.keys(k).transpose(-1, -2)
    logits = tiling.merge(scores.gather(-1, tiling.neighbor_slots(heads, batch)), batch, heads)
    if rpb is None:
        return logits
    return logits + _bias(rpb, _bias_index(height, width, kernel_size, dilation, q.device)).to(logits.dtype)


@neighborhood_av.register("tiled_bmm", priority=10, devices=("cpu",), portable=True, supports=_cpu_supports)
def _neighborhood_av_tiled(attn, v, kernel_size, dilation=1):
    # The weights of a tile's queries are scattered into a dense t² × (t+k−1)² matrix (zeros outside each window)
    # and multiplied with the tile's keys' values: one small matmul per tile instead of a gather of k² values per
    # query.
    _check_av(attn, v, kernel_size, dilation)
    batch, heads, height, width, _ = v.shape
    tiling = _Tiling(height, width, kernel_size, dilation, v.device)
    weights = tiling.queries(attn)
    dense = weights.new_zeros(*weights.shape[:-1], tiling.span_h * tiling.span_w)
    dense = dense.scatter(-1, tiling.neighbor_slots(heads, batch), weights)
    return tiling.merge(dense @ tiling.keys(v), batch, heads)
