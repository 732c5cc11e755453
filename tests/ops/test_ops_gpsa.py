"""Gated positional self-attention op: the fast path computes the reference's function."""
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils._python_dispatch import TorchDispatchMode

from visionzoo.ops.gpsa import (
    flush_subnormals,
    gated_positional_attention,
    gpsa_reference,
    relative_position_features,
)


def _inputs(batch, heads, height, width, head_dim, value_dim, seed, dtype=torch.float64):
    generator = torch.Generator().manual_seed(seed)
    tokens = height * width

    def rand(*shape, scale=1.0):
        return (torch.randn(*shape, generator=generator, dtype=dtype) * scale)

    q, k = rand(batch, heads, tokens, head_dim), rand(batch, heads, tokens, head_dim)
    v = rand(batch, heads, tokens, value_dim)
    weight = rand(heads, 3)
    pos_logits = torch.einsum("nmf,hf->hnm", relative_position_features(height, width, dtype=dtype), weight)
    gating = rand(heads, scale=3.0)
    return q, k, v, pos_logits, gating


@settings(max_examples=25, deadline=None)
@given(
    batch=st.integers(1, 3),
    heads=st.integers(1, 5),
    height=st.integers(1, 6),
    width=st.integers(1, 6),
    head_dim=st.integers(1, 9),
    value_dim=st.integers(1, 9),
    seed=st.integers(0, 2**16),
)
def test_fast_path_matches_reference(batch, heads, height, width, head_dim, value_dim, seed):
    q, k, v, pos_logits, gating = _inputs(batch, heads, height, width, head_dim, value_dim, seed)
    expected = gated_positional_attention(q, k, v, pos_logits, gating, backend="reference")
    actual = gated_positional_attention(q, k, v, pos_logits, gating, backend="sdpa_split")
    torch.testing.assert_close(actual, expected, rtol=1e-10, atol=1e-10)


@settings(max_examples=10, deadline=None)
@given(batch=st.integers(1, 2), heads=st.integers(1, 4), height=st.integers(1, 5), width=st.integers(2, 5),
       seed=st.integers(0, 2**16))
def test_fast_path_matches_reference_float32_with_scale(batch, heads, height, width, seed):
    q, k, v, pos_logits, gating = _inputs(batch, heads, height, width, 8, 8, seed, dtype=torch.float32)
    expected = gated_positional_attention(q, k, v, pos_logits, gating, scale=0.3, backend="reference")
    actual = gated_positional_attention(q, k, v, pos_logits, gating, scale=0.3, backend="sdpa_split")
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-5)


def test_reference_matches_per_head_formula():
    q, k, v, pos_logits, gating = _inputs(2, 3, 2, 3, 4, 5, seed=0)
    out = gpsa_reference(q, k, v, pos_logits, gating, scale=0.5)
    for head in range(3):
        gate = torch.sigmoid(gating[head])
        content = torch.softmax(q[:, head] @ k[:, head].transpose(-1, -2) * 0.5, dim=-1)
        mixed = (1 - gate) * content + gate * torch.softmax(pos_logits[head], dim=-1)
        mixed = mixed / mixed.sum(-1, keepdim=True)
        torch.testing.assert_close(out[:, head], mixed @ v[:, head])


def test_gate_extremes_select_one_map():
    q, k, v, pos_logits, _ = _inputs(1, 2, 3, 3, 4, 4, seed=1)
    content_only = gated_positional_attention(q, k, v, pos_logits, torch.full((2,), -60.0, dtype=torch.float64))
    positional_only = gated_positional_attention(q, k, v, pos_logits, torch.full((2,), 60.0, dtype=torch.float64))
    torch.testing.assert_close(content_only, torch.softmax(q @ k.transpose(-1, -2) * 0.5, -1) @ v)
    torch.testing.assert_close(positional_only, torch.softmax(pos_logits, -1) @ v)


