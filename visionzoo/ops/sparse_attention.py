"""Attention over a per-query subset of the keys: each query attends only to the keys its ``key_index`` row names.

Sparsifiner (Wei et al., CVPR 2023, arXiv 2303.13755) predicts, for every query, the top-K keys it may attend to;
the official code then runs dense attention with the other logits set to -inf. That function is the reference
here. The ``kept_keys`` backend computes only the kept pairs, O(N·K·d) work instead of O(N²·d), without building
any (N, K, d) tensor: the K logits of each query come from a sampled matrix product (``torch.sparse.sampled_addmm``
on a CSR pattern whose rows are the ``key_index`` rows) and the weighted sum of the K value rows from
``embedding_bag``. The ``gather`` backend is the plain form of the same work (it gathers the K key and value rows of
every query), kept as a portable, memory-bound baseline.

Shapes: q (B, H, Nq, E), k (B, H, Nk, E), v (B, H, Nk, Ev). The first ``dense_queries`` query rows (a class token)
attend to every key; the other Nq - dense_queries rows attend to the keys named by ``key_index``
(B, H, Nq - dense_queries, K), int64, distinct within a row (what ``topk`` returns), 1 <= K <= Nk. Output
(B, H, Nq, Ev).
"""
from __future__ import annotations

import math
import warnings

import torch
import torch.nn.functional as F
from torch.nn.attention.flex_attention import create_block_mask

from visionzoo.ops._cpp import cpu_kernels, cpu_kernels_available, cpu_kernels_can_run
from visionzoo.ops._dispatch import Op, Sample, seeded_randn
from visionzoo.ops._flex import FLEX_DEVICES, flex_attention, flex_is_fused


def _check_arguments(q, k, v, key_index, dense_queries) -> None:
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4 or key_index.dim() != 4:
        raise ValueError(
            "sparse_topk_attention takes q (B, H, Nq, E), k (B, H, Nk, E), v (B, H, Nk, Ev) and key_index "
            f"(B, H, Nq - dense_queries, K); got q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}, "
            f"key_index {tuple(key_index.shape)}"
        )
    sparse_queries = q.shape[2] - dense_queries
    if key_index.shape[:3] != (*q.shape[:2], sparse_queries) or not 1 <= key_index.shape[-1] <= k.shape[2]:
        raise ValueError(
            f"key_index must be (B, H, Nq - dense_queries, K) = {(*q.shape[:2], sparse_queries)} + (K,) with "
            f"1 <= K <= Nk = {k.shape[2]}; got {tuple(key_index.shape)}"
        )


def keep_mask(key_index: torch.Tensor, num_keys: int, dense_queries: int = 0) -> torch.Tensor:
    """The boolean (B, H, Nq, Nk) mask that ``key_index`` describes (True: the query attends to the key)."""
    batch, heads, sparse_queries, kept = key_index.shape
    mask = torch.zeros(batch, heads, sparse_queries, num_keys, device=key_index.device)
    # A float tensor source, not a scalar (the TorchScript ONNX exporter rejects that) nor bool (Core ML does).
    mask = mask.scatter(-1, key_index, torch.ones(key_index.shape, device=key_index.device)) > 0
    everything = torch.ones(batch, heads, dense_queries, num_keys, dtype=torch.bool, device=key_index.device)
    return torch.cat([everything, mask], dim=2)


def sparse_topk_attention_reference(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    key_index: torch.Tensor,
    scale: float | None = None,
    dense_queries: int = 0,
) -> torch.Tensor:
    """Dense attention with every logit outside ``key_index`` set to -inf (the official Sparsifiner semantics)."""
    _check_arguments(q, k, v, key_index, dense_queries)
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    logits = (q * scale) @ k.transpose(-2, -1)
    logits = logits.masked_fill(~keep_mask(key_index, k.shape[2], dense_queries), float("-inf"))
    return logits.softmax(dim=-1) @ v


sparse_topk_attention = Op("sparse_topk_attention", sparse_topk_attention_reference)


@sparse_topk_attention.replaces
def dense_attention(q, k, v, key_index, scale=None, dense_queries=0):
    """What a dense model runs in place of this op: every query attends to every key (torch's fused kernel)."""
    return F.scaled_dot_product_attention(q, k, v, scale=scale)


