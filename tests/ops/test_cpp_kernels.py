"""The JIT-built C++ CPU kernels (visionzoo/ops/cpu/): Sparsifiner's key selection and attention over kept keys.

Both equal their references (the selection exactly: same keys; the attention within 1e-5) on float32 and float64,
contiguous or not, with tied scores, keep rates down to one key and up to every key. The first test in a fresh
cache builds the extension (about 25 s on two cores), which every later test reuses.
"""
from __future__ import annotations

import math
import warnings

import pytest
import timm
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from visionzoo.ops import REFERENCE, _cpp, record_backends, use_backend
from visionzoo.ops.sparse_attention import (
    approximate_attention,
    predicted_top_keys,
    sparse_topk_attention,
    sparse_topk_attention_reference,
)

pytestmark = pytest.mark.skipif(not _cpp.cpu_kernels_available(), reason="the C++ kernels cannot be built here")


def _canonical_top_keys(approx: torch.Tensor, kept: int) -> torch.Tensor:
    """The K largest scores per row, tied scores by lower key index (what the kernel promises), sorted."""
    return approx.sort(dim=-1, descending=True, stable=True).indices[..., :kept].sort(dim=-1).values


@st.composite
def predictor_calls(draw):
    shape = (draw(st.integers(1, 2)), draw(st.integers(1, 3)), draw(st.integers(1, 12)))
    reduced = draw(st.integers(1, 40))  # more coefficients than keys too
    keys = draw(st.integers(1, 70))
    coef_topk = draw(st.integers(1, reduced))
    keep_rate = draw(st.sampled_from([1.0, 0.5, 0.25, 0.1, 0.01]))
    ties = draw(st.sampled_from(["none", "zeros", "repeated"]))
    dtype = draw(st.sampled_from([torch.float32, torch.float64]))
    return shape, reduced, keys, coef_topk, keep_rate, ties, dtype, draw(st.booleans()), draw(st.integers(0, 2**16))


def _predictor_inputs(shape, reduced, keys, ties, dtype, contiguous, seed):
    generator = torch.Generator().manual_seed(seed)
    # One extra query column, dropped: the model's coefficients are a slice like this one, not contiguous.
    logits = torch.randn(*shape[:2], shape[2] + 1, reduced, generator=generator, dtype=dtype)
    basis = torch.rand(reduced, keys, generator=generator, dtype=dtype)
    if ties == "zeros":  # the thresholded basis: most scores exactly zero
        basis = basis.masked_fill(basis < 0.8, 0.0)
    elif ties == "repeated":  # few distinct coefficients and basis entries: tied nonzero scores and coefficients
        logits, basis = logits.round(), (basis * 3).round() / 3
    coefficients = logits.softmax(dim=-1)
    coefficients = coefficients[:, :, 1:] if not contiguous else coefficients[:, :, 1:].contiguous()
    return coefficients, basis


@settings(max_examples=60, deadline=None)
@given(call=predictor_calls())
def test_cpp_key_selection_keeps_the_references_keys(call):
    shape, reduced, keys, coef_topk, keep_rate, ties, dtype, contiguous, seed = call
    coefficients, basis = _predictor_inputs(shape, reduced, keys, ties, dtype, contiguous, seed)
    kept = max(1, math.ceil(keep_rate * keys))
    with torch.inference_mode():
        chosen = predicted_top_keys(coefficients, basis, coef_topk, keep_rate, backend="cpp")
        expected = _canonical_top_keys(approximate_attention(coefficients, basis, coef_topk), kept)
        reference = predicted_top_keys(coefficients, basis, coef_topk, keep_rate, backend=REFERENCE)
    assert chosen.shape == (*shape, kept) and chosen.dtype == torch.int64
    assert torch.equal(chosen.sort(dim=-1).values, expected)
    if ties != "repeated":  # the reference's topk ranks zeros by index but other tied scores in no promised order
        assert torch.equal(reference.sort(dim=-1).values, expected)