def test_dispatch_falls_back_to_reference_where_split_is_inexact():
    q, k, v, pos_logits, gating = _inputs(2, 2, 2, 2, 4, 4, seed=2)
    assert gated_positional_attention.select(q, k, v, pos_logits, gating) is not gpsa_reference
    assert gated_positional_attention.select(q, k, v, pos_logits, gating, dropout_p=0.1) is gpsa_reference
    batched_logits = pos_logits.expand(2, -1, -1, -1)
    assert gated_positional_attention.select(q, k, v, batched_logits, gating) is gpsa_reference
    with pytest.raises(ValueError, match="does not support"):
        gated_positional_attention(q, k, v, pos_logits, gating, dropout_p=0.1, backend="sdpa_split")


@pytest.mark.parametrize("height, width", [(1, 1), (3, 3), (2, 5), (4, 3)])
def test_relative_position_features_follow_the_definition(height, width):
    features = relative_position_features(height, width)
    assert features.shape == (height * width, height * width, 3)
    for query in range(height * width):
        for key in range(height * width):
            delta_x = key % width - query % width
            delta_y = key // width - query // width
            assert features[query, key].tolist() == [delta_x, delta_y, delta_x**2 + delta_y**2]


def test_relative_position_features_match_timm_on_square_grids():
    from timm.models.convit import GPSA

    for side in (1, 4, 14):
        expected = GPSA(8, num_heads=2).get_rel_indices(side * side)[0]
        assert torch.equal(relative_position_features(side, side), expected)


class RecordMatmulOperands(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.operands: list[torch.Tensor] = []

    def __torch_dispatch__(self, function, types, args=(), kwargs=None):
        if function in (torch.ops.aten.bmm.default, torch.ops.aten.mm.default):
            self.operands.extend(arg for arg in args if isinstance(arg, torch.Tensor))
        return function(*args, **(kwargs or {}))


def _has_subnormals(tensor: torch.Tensor) -> bool:
    return bool(((tensor != 0) & (tensor.abs() < torch.finfo(tensor.dtype).tiny)).any())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fast_path_hands_its_matmuls_no_subnormal_weight(dtype):
    # Two ConViT-style local heads on a 14x14 grid: their positional softmax underflows to subnormals far from the
    # centre, which x86 matmuls run an order of magnitude slower on.
    features = relative_position_features(14, 14, dtype=torch.float64)
    local_heads = torch.tensor([[0.0, 0.0, -1.0], [2.0, -2.0, -1.0]], dtype=torch.float64)
    pos_logits = torch.einsum("nmf,hf->hnm", features, local_heads).to(dtype)
    assert _has_subnormals(pos_logits.softmax(dim=-1)), "the case must produce subnormal weights"
    q, k, v, _, gating = _inputs(2, 2, 14, 14, 4, 4, seed=3, dtype=dtype)
    recorder = RecordMatmulOperands()
    with recorder:
        out = gated_positional_attention(q, k, v, pos_logits, gating, backend="sdpa_split")
    assert recorder.operands, "the positional product should run as a matmul"
    assert not any(_has_subnormals(operand) for operand in recorder.operands)
    expected = gpsa_reference(q.double(), k.double(), v.double(), pos_logits.double(), gating.double())
    tolerance = 2e-2 if dtype == torch.bfloat16 else 1e-5
    torch.testing.assert_close(out.double(), expected, rtol=tolerance, atol=tolerance)


def test_flush_subnormals_zeroes_only_subnormals_and_leaves_float16():
    tiny = torch.finfo(torch.float32).tiny
    values = torch.tensor([tiny / 4, -tiny / 4, tiny, -tiny, 0.5, 0.0])
    assert flush_subnormals(values).tolist() == [0.0, 0.0, tiny, -tiny, 0.5, 0.0]
    half = torch.tensor([1e-6, 0.5], dtype=torch.float16)
    assert torch.equal(flush_subnormals(half), half)
