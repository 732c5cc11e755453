"""The op dispatcher (priorities, devices, packages, portability, forcing, recording, FX leaves) and the fast
paths of the basic attention op against their reference."""
import pytest
import timm.layers
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from visionzoo.ops import (
    REFERENCE,
    Op,
    _dispatch,
    get_op,
    known_backends,
    list_ops,
    portable_only,
    record_backends,
    scaled_dot_product_attention,
    sdpa_reference,
    use_backend,
)
from visionzoo.ops._cpp import cpu_kernels_available
from visionzoo.ops.window import pad_to_windows, window_attention


@pytest.fixture
def scratch_registry(monkeypatch):
    """Ops made in a test are forgotten after it: the registry is a copy for its duration."""
    monkeypatch.setattr(_dispatch, "_OPS", dict(_dispatch._OPS))


def _doubling_op(name: str) -> Op:
    return Op(name, lambda x: x * 2)


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


def test_dispatcher_falls_back_when_fast_path_does_not_apply(scratch_registry):
    calls = []
    op = _doubling_op("test_only_double")

    @op.register("positive_only", priority=1, portable=True, supports=lambda x: bool((x > 0).all()))
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
    with use_backend("auto"):  # a block's choice wins over the process's
        assert op.select(q, q, q) is not op.reference


def test_environment_variable_naming_no_backend_is_an_error(monkeypatch):
    monkeypatch.setenv("VZ_OPS_BACKEND", "sdpaa")
    q = torch.randn(1, 1, 4, 8)
    with pytest.raises(ValueError, match=r"VZ_OPS_BACKEND='sdpaa' names no ops backend; valid backends: auto, "
                                         r"reference, .*sdpa"):
        scaled_dot_product_attention(q, q, q)
    with pytest.raises(ValueError, match="backend 'trition' names no ops backend"):
        with use_backend("trition"):
            pass


def test_auto_takes_the_highest_priority_backend_that_accepts_the_call(scratch_registry):
    op = _doubling_op("test_only_priorities")
    op.register("low", priority=1, portable=True)(lambda x: x + x)
    op.register("high", priority=5, portable=True, supports=lambda x: bool((x > 0).all()))(lambda x: 2 * x)
    positive, negative = torch.ones(2), -torch.ones(2)
    assert op.select(positive) is op.backends["high"].fn
    assert op.select(negative) is op.backends["low"].fn
    with use_backend("low"):
        assert op.select(positive) is op.backends["low"].fn


def test_backends_for_other_devices_or_missing_packages_are_passed_over(scratch_registry):
    op = _doubling_op("test_only_requirements")
    op.register("gpu_only", priority=3, devices=("cuda",), portable=True)(lambda x: 2 * x)
    op.register("needs_package", priority=2, requires=("no_such_package_for_visionzoo",), portable=True)(
        lambda x: 2 * x)
    op.register("plain", priority=1, portable=True)(lambda x: x + x)
    x = torch.ones(3)
    assert not op.backends["needs_package"].importable
    assert op.select(x) is op.backends["plain"].fn
    with pytest.raises(ValueError, match="'gpu_only' of op 'test_only_requirements' runs on cuda, not cpu"):
        op(x, backend="gpu_only")
    with pytest.raises(ValueError, match="needs the package.s. no_such_package_for_visionzoo: pip install"):
        op(x, backend="needs_package")
    with use_backend("gpu_only"):  # a block-wide choice that cannot run here falls back to the reference
        assert op.select(x) is op.reference


def test_package_lookups_are_cached(monkeypatch):
    calls = []

    def counting_find_spec(name):
        calls.append(name)
        return None

    monkeypatch.setattr(_dispatch.importlib.util, "find_spec", counting_find_spec)
    _dispatch.package_importable.cache_clear()
    try:
        assert not _dispatch.package_importable("a_package_nobody_has")
        assert not _dispatch.package_importable("a_package_nobody_has")
    finally:
        _dispatch.package_importable.cache_clear()
    assert calls == ["a_package_nobody_has"]