@sparse_topk_attention.sample_inputs
def _samples() -> list[Sample]:
    randn = seeded_randn(3)
    generator = torch.Generator().manual_seed(4)

    def index(batch, heads, queries, keys, kept):
        return torch.rand(batch, heads, queries, keys, generator=generator).topk(kept, dim=-1).indices

    return [
        Sample("batch 1, one key per query", (randn(1, 2, 5, 4), randn(1, 2, 7, 4), randn(1, 2, 7, 3),
                                              index(1, 2, 5, 7, 1))),
        Sample("class token dense, K of 9", (randn(2, 3, 9, 4), randn(2, 3, 9, 4), randn(2, 3, 9, 4),
                                             index(2, 3, 8, 9, 3)), {"dense_queries": 1, "scale": 0.4}),
        Sample("every key kept", (randn(2, 1, 6, 8), randn(2, 1, 6, 8), randn(2, 1, 6, 5), index(2, 1, 6, 6, 6))),
    ]


def _gather_rows(tensor: torch.Tensor, key_index: torch.Tensor) -> torch.Tensor:
    """(B, H, Nk, E) rows picked by (B, H, Nq, K) indices → (B, H, Nq, K, E), one row lookup per kept key."""
    batch, heads, num_keys, width = tensor.shape
    offsets = torch.arange(batch * heads, device=key_index.device).view(batch, heads, 1, 1) * num_keys
    rows = tensor.reshape(batch * heads * num_keys, width).index_select(0, (key_index + offsets).reshape(-1))
    return rows.view(*key_index.shape, width)


@sparse_topk_attention.register("gather", priority=5, portable=True)
def _sparse_topk_attention_gather(q, k, v, key_index, scale=None, dense_queries=0):
    _check_arguments(q, k, v, key_index, dense_queries)
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    dense_q, sparse_q = q[:, :, :dense_queries], q[:, :, dense_queries:]
    kept_keys = _gather_rows(k, key_index)
    kept_values = _gather_rows(v, key_index)
    logits = ((sparse_q * scale).unsqueeze(-2) @ kept_keys.transpose(-2, -1)).squeeze(-2)
    sparse_out = (logits.softmax(dim=-1).unsqueeze(-2) @ kept_values).squeeze(-2)
    if dense_queries == 0:
        return sparse_out
    dense_out = F.scaled_dot_product_attention(dense_q, k, v, scale=scale)
    return torch.cat([dense_out, sparse_out], dim=2)


@sparse_topk_attention.register("sdpa", priority=10, portable=True)
def _sparse_topk_attention_sdpa(q, k, v, key_index, scale=None, dense_queries=0):
    # Dense work like the reference, in torch's fused kernel: measured the fastest on the CPU (see docs/sparsifiner.md).
    _check_arguments(q, k, v, key_index, dense_queries)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=keep_mask(key_index, k.shape[2], dense_queries),
                                          scale=scale)


def _flat_key_index(key_index: torch.Tensor, num_keys: int) -> torch.Tensor:
    """(B, H, Nq, K) key indices → (B·H·Nq, K) row indices into the (B·H·Nk, E) flattened keys or values."""
    batch, heads, queries, kept = key_index.shape
    offsets = torch.arange(batch * heads, device=key_index.device).view(batch, heads, 1, 1) * num_keys
    return (key_index + offsets).reshape(batch * heads * queries, kept)


def _kept_probabilities(q: torch.Tensor, k: torch.Tensor, flat_index: torch.Tensor, scale: float) -> torch.Tensor:
    """Softmax over each query's K kept logits (B·H·Nq, K): a sampled product q kᵀ at the flattened key indices."""
    rows, kept = flat_index.shape
    row_starts = torch.arange(0, rows * kept + 1, kept, device=q.device)
    # One 2-D product over all (batch, head) groups, their keys side by side: a batched CSR call loops over the
    # groups, one parallel region each. Column order within a row is free for a sampled product (each stored entry
    # is one dot product), so the pattern is the index itself, unsorted; the invariant checks would reject that.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta", category=UserWarning)
        pattern = torch.sparse_csr_tensor(row_starts, flat_index.reshape(-1),
                                          torch.zeros(rows * kept, dtype=q.dtype, device=q.device),
                                          size=(rows, k.shape[0] * k.shape[1] * k.shape[2]), check_invariants=False)
    logits = torch.sparse.sampled_addmm(pattern, q.reshape(rows, -1), k.reshape(-1, k.shape[-1]).t(), beta=0.0,
                                        alpha=scale)
    return logits.values().view(rows, kept).softmax(dim=-1)


