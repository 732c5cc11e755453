"""Gated positional self-attention (GPSA), the attention of ConViT (d'Ascoli et al., arXiv 2103.10697, §3).

Each head mixes two attention maps with a learned gate σ(λ_h): content attention softmax(q kᵀ · scale)
and positional attention softmax(pos_logits), where the positional logits depend only on the relative
position of query and key. The mixed rows are renormalised to sum to 1 and applied to the values.

Shapes: q, k (B, H, N, E); v (B, H, N, Ev); ``pos_logits`` broadcasts to (B, H, N, N) (usually (H, N, N),
shared by the batch); ``gating`` (H,) holds the raw gate parameters λ (the sigmoid is taken here).

:func:`relative_position_features` builds the (N, N, 3) features r(p, m) = (Δx, Δy, Δx² + Δy²) for a
row-major ``height`` × ``width`` token grid, from which a layer projects ``pos_logits``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from visionzoo.ops._dispatch import Op, Sample, seeded_randn, trace_leaf
from visionzoo.ops.attention import scaled_dot_product_attention


@trace_leaf
def relative_position_features(
    height: int, width: int, device: torch.device | str | None = None, dtype: torch.dtype | None = None
) -> torch.Tensor:
    """(N, N, 3) features of key m seen from query p on a row-major grid: (m_x − p_x, m_y − p_y, squared distance)."""
    rows = torch.arange(height, device=device, dtype=torch.float32)
    cols = torch.arange(width, device=device, dtype=torch.float32)
    grid_y, grid_x = torch.meshgrid(rows, cols, indexing="ij")
    grid_y, grid_x = grid_y.reshape(-1), grid_x.reshape(-1)
    delta_x = grid_x[None, :] - grid_x[:, None]
    delta_y = grid_y[None, :] - grid_y[:, None]
    features = torch.stack([delta_x, delta_y, delta_x.square() + delta_y.square()], dim=-1)
    return features.to(dtype) if dtype is not None else features


def gpsa_reference(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    pos_logits: torch.Tensor,
    gating: torch.Tensor,
    scale: float | None = None,
    dropout_p: float = 0.0,
) -> torch.Tensor:
    """((1 − σ(λ)) · softmax(q kᵀ · scale) + σ(λ) · softmax(pos_logits)), rows renormalised, times v."""
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    content = ((q * scale) @ k.transpose(-2, -1)).softmax(dim=-1)
    positional = pos_logits.softmax(dim=-1)
    gate = torch.sigmoid(gating).reshape(-1, 1, 1)
    weights = (1.0 - gate) * content + gate * positional
    weights = weights / weights.sum(dim=-1, keepdim=True)
    if dropout_p > 0.0:
        weights = F.dropout(weights, p=dropout_p)
    return weights @ v


gated_positional_attention = Op("gated_positional_attention", gpsa_reference)


@gated_positional_attention.sample_inputs
def _samples() -> list[Sample]:
    randn = seeded_randn()
    return [
        Sample("batch 1, 7 tokens", (randn(1, 2, 7, 3), randn(1, 2, 7, 3), randn(1, 2, 7, 5), randn(2, 7, 7),
                                     randn(2))),
        Sample("batch 3, given scale", (randn(3, 3, 6, 4), randn(3, 3, 6, 4), randn(3, 3, 6, 4), randn(3, 6, 6),
                                        randn(3)), {"scale": 0.3}),
    ]


@trace_leaf
def flush_subnormals(weights: torch.Tensor) -> torch.Tensor:
    """``weights`` with its subnormal entries set to zero, for float32, bfloat16 and float64.

    A local head's positional softmax puts weights of exp(-α·d²) on far tokens, and many fall below the smallest
    normal float (ConViT-Ti's locality init: 9 % of the map). x86 CPUs run matmuls on subnormal operands at a
    fraction of their speed (an 11x slower (4, 196, 196) @ (4, 196, 768) product, measured), so they are zeroed:
    each changes an output by less than 1e-38 of the value it weights. float16 is left alone, because its smallest
    normal (6e-5) is a weight that matters.
    """
    if weights.dtype == torch.float16:
        return weights
    return weights.masked_fill(weights.abs() < torch.finfo(weights.dtype).tiny, 0.0)


def _split_supports(q, k, v, pos_logits, gating, scale=None, dropout_p=0.0) -> bool:
    # Dropout acts on the mixed map, so the split form needs it off; the positional map must be batch-free.
    return dropout_p == 0.0 and pos_logits.dim() == 3


@gated_positional_attention.register("sdpa_split", priority=10, portable=True, supports=_split_supports)
def _gpsa_sdpa_split(q, k, v, pos_logits, gating, scale=None, dropout_p=0.0):
    """Both maps' rows already sum to 1, so the renormalisation is exact without it and the mix splits:

    out = (1 − g) · SDPA(q, k, v) + (g · softmax(pos_logits)) @ v.

    The content part runs fused (no N×N map in memory); the positional map is built once per call,
    not per image, and applied to the whole batch in one matmul per head.
    """
    batch, heads, tokens, value_dim = v.shape
    gate = torch.sigmoid(gating).to(v.dtype).reshape(heads, 1, 1)
    content = scaled_dot_product_attention(q, k, v, scale=scale)
    positional = flush_subnormals(pos_logits.softmax(dim=-1).to(v.dtype) * gate)
    # (B, H, N, Ev) -> (H, N, B·Ev): one (N×N)·(N×B·Ev) product per head covers every image.
    values = v.permute(1, 2, 0, 3).reshape(heads, tokens, batch * value_dim)
    positional_out = (positional @ values).reshape(heads, tokens, batch, value_dim).permute(2, 0, 1, 3)
    return torch.addcmul(positional_out, content, 1.0 - gate)
