"""Strip self-attention (SSA; Xu et al., "S2AFormer: Strip Self-Attention for Efficient Vision Transformer",
IEEE TIP 2025, arXiv 2505.22195).

SSA is cheap in two directions at once: keys and values come from a map reduced in space by a depthwise conv
with kernel = stride = r (N/r² tokens), and queries and keys are compressed in channels to a small width d
while values keep all C channels. With h heads, per head

    out = softmax(q kᵀ · scale) v,  q: (N, d/h) from x,  k: (N/r², d/h) and v: (N/r², C/h) from the reduced map,

and ``scale=None`` means (d/h)^-½. The paper publishes no code; the reduction's BatchNorm and the bias-carrying
1×1 projections are the zoo's reading (``shared/specs/s2aformer.md`` §5).

The op takes the normalised channels-first map x (B, C, H, W), the projections' (out, in) weights and biases,
the reduction's depthwise weight (C, 1, r, r) and bias and, optionally, the reduction's BatchNorm tensors
(with ``norm_training`` batch statistics and an in-place update of the running ones, exactly as the module's
own forward would; otherwise an affine map; a deploy model folds it into the conv and passes none). It returns the per-head outputs, heads concatenated, as a
(B, C_v, H, W) map before the output projection.

**Sizes.** A side not divisible by r (including one shorter than r) is zero-padded on the bottom/right up to
the next multiple before the reduction, so the key grid is ⌈H/r⌉ × ⌈W/r⌉ and every input pixel reaches a key;
on divisible maps this is the plain strided conv.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from visionzoo.ops._dispatch import Op, Sample, seeded_randn
from visionzoo.ops._flex import FLEX_DEVICES, flex_attention, flex_is_fused


def _head_dim_and_scale(x, num_heads, q_weight, k_weight, v_weight, reduction, reduction_weight, scale):
    """Validate a call; return the per-head query/key width and the logit scale ((d/h)^-1/2 unless given)."""
    if x.dim() != 4:
        raise ValueError(f"strip_attention expects a (B, C, H, W) map, got shape {tuple(x.shape)}")
    channels = x.shape[1]
    if num_heads < 1:
        raise ValueError(f"num_heads must be >= 1, got {num_heads}")
    if q_weight.dim() != 2 or k_weight.shape != q_weight.shape or q_weight.shape[1] != channels:
        raise ValueError(
            f"q_weight and k_weight must both be (d, C={channels}) with d divisible by num_heads, got "
            f"{tuple(q_weight.shape)} and {tuple(k_weight.shape)}"
        )
    if v_weight.dim() != 2 or v_weight.shape[1] != channels:
        raise ValueError(f"v_weight must be (C_v, C={channels}), got {tuple(v_weight.shape)}")
    if q_weight.shape[0] % num_heads or v_weight.shape[0] % num_heads:
        raise ValueError(
            f"the query/key width {q_weight.shape[0]} and value width {v_weight.shape[0]} must both be "
            f"divisible by num_heads {num_heads}"
        )
    if reduction < 1:
        raise ValueError(f"reduction must be >= 1, got {reduction}")
    if reduction > 1 and (reduction_weight is None or tuple(reduction_weight.shape) != (channels, 1, reduction, reduction)):
        shape = None if reduction_weight is None else tuple(reduction_weight.shape)
        raise ValueError(
            f"reduction {reduction} needs a depthwise reduction_weight of shape ({channels}, 1, {reduction}, "
            f"{reduction}), got {shape}"
        )
    head_dim = q_weight.shape[0] // num_heads
    return head_dim, head_dim**-0.5 if scale is None else scale


def _pad_to_multiple(x: torch.Tensor, multiple: int) -> torch.Tensor:
    """Zero-pad the bottom/right of a (B, C, H, W) map so both sides are multiples of ``multiple``."""
    height, width = x.shape[-2:]
    return F.pad(x, (0, (-width) % multiple, 0, (-height) % multiple))


def _normalise(reduced, norm_weight, norm_bias, norm_mean, norm_var, norm_eps, norm_momentum, norm_training):
    """The reduction's BatchNorm: batch statistics (and a running update in place) in training, else an affine map."""
    if norm_training:
        # Running statistics are buffers: updated in place, never differentiated (detach shares their storage).
        norm_mean = None if norm_mean is None else norm_mean.detach()
        norm_var = None if norm_var is None else norm_var.detach()
        return F.batch_norm(reduced, norm_mean, norm_var, norm_weight, norm_bias, True, norm_momentum, norm_eps)
    if norm_mean is not None:
        reduced = (reduced - norm_mean[:, None, None]) * torch.rsqrt(norm_var[:, None, None] + norm_eps)
    if norm_weight is not None:
        reduced = reduced * norm_weight[:, None, None]
    return reduced if norm_bias is None else reduced + norm_bias[:, None, None]