def test_portable_only_passes_over_backends_that_do_not_export(scratch_registry):
    op = _doubling_op("test_only_portability")
    op.register("custom_kernel", priority=2, portable=False)(lambda x: 2 * x)
    op.register("standard_ops", priority=1, portable=True)(lambda x: x + x)
    x = torch.ones(2)
    assert op.select(x) is op.backends["custom_kernel"].fn
    with portable_only():
        assert op.select(x) is op.backends["standard_ops"].fn
        with pytest.raises(ValueError, match="'custom_kernel' of op 'test_only_portability' is not portable"):
            op(x, backend="custom_kernel")
    assert op.select(x) is op.backends["custom_kernel"].fn


def test_shipped_fast_backends_keep_todays_cpu_choices():
    chosen = {}
    with record_backends() as ran:
        for name in list_ops():
            op = get_op(name)
            for sample in op.samples():
                op(*sample.args, **sample.kwargs)
        chosen = dict(ran)
    # channels-first attention and deformable conv keep the reference on the CPU, where it measured faster.
    assert chosen == {
        "aggregated_attention": ["shifted"], "ball_query": ["topk"], "channel_attention": ["grouped_bmm"],
        "channels_first_attention": ["reference"], "deform_conv2d": ["reference"],
        "farthest_point_sample": ["custom_op"], "knn_point": ["topk"],
        "gated_positional_attention": ["sdpa_split"], "halo_attention": ["blocked_bmm"],
        "hilo_attention": ["sdpa"], "scaled_dot_product_attention": ["sdpa"], "window_attention": ["sdpa"],
        "strip_attention": ["conv_bmm"],
        "spectral_gating": ["fft"],
        "sparse_topk_attention": ["kept_keys_cpp" if cpu_kernels_available() else "sdpa"],
        "predicted_top_keys": ["cpp" if cpu_kernels_available() else "reference"],
        "neighborhood_attention": ["tiled_sdpa"], "neighborhood_av": ["tiled_bmm"], "neighborhood_qk": ["tiled_bmm"],
    }


def test_record_backends_notes_each_ops_choice_once():
    q = torch.randn(1, 1, 4, 8)
    with record_backends() as ran:
        scaled_dot_product_attention(q, q, q)
        scaled_dot_product_attention(q, q, q)
        scaled_dot_product_attention(q, q, q, backend=REFERENCE)
    assert ran == {"scaled_dot_product_attention": ["sdpa", "reference"]}
    scaled_dot_product_attention(q, q, q)
    assert ran == {"scaled_dot_product_attention": ["sdpa", "reference"]}


def test_known_backends_lists_every_backend_once():
    names = known_backends()
    assert names[:2] == ["auto", REFERENCE] and len(names) == len(set(names))
    assert {"sdpa", "blocked_bmm", "torchvision"} <= set(names)


class _WindowBlock(nn.Module):
    """Pads to whole windows with a shape-dependent branch, then calls an op: neither is traceable by FX."""

    def __init__(self):
        super().__init__()
        self.qkv = nn.Linear(6, 12)

    def forward(self, x):
        padded = pad_to_windows(x, (2, 2))
        out = window_attention(padded, self.qkv.weight, self.qkv.bias, (2, 2), 2)
        return out[:, : x.shape[1], : x.shape[2]]


def test_ops_and_shape_helpers_are_fx_leaves():
    block = _WindowBlock()
    traced = torch.fx.symbolic_trace(block)
    targets = [node.target for node in traced.graph.nodes if node.op == "call_function"]
    assert window_attention in targets and pad_to_windows in targets
    x = torch.randn(1, 5, 3, 6)
    torch.testing.assert_close(traced(x), block(x))
    # The dispatcher runs when the graph runs, so forcing a backend still applies.
    with record_backends() as ran:
        traced(x)
    assert ran == {"window_attention": ["sdpa"]}
    assert window_attention in timm.layers.get_notrace_functions()
    assert pad_to_windows in timm.layers.get_notrace_functions()


def test_unknown_op_name_lists_known_ops():
    with pytest.raises(KeyError, match="scaled_dot_product_attention"):
        get_op("no_such_op")
    assert "scaled_dot_product_attention" in list_ops()
