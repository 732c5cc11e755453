"""Aggregated attention (TransNeXt): the shifted-view fast path against the unfold reference, border
semantics, the continuous-position-bias coordinates, and the modules built on them."""
import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from visionzoo.layers.aggregated_attention import (
    AggregatedAttention,
    LengthScaledCosineAttention,
    continuous_position_bias,
)
from visionzoo.layers.conv_glu import ConvGlu
from visionzoo.ops import use_backend
from visionzoo.ops.aggregated_attention import (
    aggregated_attention,
    aggregated_attention_reference,
    cpb_coordinates,
    local_window_mask,
)


def _inputs(batch, heads, height, width, head_dim, pool_len, window_size, dtype=torch.float64):
    tokens, window_len = height * width, window_size * window_size

    def randn(*shape):
        return torch.randn(*shape, dtype=dtype)

    return dict(
        q=randn(batch, heads, tokens, head_dim),
        k=randn(batch, heads, tokens, head_dim),
        v=randn(batch, heads, tokens, head_dim),
        k_pool=randn(batch, heads, pool_len, head_dim),
        v_pool=randn(batch, heads, pool_len, head_dim),
        local_bias=randn(heads, window_len),
        pool_bias=randn(heads, tokens, pool_len),
        value_bias=randn(batch, heads, tokens, window_len),
        size=(height, width),
    )


@settings(max_examples=25, deadline=None)
@given(
    batch=st.integers(1, 2),
    heads=st.integers(1, 3),
    height=st.integers(1, 9),
    width=st.integers(1, 9),
    head_dim=st.integers(1, 6),
    pool_len=st.integers(1, 5),
    window_size=st.sampled_from([1, 3, 5]),
)
def test_shifted_matches_unfold_reference(batch, heads, height, width, head_dim, pool_len, window_size):
    inputs = _inputs(batch, heads, height, width, head_dim, pool_len, window_size)
    expected = aggregated_attention(**inputs, backend="reference")
    actual = aggregated_attention(**inputs, backend="shifted")
    torch.testing.assert_close(actual, expected, rtol=1e-10, atol=1e-10)


def test_shifted_gradients_match_reference():
    inputs = _inputs(2, 2, 5, 7, 4, 3, 3)
    grads = {}
    for backend in ("reference", "shifted"):
        leaves = {name: value.clone().requires_grad_() for name, value in inputs.items() if name != "size"}
        aggregated_attention(**leaves, size=inputs["size"], backend=backend).square().sum().backward()
        grads[backend] = {name: leaf.grad for name, leaf in leaves.items()}
    for name in grads["reference"]:
        torch.testing.assert_close(grads["shifted"][name], grads["reference"][name], msg=name)


def test_auto_dispatch_picks_the_shifted_path():
    inputs = _inputs(1, 1, 3, 3, 2, 1, 3)
    assert aggregated_attention.select(**inputs).__name__ == "_aggregated_attention_shifted"
    with use_backend("reference"):
        assert aggregated_attention.select(**inputs) is aggregated_attention_reference


@pytest.mark.parametrize("backend", ["reference", "shifted"])
def test_single_pixel_sees_only_its_centre_and_the_pool(backend):
    """On a 1×1 map every window slot but the centre is padding: its logit is −∞ and its value is zero,
    so the dynamic bias of padded slots contributes nothing."""
    inputs = _inputs(1, 2, 1, 1, 4, 3, 3)
    out = aggregated_attention(**inputs, backend=backend)
    q, k, v = inputs["q"], inputs["k"], inputs["v"]
    centre = (q * k).sum(-1, keepdim=True) + inputs["local_bias"][:, 4].reshape(1, 2, 1, 1)
    pooled = q @ inputs["k_pool"].transpose(-2, -1) + inputs["pool_bias"]
    weights = torch.cat([centre, pooled], dim=-1).softmax(-1)
    expected = (weights[..., :1] + inputs["value_bias"][..., 4:5]) * v + weights[..., 1:] @ inputs["v_pool"]
    torch.testing.assert_close(out, expected)


def test_window_mask_counts_in_image_neighbours():
    counts = local_window_mask(3, 4, 3).sum(-1).reshape(3, 4)
    assert counts.tolist() == [[4, 6, 6, 4], [6, 9, 9, 6], [4, 6, 6, 4]]
    # Slot order is row-major from the top-left neighbour: the top-left pixel lacks the whole first row/column.
    assert local_window_mask(3, 4, 3)[0].tolist() == [False, False, False, False, True, True, False, True, True]


def _direct_log_offsets(query_len, key_len, pretrain_len):
    """Per-pair log-spaced offsets straight from the spec: key coordinates are adaptive-avg-pooled query rows."""
    rows = torch.arange(query_len, dtype=torch.float32)
    key_rows = F.adaptive_avg_pool1d(rows[None], key_len)[0]
    relative = (rows[:, None] - key_rows[None, :]) / (pretrain_len - 1) * 8
    return torch.sign(relative) * torch.log2(relative.abs() + 1) / 3