def _reduce_by_conv(x, reduction, reduction_weight, reduction_bias, norm) -> torch.Tensor:
    """The fast paths' key/value map: one strided depthwise conv over the padded map, then the BatchNorm."""
    if reduction == 1:
        return x
    reduced = F.conv2d(_pad_to_multiple(x, reduction), reduction_weight, reduction_bias, stride=reduction,
                       groups=x.shape[1])
    return _normalise(reduced, *norm)


def _token_major_qkv(x, num_heads, q_weight, q_bias, k_weight, k_bias, v_weight, v_bias, reduction=1,
                     reduction_weight=None, reduction_bias=None, norm_weight=None, norm_bias=None, norm_mean=None,
                     norm_var=None, norm_eps=1e-5, norm_momentum=0.1, norm_training=False, scale=None):
    """The fused kernels' inputs from an op call: the reduction as one strided depthwise conv, then the projections
    as token-major linears giving q (B, h, N, d/h), k (B, h, N_r, d/h), v (B, h, N_r, C_v/h); and the logit scale."""
    head_dim, scale = _head_dim_and_scale(x, num_heads, q_weight, k_weight, v_weight, reduction, reduction_weight, scale)
    batch = x.shape[0]
    norm = (norm_weight, norm_bias, norm_mean, norm_var, norm_eps, norm_momentum, norm_training)
    reduced = _reduce_by_conv(x, reduction, reduction_weight, reduction_bias, norm)
    tokens, kv_tokens = x.flatten(2).transpose(1, 2), reduced.flatten(2).transpose(1, 2)  # (B, N, C)
    q = F.linear(tokens, q_weight, q_bias).reshape(batch, -1, num_heads, head_dim).transpose(1, 2)
    k = F.linear(kv_tokens, k_weight, k_bias).reshape(batch, -1, num_heads, head_dim).transpose(1, 2)
    v = F.linear(kv_tokens, v_weight, v_bias).reshape(batch, kv_tokens.shape[1], num_heads, -1).transpose(1, 2)
    return q, k, v, scale


