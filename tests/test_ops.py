"""The op dispatcher and the fast paths of the basic attention op against their reference."""
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from visionzoo.ops import REFERENCE, Op, get_op, list_ops, scaled_dot_product_attention, sdpa_reference, use_backend


@st.composite
def attention_shapes(draw):
    batch = draw(st.integers(1, 3))
    heads = draw(st.integers(1, 4))
    queries = draw(st.integers(1, 37))
    keys = draw(st.integers(1, 41))
    qk_dim = draw(st.integers(1, 33))
    v_dim = draw(st.integers(1, 19))
    bias = draw(st.sampled_from(["none", "float", "bool", "broadcast"]))
    return batch, heads, queries, keys, qk_dim, v_dim, bias


@given(attention_shapes())
def test_sdpa_fast_path_matches_reference(shape):
    batch, heads, queries, keys, qk_dim, v_dim, bias_kind = shape
    q = torch.randn(batch, heads, queries, qk_dim)
    k = torch.randn(batch, heads, keys, qk_dim)
    v = torch.randn(batch, heads, keys, v_dim)
    bias = None
    if bias_kind == "float":
        bias = torch.randn(batch, heads, queries, keys)
    elif bias_kind == "broadcast":
        bias = torch.randn(heads, 1, keys)
    elif bias_kind == "bool":
        bias = torch.rand(batch, 1, queries, keys) > 0.3
        bias[..., 0] = True  # every query keeps one key, so no row is all -inf
    expected = sdpa_reference(q, k, v, attn_bias=bias, scale=0.37)
    actual = scaled_dot_product_attention(q, k, v, attn_bias=bias, scale=0.37, backend="sdpa")
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-5)


@given(st.integers(1, 3), st.integers(1, 20), st.sampled_from([3, 5]))
def test_sdpa_fast_path_handles_other_ranks(batch, tokens, rank):
    lead = (batch,) if rank == 3 else (batch, 2, 3)
    q, k = torch.randn(*lead, tokens, 8), torch.randn(*lead, tokens + 1, 8)
    v = torch.randn(*lead, tokens + 1, 5)
    bias = torch.randn(tokens, tokens + 1)
    expected = sdpa_reference(q, k, v, attn_bias=bias)
    torch.testing.assert_close(scaled_dot_product_attention(q, k, v, attn_bias=bias, backend="sdpa"), expected)


def test_sdpa_gradients_match_reference():
    q, k, v = (torch.randn(2, 3, 9, 8, requires_grad=True) for _ in range(3))
    bias = torch.randn(3, 9, 9)
    grads = []
    for backend in (REFERENCE, "sdpa"):
        out = scaled_dot_product_attention(q, k, v, attn_bias=bias, backend=backend)
        grads.append(torch.autograd.grad(out.square().sum(), (q, k, v)))
    for ref, fast in zip(*grads):
        torch.testing.assert_close(fast, ref, rtol=1e-4, atol=1e-5)


def test_dispatcher_prefers_fast_path_and_can_be_forced_to_reference():
    op = get_op("scaled_dot_product_attention")
    q = torch.randn(1, 1, 4, 8)
    assert op.select(q, q, q) is not op.reference
    with use_backend(REFERENCE):
        assert op.select(q, q, q) is op.reference
    assert op.select(q, q, q, backend=REFERENCE) is op.reference


def test_dispatcher_falls_back_when_fast_path_does_not_apply():
    calls = []
    op = Op("test_only_double", lambda x: x * 2)

    @op.register("positive_only", supports=lambda x: bool((x > 0).all()))
    def _fast(x):
        calls.append(x)
        return x + x

    assert torch.equal(op(torch.tensor([1.0])), torch.tensor([2.0]))
    assert torch.equal(op(torch.tensor([-1.0])), torch.tensor([-2.0]))
    assert len(calls) == 1
    with pytest.raises(ValueError, match="does not support"):
        op(torch.tensor([-1.0]), backend="positive_only")
    with pytest.raises(ValueError, match="no backend 'triton'"):
        op(torch.tensor([1.0]), backend="triton")


def test_environment_variable_forces_reference(monkeypatch):
    op = get_op("scaled_dot_product_attention")
    q = torch.randn(1, 1, 4, 8)
    monkeypatch.setenv("VZ_OPS_BACKEND", REFERENCE)
    assert op.select(q, q, q) is op.reference


def test_unknown_op_name_lists_known_ops():
    with pytest.raises(KeyError, match="scaled_dot_product_attention"):
        get_op("no_such_op")
    assert "scaled_dot_product_attention" in list_ops()