def test_cpp_key_selection_takes_tied_keys_and_coefficients_by_lower_index():
    coefficients = torch.tensor([0.1, 0.3, 0.3, 0.3]).view(1, 1, 1, 4)  # the top two: indices 1 and 2
    basis = torch.zeros(4, 9)
    basis[1, [2, 4, 6]] = 1.0
    basis[2, [4, 5]] = 1.0
    basis[3, 7] = 5.0  # a tied coefficient past the first two: left out
    # Scores: key 4 = 0.6, keys 2, 5, 6 = 0.3 (tied), the rest 0 (tied): keep 5 = key 4, keys 2, 5, 6, key 0.
    chosen = predicted_top_keys(coefficients, basis, 2, 0.5, backend="cpp")
    assert chosen.sort(dim=-1).values.flatten().tolist() == [0, 2, 4, 5, 6]
    chosen = predicted_top_keys(coefficients, basis, 2, 0.3, backend="cpp")
    assert chosen.sort(dim=-1).values.flatten().tolist() == [2, 4, 5]


@st.composite
def attention_calls(draw):
    batch, heads = draw(st.integers(1, 2)), draw(st.integers(1, 3))
    keys = draw(st.integers(1, 40))
    dense_queries = draw(st.integers(0, 1))
    queries = draw(st.integers(dense_queries + 1, 30))
    kept = max(1, math.ceil(draw(st.sampled_from([1.0, 0.5, 0.25, 0.1, 0.01])) * keys))
    width = draw(st.sampled_from([64, 32, 16, 5]))  # 16·n takes the vector path, 5 the plain loops
    value_width = draw(st.sampled_from([width, 3]))
    dtype = draw(st.sampled_from([torch.float32, torch.float64]))
    return batch, heads, queries, keys, kept, dense_queries, width, value_width, dtype, draw(st.booleans())


@settings(max_examples=60, deadline=None)
@given(call=attention_calls())
def test_cpp_attention_equals_the_reference(call):
    batch, heads, queries, keys, kept, dense_queries, width, value_width, dtype, packed = call
    if packed:  # q, k, v as the model makes them: strided views of one (B, N, 3, H, E) projection
        q, k, v = torch.randn(batch, max(queries, keys), 3, heads, width, dtype=dtype).permute(2, 0, 3, 1, 4)
        q, k, v = q[:, :, :queries], k[:, :, :keys], v[:, :, :keys, :value_width]
    else:
        q = torch.randn(batch, heads, queries, width, dtype=dtype)
        k = torch.randn(batch, heads, keys, width, dtype=dtype)
        v = torch.randn(batch, heads, keys, value_width, dtype=dtype)
    index = torch.rand(batch, heads, queries - dense_queries, keys).topk(kept, dim=-1).indices
    with torch.inference_mode():
        actual = sparse_topk_attention(q, k, v, index, scale=0.3, dense_queries=dense_queries, backend="kept_keys_cpp")
        expected = sparse_topk_attention_reference(q, k, v, index, scale=0.3, dense_queries=dense_queries)
    assert actual.shape == expected.shape and actual.dtype == dtype
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-5)


def test_cpp_attention_runs_for_inference_and_kept_keys_for_training():
    q, k, v = (torch.randn(1, 2, 197, 16) for _ in range(3))
    index = torch.rand(1, 2, 196, 197).topk(50, dim=-1).indices
    cpp = sparse_topk_attention.implementation("kept_keys_cpp")
    assert sparse_topk_attention.select(q, k, v, index, dense_queries=1) is cpp
    with torch.inference_mode():
        assert sparse_topk_attention.select(q, k, v, index, dense_queries=1) is cpp
    q.requires_grad_()
    assert sparse_topk_attention.select(q, k, v, index, dense_queries=1) is sparse_topk_attention.implementation(
        "kept_keys"), "training needs a backward: the C++ kernel has none"
    with torch.no_grad():
        assert sparse_topk_attention.select(q, k, v, index, dense_queries=1) is cpp