def _heads_to_map(out: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """Per-head outputs (B, h, N, C_v/h) as a contiguous (B, C_v, H, W) map, heads concatenated."""
    batch, _, height, width = shape
    out = out.permute(0, 1, 3, 2).clone(memory_format=torch.contiguous_format)
    return out.reshape(batch, -1, height, width)


def strip_attention_reference(
    x: torch.Tensor,
    num_heads: int,
    q_weight: torch.Tensor,
    q_bias: torch.Tensor | None,
    k_weight: torch.Tensor,
    k_bias: torch.Tensor | None,
    v_weight: torch.Tensor,
    v_bias: torch.Tensor | None,
    reduction: int = 1,
    reduction_weight: torch.Tensor | None = None,
    reduction_bias: torch.Tensor | None = None,
    norm_weight: torch.Tensor | None = None,
    norm_bias: torch.Tensor | None = None,
    norm_mean: torch.Tensor | None = None,
    norm_var: torch.Tensor | None = None,
    norm_eps: float = 1e-5,
    norm_momentum: float = 0.1,
    norm_training: bool = False,
    scale: float | None = None,
) -> torch.Tensor:
    """SSA written out: the reduction as a weighted sum over each r×r window, attention as explicit matmuls."""
    head_dim, scale = _head_dim_and_scale(x, num_heads, q_weight, k_weight, v_weight, reduction, reduction_weight, scale)
    batch, channels, height, width = x.shape
    if reduction > 1:
        padded = _pad_to_multiple(x, reduction)
        rows, cols = padded.shape[-2] // reduction, padded.shape[-1] // reduction
        windows = padded.reshape(batch, channels, rows, reduction, cols, reduction)
        reduced = torch.einsum("bcyixj,cij->bcyx", windows, reduction_weight[:, 0])
        if reduction_bias is not None:
            reduced = reduced + reduction_bias[:, None, None]
        reduced = _normalise(reduced, norm_weight, norm_bias, norm_mean, norm_var, norm_eps, norm_momentum, norm_training)
    else:
        reduced = x
    tokens, kv_tokens = x.flatten(2), reduced.flatten(2)  # (B, C, N), (B, C, N_r)

    def project(weight, bias, source):
        out = torch.einsum("oc,bcn->bon", weight, source)
        out = out if bias is None else out + bias[:, None]
        return out.reshape(batch, num_heads, -1, source.shape[-1])  # (B, h, width per head, tokens)

    q = project(q_weight, q_bias, tokens)
    k = project(k_weight, k_bias, kv_tokens)
    v = project(v_weight, v_bias, kv_tokens)
    attention = (q.transpose(-2, -1) @ k * scale).softmax(dim=-1)  # (B, h, N, N_r)
    out = v @ attention.transpose(-2, -1)  # (B, h, C_v/h, N)
    return out.reshape(batch, -1, height, width)


strip_attention = Op("strip_attention", strip_attention_reference)


@strip_attention.sample_inputs
def _samples() -> list[Sample]:
    randn = seeded_randn()

    def weights(channels: int, qk_dim: int, v_dim: int, reduction: int, norm: bool) -> dict:
        scale = channels**-0.5
        kwargs = {
            "q_weight": randn(qk_dim, channels) * scale, "q_bias": randn(qk_dim),
            "k_weight": randn(qk_dim, channels) * scale, "k_bias": randn(qk_dim),
            "v_weight": randn(v_dim, channels) * scale, "v_bias": randn(v_dim),
        }
        if reduction > 1:
            kwargs.update(reduction=reduction, reduction_weight=randn(channels, 1, reduction, reduction) / reduction,
                          reduction_bias=randn(channels))
        if norm:
            kwargs.update(norm_weight=randn(channels).abs() + 0.5, norm_bias=randn(channels),
                          norm_mean=randn(channels) * 0.1, norm_var=randn(channels).abs() + 0.5)
        return kwargs

    return [
        Sample("batch 1, 7x5 map, reduction 2 with BatchNorm", (randn(1, 8, 7, 5), 2), weights(8, 8, 8, 2, True)),
        Sample("map 3x2 smaller than reduction 4", (randn(2, 6, 3, 2), 1), weights(6, 4, 6, 4, False)),
        Sample("no reduction, 2 heads, given scale", (randn(2, 8, 4, 6), 2), dict(weights(8, 4, 6, 1, False), scale=0.3)),
    ]


def _fused_kernels_pay_off(x, *args, **kwargs) -> bool:
    # On the CPU torch's SDPA takes its math path at these head widths (8-32) and, with the token-major
    # projections it needs, measured 1.2-2x slower than the conv/bmm path below on S2AFormer's stage shapes.
    return x.device.type != "cpu"


@strip_attention.register("sdpa", priority=10, portable=True, supports=_fused_kernels_pay_off)
def _strip_attention_sdpa(x: torch.Tensor, num_heads: int, *weights, **options) -> torch.Tensor:
    """The reduction as one strided depthwise conv, the projections as token-major linears, one SDPA call."""
    q, k, v, scale = _token_major_qkv(x, num_heads, *weights, **options)
    # An explicit copy, not a reshape that may view: fused SDPA kernels return permuted strides that
    # torch.export would bake into a view that is invalid after ExecuTorch decomposes SDPA.
    return _heads_to_map(F.scaled_dot_product_attention(q, k, v, scale=scale), x.shape)


@strip_attention.register("conv_bmm", priority=5, portable=True)
def _strip_attention_conv_bmm(
    x: torch.Tensor,
    num_heads: int,
    q_weight: torch.Tensor,
    q_bias: torch.Tensor | None,
    k_weight: torch.Tensor,
    k_bias: torch.Tensor | None,
    v_weight: torch.Tensor,
    v_bias: torch.Tensor | None,
    reduction: int = 1,
    reduction_weight: torch.Tensor | None = None,
    reduction_bias: torch.Tensor | None = None,
    norm_weight: torch.Tensor | None = None,
    norm_bias: torch.Tensor | None = None,
    norm_mean: torch.Tensor | None = None,
    norm_var: torch.Tensor | None = None,
    norm_eps: float = 1e-5,
    norm_momentum: float = 0.1,
    norm_training: bool = False,
    scale: float | None = None,
) -> torch.Tensor:
    """Channels-first throughout: projections as 1×1 convs (oneDNN on the CPU), attention as two batched matmuls
    with the scale folded into the small key tensor; no layout change to tokens-last and back."""
    head_dim, scale = _head_dim_and_scale(x, num_heads, q_weight, k_weight, v_weight, reduction, reduction_weight, scale)
    batch, _, height, width = x.shape
    reduced = _reduce_by_conv(
        x, reduction, reduction_weight, reduction_bias,
        (norm_weight, norm_bias, norm_mean, norm_var, norm_eps, norm_momentum, norm_training),
    )
    q = F.conv2d(x, q_weight[:, :, None, None], q_bias).reshape(batch, num_heads, head_dim, -1)
    k = F.conv2d(reduced, k_weight[:, :, None, None], k_bias).reshape(batch, num_heads, head_dim, -1)
    v = F.conv2d(reduced, v_weight[:, :, None, None], v_bias).reshape(batch, num_heads, -1, k.shape[-1])
    attention = (q.transpose(-2, -1) @ (k * scale)).softmax(dim=-1)  # (B, h, N, N_r)
    return (v @ attention.transpose(-2, -1)).reshape(batch, -1, height, width)


def _flex_supports(x, *args, **kwargs) -> bool:
    return flex_is_fused(x, *(value for value in (*args, *kwargs.values()) if isinstance(value, torch.Tensor)))


@strip_attention.register("flex", priority=4, devices=FLEX_DEVICES, portable=False, differentiable=False,
                          supports=_flex_supports)
def _strip_attention_flex(x: torch.Tensor, num_heads: int, *weights, **options) -> torch.Tensor:
    """The SDPA backend's inputs through one FlexAttention call: every query sees every reduced key, so there is no
    mask to build, and flex takes the value width C_v/h apart from the query/key width d/h."""
    q, k, v, scale = _token_major_qkv(x, num_heads, *weights, **options)
    if k.shape[2] == 1:
        # One key (a map no larger than the reduction): every query's softmax is 1. Flex is not called, since the
        # CPU template fails to lower a one-token key of a single head (torch 2.14).
        return _heads_to_map(v.expand(-1, -1, q.shape[2], -1), x.shape)
    # Copies into 4-d buffers of their own: inductor's CPU flex template reads the sizes of the buffer under a view,
    # and fails on views of the 3-d projection outputs (torch 2.14).
    q, k, v = (tensor.clone(memory_format=torch.contiguous_format) for tensor in (q, k, v))
    return _heads_to_map(flex_attention(q, k, v, scale=scale), x.shape)