@torch.library.custom_op("visionzoo::kept_key_attention", mutates_args=())
def _kept_key_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_index: torch.Tensor,
                        scale: float) -> torch.Tensor:
    """Every query of q (B, H, Nq, E) attends to its K keys of ``key_index`` only: (B, H, Nq, Ev)."""
    flat_index = _flat_key_index(key_index, k.shape[2])
    probabilities = _kept_probabilities(q, k, flat_index, scale)
    out = F.embedding_bag(flat_index, v.reshape(-1, v.shape[-1]), per_sample_weights=probabilities, mode="sum")
    return out.view(*q.shape[:3], v.shape[-1])


@_kept_key_attention.register_fake
def _(q, k, v, key_index, scale):
    return q.new_empty(*q.shape[:3], v.shape[-1])


def _kept_key_attention_setup(ctx, inputs, output) -> None:
    q, k, v, key_index, scale = inputs
    ctx.save_for_backward(q, k, v, key_index)
    ctx.scale = scale


def _kept_key_attention_backward(ctx, grad_out):
    # Training is not what this path is for: the gradients scatter back through dense (Nq, Nk) maps, exact and simple.
    q, k, v, key_index = ctx.saved_tensors
    probabilities = _kept_probabilities(q, k, _flat_key_index(key_index, k.shape[2]), ctx.scale)
    probabilities = probabilities.view(key_index.shape)
    grad_probabilities = (grad_out @ v.transpose(-2, -1)).gather(-1, key_index)
    grad_logits = probabilities * (grad_probabilities - (grad_probabilities * probabilities).sum(-1, keepdim=True))
    dense_probabilities = torch.zeros(*q.shape[:3], k.shape[2], dtype=q.dtype, device=q.device)
    dense_grad_logits = torch.zeros_like(dense_probabilities).scatter(-1, key_index, grad_logits) * ctx.scale
    grad_q = dense_grad_logits @ k
    grad_k = dense_grad_logits.transpose(-2, -1) @ q
    grad_v = dense_probabilities.scatter(-1, key_index, probabilities).transpose(-2, -1) @ grad_out
    return grad_q, grad_k, grad_v, None, None


_kept_key_attention.register_autograd(_kept_key_attention_backward, setup_context=_kept_key_attention_setup)


def _worth_kept_keys(q, k, v, key_index, scale=None, dense_queries=0) -> bool:
    # Measured on the CPU (docs/sparsifiner.md): below ~64 keys the sparse bookkeeping costs more than the dense
    # products it saves, and keeping every key is dense attention, which torch's fused kernel does faster. Not for
    # an export either: no exporter has a translation of the custom op (export traces without gradients, where
    # this backend would otherwise be chosen).
    return k.shape[2] >= 64 and key_index.shape[-1] < k.shape[2] and not torch.compiler.is_exporting()


@sparse_topk_attention.register("kept_keys", priority=20, devices=("cpu",), portable=False, supports=_worth_kept_keys)
def _sparse_topk_attention_kept_keys(q, k, v, key_index, scale=None, dense_queries=0):
    _check_arguments(q, k, v, key_index, dense_queries)
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    sparse_out = _kept_key_attention(q[:, :, dense_queries:].contiguous(), k.contiguous(), v.contiguous(),
                                     key_index.contiguous(), scale)
    if dense_queries == 0:
        return sparse_out
    dense_out = F.scaled_dot_product_attention(q[:, :, :dense_queries], k, v, scale=scale)
    return torch.cat([dense_out, sparse_out], dim=2)


def _flex_supports(q, k, v, key_index, scale=None, dense_queries=0) -> bool:
    return flex_is_fused(q, k, v)


@sparse_topk_attention.register("flex", priority=1, devices=FLEX_DEVICES, portable=False, differentiable=False,
                                supports=_flex_supports)