@pytest.mark.parametrize("img_size, depth", [(224, 2), (384, 1)])
def test_model_logits_with_the_cpp_kernels_equal_the_reference_paths(img_size, depth):
    torch.manual_seed(0)
    model = timm.create_model("vz_sparsifiner_deit_tiny", img_size=img_size, depth=depth, num_classes=10).eval()
    x = torch.randn(1, 3, img_size, img_size)
    with torch.inference_mode():
        with record_backends() as ran:
            fast = model(x)
        with use_backend(REFERENCE):
            reference = model(x)
    assert ran == {"predicted_top_keys": ["cpp"], "sparse_topk_attention": ["kept_keys_cpp"]}
    torch.testing.assert_close(fast, reference, rtol=1e-5, atol=1e-5)


def test_without_a_compiler_the_ops_fall_back_to_the_reference_with_one_warning(monkeypatch):
    def no_compiler():
        raise RuntimeError("Ninja is required to load C++ extensions")

    monkeypatch.setattr(_cpp, "_build", no_compiler)
    _cpp._load.cache_clear()
    try:
        coefficients, basis = _predictor_inputs((1, 2, 6), 5, 30, "zeros", torch.float32, True, 0)
        q, k, v = (torch.randn(1, 2, 7, 8) for _ in range(3))
        index = torch.rand(1, 2, 6, 7).topk(3, dim=-1).indices
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            chosen = predicted_top_keys.implementation("cpp")(coefficients, basis, 2, 0.25)
            out = sparse_topk_attention.implementation("kept_keys_cpp")(q, k, v, index, dense_queries=1)
            assert not _cpp.cpu_kernels_available()
            assert predicted_top_keys.select(coefficients, basis, 2, 0.25) is predicted_top_keys.reference
        messages = [str(w.message) for w in caught if "C++ CPU kernels" in str(w.message)]
        assert len(messages) == 1 and "Ninja is required" in messages[0] and "pip install ninja" in messages[0]
        assert torch.equal(chosen, predicted_top_keys(coefficients, basis, 2, 0.25, backend=REFERENCE))
        torch.testing.assert_close(out, sparse_topk_attention_reference(q, k, v, index, dense_queries=1))
        with pytest.raises(_cpp.CppKernelsUnavailable, match="Ninja is required"):
            _cpp.cpu_kernels()
    finally:
        _cpp._load.cache_clear()


class _SelectAndAttend(torch.nn.Module):
    def forward(self, coefficients, basis, q, k, v):
        index = predicted_top_keys(coefficients, basis, 2, 0.25)
        return sparse_topk_attention(q, k, v, index, dense_queries=1)


def test_an_export_traces_the_portable_paths_not_the_kernels():
    coefficients, basis = _predictor_inputs((1, 2, 69), 5, 70, "zeros", torch.float32, False, 0)
    q, k, v = (torch.randn(1, 2, 70, 16) for _ in range(3))
    with torch.no_grad():
        program = torch.export.export(_SelectAndAttend(), (coefficients, basis, q, k, v))
        eager = _SelectAndAttend()(coefficients, basis, q, k, v)
    called = {str(node.target) for node in program.graph.nodes if node.op == "call_function"}
    assert not [target for target in called if "visionzoo" in target], called
    torch.testing.assert_close(program.module()(coefficients, basis, q, k, v), eager, rtol=1e-5, atol=1e-5)


def test_build_name_follows_the_cpus_instruction_set(tmp_path):
    # -march=native binaries from one CPU must not load on another that shares the cache directory.
    avx2, avx512 = tmp_path / "avx2", tmp_path / "avx512"
    avx2.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx avx2 fma\n")
    avx512.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx avx2 fma avx512f avx512bw\n")
    assert _cpp._instruction_set_tag(avx2) != _cpp._instruction_set_tag(avx512)
    assert _cpp._instruction_set_tag(avx2) == _cpp._instruction_set_tag(avx2)
    assert _cpp.EXTENSION_NAME.endswith(_cpp._instruction_set_tag())
