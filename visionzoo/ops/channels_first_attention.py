"""Attention on channels-first tokens, the layout of conv feature maps flattened to (B, C, N).

q (..., E, Lq), k (..., E, Lk), v (..., Ev, Lk) → (..., Ev, Lq): out = v · softmax(qᵀ k · scale)ᵀ, the softmax
over keys. Conv networks with attention (SHViT's single-head attention) produce this layout; computing in it
avoids transposing the maps to tokens-last and back.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from visionzoo.ops._dispatch import Op, Sample, seeded_randn


def channels_first_attention_reference(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float | None = None
) -> torch.Tensor:
    """v · softmax(qᵀ k · scale)ᵀ as two batched matmuls (the readable spec)."""
    scale = q.shape[-2] ** -0.5 if scale is None else scale
    weights = ((q.transpose(-2, -1) * scale) @ k).softmax(dim=-1)
    return v @ weights.transpose(-2, -1)


channels_first_attention = Op("channels_first_attention", channels_first_attention_reference)


@channels_first_attention.sample_inputs
def _samples() -> list[Sample]:
    randn = seeded_randn()
    return [
        Sample("batch 1, odd lengths", (randn(1, 3, 5), randn(1, 3, 7), randn(1, 4, 7))),
        Sample("heads as a leading axis, given scale", (randn(2, 3, 4, 9), randn(2, 3, 4, 9), randn(2, 3, 2, 9)),
               {"scale": 0.4}),
    ]


def _fused_kernels_pay_off(q, k, v, scale=None) -> bool:
    # On the CPU torch's SDPA takes its math path here, which adds copies: at SHViT's token counts
    # (16-200) it ran about 2x slower than the two matmuls. On accelerators the fused kernels also
    # avoid materialising the (Lq, Lk) weights.
    return q.device.type != "cpu" and q.dtype == k.dtype == v.dtype


@channels_first_attention.register("sdpa", priority=10, portable=True, supports=_fused_kernels_pay_off)
def _channels_first_sdpa(q, k, v, scale=None):
    out = F.scaled_dot_product_attention(q.transpose(-2, -1), k.transpose(-2, -1), v.transpose(-2, -1), scale=scale)
    return out.transpose(-2, -1)