def _sparse_topk_attention_flex(q, k, v, key_index, scale=None, dense_queries=0):
    # The kept keys as a FlexAttention block mask, built per call (it depends on the input). Measured slower than
    # kept_keys and dense SDPA on the CPU (docs/sparsifiner.md): per-query top-K keys leave almost every 128 × 128
    # block occupied, so there is nothing to skip and the mask costs extra. Lowest priority until a GPU says otherwise.
    _check_arguments(q, k, v, key_index, dense_queries)
    keep = keep_mask(key_index, k.shape[2], dense_queries)

    def kept(batch, head, query, key):
        return keep[batch, head, query, key]

    mask = create_block_mask(kept, q.shape[0], q.shape[1], q.shape[2], k.shape[2], device=q.device)
    return flex_attention(q, k, v, block_mask=mask, scale=scale)


# A normal float32 (and bfloat16) number, so that N of them stay apart and below any nonzero score.
_ZERO_RANK_STEP = 1e-30


def largest_scores_index(scores: torch.Tensor, kept: int) -> torch.Tensor:
    """The ``kept`` keys with the largest scores per row of (..., Nk) ``scores``, in no particular order (no
    gradient flows through the choice).

    A thresholded predictor makes many scores exactly zero, and ``topk`` picks among tied scores in no promised
    order (torch and ONNX Runtime pick differently): zeros are ranked by key index instead (lower first), through a
    ramp far below any score the predictor makes, so every runtime keeps the same keys.
    """
    scores = scores.detach()
    ramp = torch.arange(scores.shape[-1], 0, -1, device=scores.device, dtype=scores.dtype) * _ZERO_RANK_STEP
    ranked = torch.where(scores == 0, ramp - _ZERO_RANK_STEP * (scores.shape[-1] + 1), scores)
    # Unsorted: attention over the kept keys does not depend on their order, and skipping the sort makes the
    # selection about 1.7x faster. Sorted for an export: Core ML (iOS 16) converts only a sorted top-K.
    return ranked.topk(kept, dim=-1, sorted=torch.compiler.is_exporting()).indices


def approximate_attention(coefficients: torch.Tensor, basis: torch.Tensor, coef_topk: int) -> torch.Tensor:
    """Sparsifiner's approximate attention Â = C U (B, H, Nq, Nk) from each row's ``coef_topk`` largest coefficients
    of (B, H, Nq, n) ``coefficients`` and the (n, Nk) ``basis``.

    The same as scattering the kept coefficients into a dense C and multiplying by the basis, but with the choice
    and the rounding pinned down, so that every backend keeps the same keys: tied coefficients (a near-uniform
    softmax ties often in float32) are taken by lower index, and the terms are summed largest coefficient first,
    a multiply then an add each.
    """
    if torch.compiler.is_exporting():
        # Export targets have no stable sort (ExecuTorch no sort at all) and their top-K may return the picks in
        # another order: an export sums through the dense product, whose result does not depend on that order.
        top = coefficients.topk(coef_topk, dim=-1)
        return torch.zeros_like(coefficients).scatter(-1, top.indices, top.values) @ basis
    values, indices = coefficients.sort(dim=-1, descending=True, stable=True)
    approx = values[..., :1] * basis[indices[..., 0]]
    for term in range(1, coef_topk):
        approx = approx + values[..., term:term + 1] * basis[indices[..., term]]
    return approx


def _kept_count(keep_rate: float, num_keys: int) -> int:
    return max(1, math.ceil(keep_rate * num_keys))


def _check_predictor_arguments(coefficients, basis, coef_topk, keep_rate) -> None:
    if coefficients.dim() != 4 or basis.dim() != 2 or coefficients.shape[-1] != basis.shape[0]:
        raise ValueError(f"predicted_top_keys takes coefficients (B, H, Nq, n) and a basis (n, Nk); got coefficients "
                         f"{tuple(coefficients.shape)} and basis {tuple(basis.shape)}")
    if not 1 <= coef_topk <= basis.shape[0] or not 0.0 < keep_rate <= 1.0:
        raise ValueError(f"predicted_top_keys needs 1 <= coef_topk <= n = {basis.shape[0]} and 0 < keep_rate <= 1; "
                         f"got coef_topk {coef_topk}, keep_rate {keep_rate}")


def predicted_top_keys_reference(coefficients: torch.Tensor, basis: torch.Tensor, coef_topk: int,
                                 keep_rate: float) -> torch.Tensor:
    """Sparsifiner's kept keys (B, H, Nq, K), K = ⌈keep_rate · Nk⌉, int64, ascending (in an export: in no particular
    order): the K largest entries of each row of Â (:func:`approximate_attention`), tied zero scores by lower key
    index."""
    _check_predictor_arguments(coefficients, basis, coef_topk, keep_rate)
    index = largest_scores_index(approximate_attention(coefficients, basis, coef_topk),
                                 _kept_count(keep_rate, basis.shape[1]))
    # Ascending, as the C++ backend writes them; an export skips the sort (ExecuTorch has none, and attention over
    # the kept keys does not depend on their order).
    return index if torch.compiler.is_exporting() else index.sort(dim=-1).values


