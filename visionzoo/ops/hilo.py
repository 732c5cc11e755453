"""HiLo attention (LITv2, Pan et al., "Fast Vision Transformers with HiLo Attention", NeurIPS 2022, arXiv 2205.13213).

The heads of one layer are split in two groups that see the same normalised (B, H, W, C) map x:

* Hi-Fi heads (high frequencies) attend only inside non-overlapping s×s windows;
* Lo-Fi heads (low frequencies) let every token query keys/values computed from x average-pooled over
  s×s windows, i.e. global attention to (H/s)(W/s) coarse tokens.

Maps whose sides are not multiples of s are padded with zeros on the right/bottom (after the
normalisation, as the official dense-prediction backbone does), attended, and cropped back. Padded
tokens are real keys (their projections are the biases) and enter the pooled Lo-Fi keys as zeros.

The op takes the input projections (``hifi_qkv``: q | k | v, head-major; ``lofi_q``; ``lofi_kv``:
k | v, head-major) and returns the per-head attention outputs, Hi-Fi channels first, before the
output projections (those act per token, so the layer applies them after the crop).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from visionzoo.ops._dispatch import Op, Sample, seeded_randn
from visionzoo.ops._flex import FLEX_DEVICES, cached_block_mask, flex_attention, flex_is_fused, window_mask_mod
from visionzoo.ops.attention import sdpa_reference
from visionzoo.ops.window import pad_to_windows


def _head_dim_and_scale(
    x, window_size, hifi_heads, lofi_heads, hifi_qkv_weight, lofi_q_weight, lofi_kv_weight, scale
) -> tuple[int, float]:
    """Validate a call and return its head width and logit scale (head_dim^-1/2 unless given)."""
    if x.dim() != 4:
        raise ValueError(f"hilo_attention expects a (B, H, W, C) map, got shape {tuple(x.shape)}")
    if window_size < 1:
        raise ValueError(f"window_size must be >= 1, got {window_size}")
    if hifi_heads < 0 or lofi_heads < 0 or hifi_heads + lofi_heads == 0:
        raise ValueError(f"need at least one head and no negative counts, got hifi {hifi_heads}, lofi {lofi_heads}")
    if hifi_heads and (hifi_qkv_weight is None or hifi_qkv_weight.shape[0] % (3 * hifi_heads)):
        raise ValueError(
            f"hifi_qkv_weight must be given with 3·hifi_heads·head_dim rows for {hifi_heads} Hi-Fi heads"
        )
    if lofi_heads and (
        lofi_q_weight is None or lofi_kv_weight is None or lofi_q_weight.shape[0] % lofi_heads
        or lofi_kv_weight.shape[0] != 2 * lofi_q_weight.shape[0]
    ):
        raise ValueError(
            f"lofi_q_weight (lofi_heads·head_dim rows) and lofi_kv_weight (twice as many) must be given "
            f"for {lofi_heads} Lo-Fi heads"
        )
    head_dim = hifi_qkv_weight.shape[0] // (3 * hifi_heads) if hifi_heads else lofi_q_weight.shape[0] // lofi_heads
    return head_dim, head_dim**-0.5 if scale is None else scale


def hilo_attention_reference(
    x: torch.Tensor,
    window_size: int,
    hifi_heads: int,
    lofi_heads: int,
    hifi_qkv_weight: torch.Tensor | None = None,
    hifi_qkv_bias: torch.Tensor | None = None,
    lofi_q_weight: torch.Tensor | None = None,
    lofi_q_bias: torch.Tensor | None = None,
    lofi_kv_weight: torch.Tensor | None = None,
    lofi_kv_bias: torch.Tensor | None = None,
    scale: float | None = None,
) -> torch.Tensor:
    """HiLo as dense attention over the padded map: Hi-Fi masks to same-window pairs, Lo-Fi keys are window means."""
    head_dim, scale = _head_dim_and_scale(
        x, window_size, hifi_heads, lofi_heads, hifi_qkv_weight, lofi_q_weight, lofi_kv_weight, scale
    )
    batch, height, width, channels = x.shape
    padded = pad_to_windows(x, (window_size, window_size))
    padded_height, padded_width = padded.shape[1], padded.shape[2]
    tokens = padded.reshape(batch, padded_height * padded_width, channels)
    outputs = []
    if hifi_heads:
        qkv = F.linear(tokens, hifi_qkv_weight, hifi_qkv_bias)
        q, k, v = qkv.reshape(batch, -1, 3, hifi_heads, head_dim).permute(2, 0, 3, 1, 4)
        rows = torch.arange(padded_height, device=x.device) // window_size
        cols = torch.arange(padded_width, device=x.device) // window_size
        window_id = (rows[:, None] * (padded_width // window_size) + cols[None, :]).flatten()
        same_window = window_id[:, None] == window_id[None, :]
        outputs.append(sdpa_reference(q, k, v, attn_bias=same_window, scale=scale))
    if lofi_heads:
        q = F.linear(tokens, lofi_q_weight, lofi_q_bias).reshape(batch, -1, lofi_heads, head_dim).transpose(1, 2)
        window_means = padded.reshape(
            batch, padded_height // window_size, window_size, padded_width // window_size, window_size, channels
        ).mean(dim=(2, 4))
        kv = F.linear(window_means.reshape(batch, -1, channels), lofi_kv_weight, lofi_kv_bias)
        k, v = kv.reshape(batch, -1, 2, lofi_heads, head_dim).permute(2, 0, 3, 1, 4)
        outputs.append(sdpa_reference(q, k, v, scale=scale))
    out = torch.cat([o.transpose(1, 2).reshape(batch, padded_height, padded_width, -1) for o in outputs], dim=-1)
    return out[:, :height, :width]


hilo_attention = Op("hilo_attention", hilo_attention_reference)


@hilo_attention.sample_inputs
def _samples() -> list[Sample]:
    randn = seeded_randn()

    def weights(hifi_heads: int, lofi_heads: int, channels: int, head_dim: int) -> dict:
        scale = channels**-0.5
        return {
            "hifi_qkv_weight": randn(3 * hifi_heads * head_dim, channels) * scale if hifi_heads else None,
            "hifi_qkv_bias": randn(3 * hifi_heads * head_dim) if hifi_heads else None,
            "lofi_q_weight": randn(lofi_heads * head_dim, channels) * scale if lofi_heads else None,
            "lofi_q_bias": randn(lofi_heads * head_dim) if lofi_heads else None,
            "lofi_kv_weight": randn(2 * lofi_heads * head_dim, channels) * scale if lofi_heads else None,
            "lofi_kv_bias": randn(2 * lofi_heads * head_dim) if lofi_heads else None,
        }

    return [
        Sample("batch 1, 7x5 map padded to 2x2 windows", (randn(1, 7, 5, 8), 2, 1, 1), weights(1, 1, 8, 4)),
        Sample("Hi-Fi heads only", (randn(2, 4, 6, 6), 2, 2, 0), weights(2, 0, 6, 3)),
        Sample("Lo-Fi heads only, window 3", (randn(2, 5, 4, 6), 3, 0, 2), weights(0, 2, 6, 3)),
    ]


@hilo_attention.register("sdpa", priority=10, portable=True)
def _hilo_attention_sdpa(
    x: torch.Tensor,
    window_size: int,
    hifi_heads: int,
    lofi_heads: int,
    hifi_qkv_weight: torch.Tensor | None = None,
    hifi_qkv_bias: torch.Tensor | None = None,
    lofi_q_weight: torch.Tensor | None = None,
    lofi_q_bias: torch.Tensor | None = None,
    lofi_kv_weight: torch.Tensor | None = None,
    lofi_kv_bias: torch.Tensor | None = None,
    scale: float | None = None,
) -> torch.Tensor:
    """Hi-Fi windows folded into the batch for one SDPA call; Lo-Fi queries only the unpadded tokens."""
    head_dim, scale = _head_dim_and_scale(
        x, window_size, hifi_heads, lofi_heads, hifi_qkv_weight, lofi_q_weight, lofi_kv_weight, scale
    )
    batch, height, width, channels = x.shape
    padded = pad_to_windows(x, (window_size, window_size))
    rows, cols = padded.shape[1] // window_size, padded.shape[2] // window_size
    outputs = []
    if hifi_heads:
        qkv = F.linear(padded, hifi_qkv_weight, hifi_qkv_bias)
        # Windows are gathered with tensors of rank ≤ 5 (Core ML's limit; XNNPACK's is 6):
        # (B·rows, s, cols, s·3C) -> (B·rows·cols, s², 3, heads, d) -> (3, B·rows·cols, heads, s², d)
        window_qkv = qkv.reshape(batch * rows, window_size, cols, -1).transpose(1, 2)
        window_qkv = window_qkv.reshape(-1, window_size * window_size, 3, hifi_heads, head_dim).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(window_qkv[0], window_qkv[1], window_qkv[2], scale=scale)
        # An explicit copy, not a reshape that may view: fused SDPA kernels return permuted strides that
        # torch.export would bake into a view that is invalid after ExecuTorch decomposes SDPA.
        out = out.transpose(1, 2).clone(memory_format=torch.contiguous_format)
        out = out.reshape(batch * rows, cols, window_size, -1).transpose(1, 2)
        out = out.reshape(batch, rows * window_size, cols * window_size, -1)
        outputs.append(out[:, :height, :width])
    if lofi_heads:
        q = F.linear(x, lofi_q_weight, lofi_q_bias).reshape(batch, -1, lofi_heads, head_dim).transpose(1, 2)
        pooled = F.avg_pool2d(padded.permute(0, 3, 1, 2), window_size) if window_size > 1 else x.permute(0, 3, 1, 2)
        kv = F.linear(pooled.flatten(2).transpose(1, 2), lofi_kv_weight, lofi_kv_bias)
        k, v = kv.reshape(batch, -1, 2, lofi_heads, head_dim).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v, scale=scale)
        out = out.transpose(1, 2).clone(memory_format=torch.contiguous_format)
        outputs.append(out.reshape(batch, height, width, -1))
    return torch.cat(outputs, dim=-1)


def _flex_supports(x, window_size, hifi_heads, lofi_heads, hifi_qkv_weight=None, *args, **kwargs) -> bool:
    # Flex replaces only the Hi-Fi windows; Lo-Fi attention to the pooled map is plain SDPA either way.
    return hifi_heads > 0 and flex_is_fused(x, hifi_qkv_weight, *args, *kwargs.values())


@hilo_attention.register("flex", priority=5, devices=FLEX_DEVICES, portable=False, differentiable=False,
                         supports=_flex_supports)
def _hilo_attention_flex(x, window_size, hifi_heads, lofi_heads, hifi_qkv_weight=None, hifi_qkv_bias=None,
                         lofi_q_weight=None, lofi_q_bias=None, lofi_kv_weight=None, lofi_kv_bias=None, scale=None):
    """Hi-Fi heads attend over the padded map in row-major order under a same-window block mask (no partition
    or merge copies); Lo-Fi heads as in the SDPA backend."""
    if not hifi_heads:
        return _hilo_attention_sdpa(x, window_size, 0, lofi_heads, None, None, lofi_q_weight, lofi_q_bias,
                                    lofi_kv_weight, lofi_kv_bias, scale)
    head_dim, scale = _head_dim_and_scale(
        x, window_size, hifi_heads, lofi_heads, hifi_qkv_weight, lofi_q_weight, lofi_kv_weight, scale
    )
    batch, height, width, _ = x.shape
    padded = pad_to_windows(x, (window_size, window_size))
    padded_height, padded_width = padded.shape[1], padded.shape[2]
    tokens = padded_height * padded_width
    qkv = F.linear(padded, hifi_qkv_weight, hifi_qkv_bias).view(batch, tokens, 3, hifi_heads, head_dim)
    q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
    mask = cached_block_mask(window_mask_mod, (padded_width, window_size, window_size), tokens, tokens, x.device)
    hifi = flex_attention(q, k, v, block_mask=mask, scale=scale).transpose(1, 2)
    hifi = hifi.reshape(batch, padded_height, padded_width, -1)[:, :height, :width]
    if not lofi_heads:
        return hifi
    lofi = _hilo_attention_sdpa(x, window_size, 0, lofi_heads, None, None, lofi_q_weight, lofi_q_bias,
                                lofi_kv_weight, lofi_kv_bias, scale)
    return torch.cat([hifi, lofi], dim=-1)
