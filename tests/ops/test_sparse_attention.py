"""sparse_topk_attention: every backend equals the dense masked reference (Sparsifiner's semantics)."""
from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from visionzoo.ops import REFERENCE
from visionzoo.ops.sparse_attention import keep_mask, sparse_topk_attention

BACKENDS = ["gather", "sdpa", "kept_keys"]


@st.composite
def sparse_calls(draw):
    batch = draw(st.integers(1, 3))
    heads = draw(st.integers(1, 3))
    keys = draw(st.integers(1, 40))
    dense_queries = draw(st.integers(0, 1))
    queries = draw(st.integers(dense_queries + 1, 40))
    keep_rate = draw(st.sampled_from([1.0, 0.5, 0.25, 0.1, 0.01]))
    kept = max(1, math.ceil(keep_rate * keys))
    ties = draw(st.booleans())
    return batch, heads, queries, keys, kept, dense_queries, ties, draw(st.integers(1, 17))


def _call(batch, heads, queries, keys, kept, dense_queries, ties, width, requires_grad=False):
    q, k, v = (torch.randn(batch, heads, n, width, dtype=torch.float64, requires_grad=requires_grad)
               for n in (queries, keys, keys))
    # Rounded scores tie often: topk must still name K distinct keys, whichever of the tied ones it picks.
    scores = torch.randn(batch, heads, queries - dense_queries, keys)
    if ties:
        scores = scores.round()
    return q, k, v, scores.topk(kept, dim=-1).indices


# gather (never auto-chosen: sdpa outranks it everywhere) is the slowest to check: slow run only.
@pytest.mark.parametrize("backend", [pytest.param("gather", marks=pytest.mark.slow), "sdpa", "kept_keys"])
@settings(max_examples=25, deadline=None)  # three backends share the default-run budget
@given(call=sparse_calls())
def test_fast_paths_equal_reference_forward_and_backward(backend, call):
    *shape, dense_queries, ties, width = call
    q, k, v, index = _call(*shape, dense_queries, ties, width, requires_grad=True)
    expected = sparse_topk_attention(q, k, v, index, dense_queries=dense_queries, backend=REFERENCE)
    # The implementation itself: auto mode and a forced choice skip kept_keys on calls this small.
    actual = sparse_topk_attention.implementation(backend)(q, k, v, index, dense_queries=dense_queries)
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-5)
    upstream = torch.randn_like(expected)
    grads = torch.autograd.grad(expected, (q, k, v), upstream)
    fast_grads = torch.autograd.grad(actual, (q, k, v), upstream)
    for name, fast, reference in zip("qkv", fast_grads, grads):
        torch.testing.assert_close(fast, reference, rtol=1e-5, atol=1e-5, msg=f"d{name} differs ({backend})")


def test_tied_scores_keep_exactly_k_keys_per_query():
    index = torch.zeros(2, 3, 5, 11).topk(4, dim=-1).indices  # every score tied
    mask = keep_mask(index, 11, dense_queries=1)
    assert mask.shape == (2, 3, 6, 11)
    assert mask[:, :, 0].all(), "the dense (class-token) row attends to every key"
    assert (mask[:, :, 1:].sum(-1) == 4).all()


def test_keep_rate_one_is_dense_attention():
    q, k, v = (torch.randn(1, 2, 9, 8, dtype=torch.float64) for _ in range(3))
    everything = torch.arange(9).flip(0).expand(1, 2, 8, 9)  # every key, in another order
    expected = torch.softmax(q @ k.transpose(-2, -1) * 8**-0.5, dim=-1) @ v
    for backend in [REFERENCE, *BACKENDS]:
        out = sparse_topk_attention.implementation(backend)(q, k, v, everything, dense_queries=1)
        torch.testing.assert_close(out, expected, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("backend", BACKENDS)
def test_one_key_per_query_copies_that_value(backend):
    q, k, v = (torch.randn(2, 1, 6, 4) for _ in range(3))
    index = torch.randint(0, 6, (2, 1, 6, 1))
    out = sparse_topk_attention.implementation(backend)(q, k, v, index)
    torch.testing.assert_close(out, torch.gather(v, 2, index.expand(-1, -1, -1, 4)))


def test_auto_mode_takes_kept_keys_only_where_it_measured_faster():
    def chosen(keys, kept):
        # Requiring a gradient (training): the C++ backend, which has no backward, stands aside.
        q, k, v = (torch.randn(1, 1, keys, 8, requires_grad=True) for _ in range(3))
        index = torch.rand(1, 1, keys - 1, keys).topk(kept, dim=-1).indices
        return sparse_topk_attention.select(q, k, v, index, dense_queries=1)

    kept_keys = sparse_topk_attention.implementation("kept_keys")
    assert chosen(197, 50) is kept_keys
    assert chosen(197, 197) is not kept_keys, "every key kept is dense attention: the fused kernel is faster"
    assert chosen(50, 13) is not kept_keys, "below 64 keys the dense products are cheaper"


@pytest.mark.parametrize("bad, message", [
    (dict(index_shape=(1, 2, 5, 2)), "key_index must be"),
    (dict(index_shape=(1, 2, 6, 0)), "1 <= K"),
    (dict(index_shape=(1, 2, 6, 8)), "1 <= K"),
    (dict(q_shape=(2, 6, 4)), "sparse_topk_attention takes"),
])
def test_bad_shapes_name_the_expected_ones(bad, message):
    q = torch.randn(*bad.get("q_shape", (1, 2, 6, 4)))
    k, v = torch.randn(1, 2, 7, 4), torch.randn(1, 2, 7, 4)
    index = torch.zeros(bad.get("index_shape", (1, 2, 6, 2)), dtype=torch.long)
    with pytest.raises(ValueError, match=message):
        sparse_topk_attention(q, k, v, index, backend="gather")
