"""Attention over a per-query subset of the keys: each query attends only to the keys its ``key_index`` row names.

Sparsifiner (Wei et al., CVPR 2023, arXiv 2303.13755) predicts, for every query, the top-K keys it may attend to;
the official code then runs dense attention with the other logits set to -inf. That function is the reference
here. The ``gather`` backend computes only the kept pairs: it gathers the K key and value rows of every query and
does O(N·K·d) work instead of O(N²·d).

Shapes: q (B, H, Nq, E), k (B, H, Nk, E), v (B, H, Nk, Ev). The first ``dense_queries`` query rows (a class token)
attend to every key; the other Nq - dense_queries rows attend to the keys named by ``key_index``
(B, H, Nq - dense_queries, K), int64, distinct within a row (what ``topk`` returns), 1 <= K <= Nk. Output
(B, H, Nq, Ev).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from visionzoo.ops._dispatch import Op, Sample, seeded_randn


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