predicted_top_keys = Op("predicted_top_keys", predicted_top_keys_reference)


@predicted_top_keys.sample_inputs
def _predictor_samples() -> list[Sample]:
    randn = seeded_randn(5)

    def basis(reduced, keys):
        table = randn(reduced, keys).abs()
        return table.masked_fill(table <= 0.8, 0.0)  # thresholded like the model's: many exact zeros

    return [
        Sample("batch 1, one key kept", (randn(1, 2, 5, 7).softmax(-1), basis(7, 9), 3, 0.01)),
        Sample("keep a quarter of 37 keys", (randn(2, 3, 36, 6).softmax(-1), basis(6, 37), 2, 0.25)),
        Sample("every key kept", (randn(1, 1, 4, 5).softmax(-1), basis(5, 11), 5, 1.0)),
    ]


@torch.library.custom_op("visionzoo::cpp_predicted_top_keys", mutates_args=())
def _cpp_predicted_top_keys(coefficients: torch.Tensor, basis: torch.Tensor, coef_topk: int,
                            kept: int) -> torch.Tensor:
    return cpu_kernels().predicted_top_keys(coefficients, basis, coef_topk, kept)


@_cpp_predicted_top_keys.register_fake
def _(coefficients, basis, coef_topk, kept):
    return coefficients.new_empty(*coefficients.shape[:3], kept, dtype=torch.int64)


def _cpp_predictor_supports(coefficients, basis, coef_topk, keep_rate) -> bool:
    return cpu_kernels_can_run(coefficients.detach(), basis.detach())


@predicted_top_keys.register("cpp", priority=10, devices=("cpu",), portable=False, differentiable=False,
                             supports=_cpp_predictor_supports)
def _predicted_top_keys_cpp(coefficients, basis, coef_topk, keep_rate):
    # One pass per row in C++ (visionzoo/ops/cpu/sparsifiner_kernels.cpp): the k_b basis rows summed into a row
    # buffer, its K-th largest score found by counting passes, the K indices written; no N x N tensor, no topk.
    _check_predictor_arguments(coefficients, basis, coef_topk, keep_rate)
    if not cpu_kernels_available():
        return predicted_top_keys_reference(coefficients, basis, coef_topk, keep_rate)
    return _cpp_predicted_top_keys(coefficients.detach(), basis.detach(), coef_topk,
                                   _kept_count(keep_rate, basis.shape[1]))


@torch.library.custom_op("visionzoo::cpp_kept_key_attention", mutates_args=())
def _cpp_kept_key_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_index: torch.Tensor,
                            scale: float, dense_queries: int) -> torch.Tensor:
    return cpu_kernels().kept_key_attention(q, k, v, key_index, scale, dense_queries)


@_cpp_kept_key_attention.register_fake
def _(q, k, v, key_index, scale, dense_queries):
    # The kernel writes (B, Nq, H, Ev) storage and returns it as (B, H, Nq, Ev).
    return q.new_empty(q.shape[0], q.shape[2], q.shape[1], v.shape[-1]).permute(0, 2, 1, 3)


def _cpp_attention_supports(q, k, v, key_index, scale=None, dense_queries=0) -> bool:
    return cpu_kernels_can_run(q, k, v)


@sparse_topk_attention.register("kept_keys_cpp", priority=30, devices=("cpu",), portable=False,
                                differentiable=False, supports=_cpp_attention_supports)
def _sparse_topk_attention_kept_keys_cpp(q, k, v, key_index, scale=None, dense_queries=0):
    # Inference only (training keeps kept_keys and its exact backward): per query row, the K kept keys' logits,
    # their softmax and the weighted sum of their values in one C++ pass; dense rows attend to every key.
    _check_arguments(q, k, v, key_index, dense_queries)
    if not cpu_kernels_available():
        return sparse_topk_attention_reference(q, k, v, key_index, scale, dense_queries)
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    return _cpp_kept_key_attention(q, k, v, key_index, scale, dense_queries)