@settings(max_examples=25, deadline=None)
@given(
    query=st.tuples(st.integers(1, 20), st.integers(1, 20)),
    sr=st.tuples(st.integers(1, 5), st.integers(1, 5)),
    pretrain=st.tuples(st.integers(2, 60), st.integers(2, 60)),
)
def test_cpb_coordinates_reproduce_every_pair(query, sr, pretrain):
    key = (max(1, query[0] // sr[0]), max(1, query[1] // sr[1]))
    table, index = cpb_coordinates(query, key, pretrain)
    rows = _direct_log_offsets(query[0], key[0], pretrain[0])
    cols = _direct_log_offsets(query[1], key[1], pretrain[1])
    expected = torch.stack(torch.broadcast_tensors(rows[:, None, :, None], cols[None, :, None, :]), dim=-1)
    expected = expected.reshape(query[0] * query[1], key[0] * key[1], 2)
    assert index.shape == expected.shape[:2]
    torch.testing.assert_close(table[index], expected, rtol=0, atol=0)
    if query[0] % key[0] == 0 and query[1] % key[1] == 0:
        # Even bins: the table is exactly the distinct pairs (what torch.unique would give), no waste.
        assert len(table) == len(torch.unique(expected.reshape(-1, 2), dim=0))


def test_cpb_table_of_the_224_stage_one_grid_is_deduplicated():
    table, index = cpb_coordinates((56, 56), (7, 7), (56, 56))
    assert table.shape == (104 * 104, 2) and index.shape == (3136, 49)


def test_cpb_rejects_a_degenerate_pretrain_grid():
    with pytest.raises(ValueError, match="pretrain grid"):
        cpb_coordinates((4, 4), (2, 2), (1, 1))


def test_continuous_position_bias_shape_and_dtype():
    attn = LengthScaledCosineAttention(16, 2, (7, 7), dtype=torch.bfloat16)
    bias = continuous_position_bias(attn.cpb_fc1, attn.cpb_fc2, (3, 5), (3, 5), (7, 7))
    assert bias.shape == (2, 15, 15) and bias.dtype == torch.bfloat16


@pytest.mark.parametrize("size", [(5, 7), (8, 8), (1, 3)])
def test_aggregated_attention_module_backends_agree(size):
    module = AggregatedAttention(24, 3, sr_ratio=1 if min(size) == 1 else 2, pretrain_size=(8, 8)).double()
    with torch.no_grad():
        module.learnable_bias.normal_()
    x = torch.randn(2, *size, 24, dtype=torch.float64)
    with use_backend("reference"):
        expected = module(x)
    with use_backend("shifted"):
        actual = module(x)
    assert actual.shape == x.shape
    torch.testing.assert_close(actual, expected)


def test_aggregated_attention_length_scale_counts_window_and_pool():
    """With zero query weights the scaled query is (e + 0)·softplus(τ)·ln(n_p + P): check ln(n_p + P) per position."""
    module = AggregatedAttention(8, 1, sr_ratio=2, pretrain_size=(4, 4)).double()
    captured = {}

    def capture(q, *args):
        captured["q"] = q
        return aggregated_attention_reference(q, *args)

    with torch.no_grad():
        module.q.weight.zero_()
        module.q.bias.zero_()
        module.query_embedding.fill_(1.0)
    original = aggregated_attention.reference
    try:
        aggregated_attention.reference = capture
        with use_backend("reference"):
            module(torch.randn(1, 4, 6, 8, dtype=torch.float64))
    finally:
        aggregated_attention.reference = original
    pooled = 2 * 3
    counts = local_window_mask(4, 6, 3).sum(-1).double()
    expected = torch.log(counts + pooled) * F.softplus(module.temperature.detach()).item()
    torch.testing.assert_close(captured["q"][0, 0, :, 0], expected)


def test_pool_errors_name_the_fix():
    module = AggregatedAttention(8, 1, sr_ratio=4, pretrain_size=(8, 8))
    with pytest.raises(ValueError, match="pools to nothing at sr_ratio 4"):
        module(torch.randn(1, 3, 8, 8))
    fixed = AggregatedAttention(8, 1, sr_ratio=4, pretrain_size=(8, 8), fixed_pool_size=5)
    assert fixed.pool_size(12, 9) == (5, 5)
    with pytest.raises(ValueError, match="fixed_pool_size=5 exceeds the 4x9"):
        fixed(torch.randn(1, 4, 9, 8))
    with pytest.raises(ValueError, match="odd"):
        AggregatedAttention(8, 1, sr_ratio=2, pretrain_size=(8, 8), window_size=4)


def test_temperature_starts_at_inverse_0_24():
    module = AggregatedAttention(8, 2, sr_ratio=2, pretrain_size=(8, 8))
    torch.testing.assert_close(F.softplus(module.temperature), torch.full((2, 1, 1), 1 / 0.24))
    assert torch.equal(module.learnable_bias, torch.zeros(2, 1, 9))


def test_full_attention_equals_explicit_softmax():
    module = LengthScaledCosineAttention(12, 2, (7, 7)).double()
    x = torch.randn(2, 3, 4, 12, dtype=torch.float64)
    q, k, v = module.qkv(x.reshape(2, 12, 12)).reshape(2, 12, 3, 2, 6).permute(2, 0, 3, 1, 4)
    q = (F.normalize(q, dim=-1) + module.query_embedding) * F.softplus(module.temperature) * math.log(12)
    bias = continuous_position_bias(module.cpb_fc1, module.cpb_fc2, (3, 4), (3, 4), (7, 7))
    weights = (q @ F.normalize(k, dim=-1).transpose(-2, -1) + bias).softmax(-1)
    expected = module.proj((weights @ v).transpose(1, 2).reshape(2, 3, 4, 12))
    torch.testing.assert_close(module(x), expected)


def test_conv_glu_gates_a_depthwise_conv():
    module = ConvGlu(6, 4).double()
    x = torch.randn(2, 5, 3, 6, dtype=torch.float64)
    value, gate = module.fc1(x).split(4, dim=-1)
    conv = F.conv2d(value.permute(0, 3, 1, 2), module.dwconv.weight, module.dwconv.bias, padding=1, groups=4)
    expected = module.fc2(F.gelu(conv).permute(0, 2, 3, 1) * gate)
    torch.testing.assert_close(module(x), expected)
    assert module.dwconv.weight.shape == (4, 1, 3, 3)
