"""Channel-group attention (DaViT, arXiv 2204.03645 §3.2): attention among channels instead of tokens.

Channels split into G groups of c = C / G. Per group, keys and values of all N tokens form a c × c map
M = softmax((K · scale)ᵀ V) over its last index, and the queries are mixed by it: Y = Q Mᵀ (N × c). The cost
is linear in the number of tokens. These are the roles as the released DaViT code (and its checkpoints)
assign them: K and V build the map, Q is what gets mixed.

:func:`channel_attention` takes the packed projection ``qkv`` (B, N, 3C), laid out q | k | v along the last
axis and group-major inside each, and returns (B, N, C) before the output projection.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from visionzoo.ops._dispatch import Op


def _check_qkv(qkv: torch.Tensor, num_groups: int) -> None:
    if qkv.dim() != 3 or qkv.shape[-1] % (3 * num_groups):
        raise ValueError(
            f"channel_attention expects a packed (B, N, 3 * groups * group_dim) tensor with {num_groups} groups, "
            f"got shape {tuple(qkv.shape)}"
        )


def channel_attention_reference(qkv: torch.Tensor, num_groups: int, scale: float | None = None) -> torch.Tensor:
    """Split q/k/v and groups; M = softmax((k · scale)ᵀ v); y = q Mᵀ; merge the groups back."""
    _check_qkv(qkv, num_groups)
    batch, tokens, packed = qkv.shape
    group_dim = packed // (3 * num_groups)
    scale = group_dim**-0.5 if scale is None else scale
    q, k, v = qkv.reshape(batch, tokens, 3, num_groups, group_dim).permute(2, 0, 3, 1, 4).unbind(0)
    mixing = ((k * scale).transpose(-2, -1) @ v).softmax(dim=-1)
    out = q @ mixing.transpose(-2, -1)
    return out.transpose(1, 2).reshape(batch, tokens, num_groups * group_dim)


channel_attention = Op("channel_attention", channel_attention_reference)


@channel_attention.register("sdpa")
def _channel_attention_sdpa(qkv, num_groups, scale=None):
    # With channels as the sequence axis, this is SDPA with query = kᵀ, key = vᵀ, value = qᵀ, each (c × N):
    # softmax(kᵀ v · scale) qᵀ = (q Mᵀ)ᵀ. One copy lays q, k, v out channel-major; one brings the result back.
    _check_qkv(qkv, num_groups)
    batch, tokens, packed = qkv.shape
    group_dim = packed // (3 * num_groups)
    scale = group_dim**-0.5 if scale is None else scale
    channel_major = qkv.reshape(batch, tokens, 3, num_groups, group_dim).permute(2, 0, 3, 4, 1).contiguous()
    q_t, k_t, v_t = channel_major.unbind(0)
    out_t = F.scaled_dot_product_attention(k_t, v_t, q_t, scale=scale)
    return out_t.permute(0, 3, 1, 2).reshape(batch, tokens, num_groups * group_dim)
