"""Scaled dot-product attention with an optional additive bias or boolean mask.

Shapes follow ``torch.nn.functional.scaled_dot_product_attention``: q (..., Lq, E), k (..., Lk, E),
v (..., Lk, Ev); ``attn_bias`` broadcasts to (..., Lq, Lk) and is either added to the logits (float)
or selects the keys a query may attend to (bool, True = attend).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from visionzoo.ops._dispatch import Op, Sample, seeded_randn


def sdpa_reference(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    attn_bias: torch.Tensor | None = None,
    scale: float | None = None,
    dropout_p: float = 0.0,
) -> torch.Tensor:
    """softmax(q kᵀ · scale + bias) v, written out step by step (the readable spec)."""
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    logits = (q * scale) @ k.transpose(-2, -1)
    if attn_bias is not None:
        if attn_bias.dtype == torch.bool:
            logits = logits.masked_fill(~attn_bias, float("-inf"))
        else:
            logits = logits + attn_bias
    weights = logits.softmax(dim=-1)
    if dropout_p > 0.0:
        weights = F.dropout(weights, p=dropout_p)
    return weights @ v


scaled_dot_product_attention = Op("scaled_dot_product_attention", sdpa_reference)


@scaled_dot_product_attention.sample_inputs
def _samples() -> list[Sample]:
    randn = seeded_randn()
    mask = randn(2, 1, 5, 7) > 0
    mask[..., 0] = True  # every query keeps a key: no row is all -inf
    return [
        Sample("batch 1, odd lengths", (randn(1, 1, 5, 3), randn(1, 1, 7, 3), randn(1, 1, 7, 2))),
        Sample("float bias broadcast over batch", (randn(2, 3, 5, 4), randn(2, 3, 7, 4), randn(2, 3, 7, 4)),
               {"attn_bias": randn(3, 1, 7), "scale": 0.3}),
        Sample("bool mask", (randn(2, 2, 5, 4), randn(2, 2, 7, 4), randn(2, 2, 7, 3)), {"attn_bias": mask}),
        Sample("rank 3", (randn(3, 6, 4), randn(3, 5, 4), randn(3, 5, 2))),
    ]


def _torch_sdpa_supports(q, k, v, attn_bias=None, scale=None, dropout_p=0.0) -> bool:
    # The fused kernels need matching dtypes; the math fallback inside torch handles the rest.
    return q.dtype == k.dtype == v.dtype and (attn_bias is None or attn_bias.dtype in (torch.bool, q.dtype))


@scaled_dot_product_attention.register("sdpa", priority=10, portable=True, supports=_torch_sdpa_supports)
def _sdpa_torch(q, k, v, attn_bias=None, scale=None, dropout_p=0.0):
    if q.dim() == 4:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_bias, dropout_p=dropout_p, scale=scale)
    # The ONNX exporter (and several fused kernels) take (B, H, L, E) only: view other ranks that way.
    lead = torch.broadcast_shapes(q.shape[:-2], k.shape[:-2], v.shape[:-2])
    q4, k4, v4 = (t.expand(*lead, *t.shape[-2:]).reshape(-1, 1, *t.shape[-2:]) for t in (q, k, v))
    bias4 = None
    if attn_bias is not None:
        bias4 = attn_bias.expand(*lead, q.shape[-2], k.shape[-2]).reshape(-1, 1, q.shape[-2], k.shape[-2])
    out = F.scaled_dot_product_attention(q4, k4, v4, attn_mask=bias4, dropout_p=dropout_p, scale=scale)
    return out.reshape(*lead, *out.shape[-2:])
