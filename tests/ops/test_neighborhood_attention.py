"""Neighbourhood attention against a loop transcription of NATTEN's per-query rule, and its backends against the
reference: odd maps, maps just larger than the window, the dilations the released NAT/DiNAT models use, batch 1,
gradients including the bias table."""
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from visionzoo.ops import REFERENCE, neighborhood_attention, neighborhood_av, neighborhood_qk
from visionzoo.ops.neighborhood_attention import neighbor_indices


def _natten_window(index: int, length: int, kernel: int, dilation: int) -> tuple[list[int], list[int]]:
    """NATTEN's window of one query on one axis, one position at a time: (key positions, bias rows)."""
    group, step = index % dilation, index // dilation
    group_length = len(range(group, length, dilation))
    start = max(step - kernel // 2, 0)
    if start + kernel > group_length:
        start = group_length - kernel
    keys = [group + (start + m) * dilation for m in range(kernel)]
    return keys, [start + m - step + kernel - 1 for m in range(kernel)]


def _loop_attention(q, k, v, kernel, dilation, rpb, scale):
    batch, heads, height, width, _ = q.shape
    out = torch.zeros_like(v)
    for i in range(height):
        key_rows, bias_rows = _natten_window(i, height, kernel, dilation)
        for j in range(width):
            key_cols, bias_cols = _natten_window(j, width, kernel, dilation)
            keys = k[:, :, key_rows][:, :, :, key_cols].flatten(2, 3)
            values = v[:, :, key_rows][:, :, :, key_cols].flatten(2, 3)
            logits = torch.einsum("bhd,bhnd->bhn", q[:, :, i, j] * scale, keys)
            if rpb is not None:
                logits = logits + rpb[:, bias_rows][:, :, bias_cols].flatten(1)
            out[:, :, i, j] = torch.einsum("bhn,bhnd->bhd", logits.softmax(-1), values)
    return out


@st.composite
def neighborhoods(draw, dilations=(1, 2, 3, 4, 8)):
    kernel = draw(st.sampled_from([1, 3, 5, 7]))
    dilation = draw(st.sampled_from(dilations))
    height = kernel * dilation + draw(st.integers(0, 4))
    width = kernel * dilation + draw(st.integers(0, 4))
    batch, heads, dim = draw(st.integers(1, 2)), draw(st.integers(1, 3)), draw(st.integers(1, 6))
    return batch, heads, height, width, dim, kernel, dilation, draw(st.booleans())


def _inputs(batch, heads, height, width, dim, kernel, bias, dtype=torch.float32):
    q, k, v = (torch.randn(batch, heads, height, width, dim, dtype=dtype) for _ in range(3))
    rpb = torch.randn(heads, 2 * kernel - 1, 2 * kernel - 1, dtype=dtype) if bias else None
    return q, k, v, rpb


@settings(max_examples=12, deadline=None)
@given(neighborhoods())
def test_reference_and_tiled_path_follow_nattens_rule(case):
    batch, heads, height, width, dim, kernel, dilation, bias = case
    q, k, v, rpb = _inputs(batch, heads, height, width, dim, kernel, bias)
    expected = _loop_attention(q, k, v, kernel, dilation, rpb, scale=0.6)
    for backend in (REFERENCE, "tiled_sdpa"):
        actual = neighborhood_attention(q, k, v, kernel, dilation, rpb, scale=0.6, backend=backend)
        torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-5, msg=lambda m: f"{backend}: {m}")


def _loop_qk(q, k, kernel, dilation, rpb):
    batch, heads, height, width, _ = q.shape
    logits = torch.zeros(batch, heads, height, width, kernel * kernel, dtype=q.dtype)
    for i in range(height):
        key_rows, bias_rows = _natten_window(i, height, kernel, dilation)
        for j in range(width):
            key_cols, bias_cols = _natten_window(j, width, kernel, dilation)
            keys = k[:, :, key_rows][:, :, :, key_cols].flatten(2, 3)
            logits[:, :, i, j] = torch.einsum("bhd,bhnd->bhn", q[:, :, i, j], keys)
            if rpb is not None:
                logits[:, :, i, j] += rpb[:, bias_rows][:, :, bias_cols].flatten(1)
    return logits


# Dilations up to 3 keep the per-query loop short; 4 and 8 meet the tiled halves in the gradient test below.
@settings(max_examples=8, deadline=None)
@given(neighborhoods(dilations=(1, 2, 3)))
def test_qk_and_av_backends_follow_nattens_rule(case):
    batch, heads, height, width, dim, kernel, dilation, bias = case
    q, k, v, rpb = _inputs(batch, heads, height, width, dim, kernel, bias)
    expected_logits = _loop_qk(q, k, kernel, dilation, rpb)
    for backend in (REFERENCE, "tiled_bmm"):
        logits = neighborhood_qk(q, k, kernel, dilation, rpb, backend=backend)
        torch.testing.assert_close(logits, expected_logits, rtol=1e-5, atol=1e-5, msg=lambda m: f"qk {backend}: {m}")
    # The reference av is held to the loop through the whole op above; arbitrary weights (not a softmax) here.
    weights = torch.randn_like(expected_logits)
    expected = neighborhood_av(weights, v, kernel, dilation, backend=REFERENCE)
    actual = neighborhood_av(weights, v, kernel, dilation, backend="tiled_bmm")
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-5)


# OverLoCK's Focus-Net calls at 224 (5×5 and 13×13 on 14×14, 5×5 and 7×7 on 7×7), an odd map, DiNAT's dilations.
@pytest.mark.parametrize("kernel, dilation, size", [(13, 1, (14, 14)), (5, 1, (7, 7)), (7, 1, (8, 9)), (3, 2, (7, 11)),
                                                    (7, 2, (14, 15)), (5, 4, (20, 23)), (3, 8, (25, 24))])
def test_tiled_halves_gradients_match_reference_including_the_bias_table(kernel, dilation, size):
    grads = []
    for backend in (REFERENCE, "tiled_bmm"):
        torch.manual_seed(0)
        inputs = [t.requires_grad_() for t in _inputs(1, 2, *size, 3, kernel, bias=True, dtype=torch.float64)]
        logits = neighborhood_qk(inputs[0], inputs[1], kernel, dilation, inputs[3], backend=backend)
        out = neighborhood_av(logits.softmax(-1), inputs[2], kernel, dilation, backend=backend)
        weights = torch.linspace(-1, 1, out.numel(), dtype=out.dtype).reshape(out.shape)
        grads.append(torch.autograd.grad((out * weights).sum(), inputs))
    for name, reference, tiled in zip(("q", "k", "v", "rpb"), *grads):
        torch.testing.assert_close(tiled, reference, rtol=1e-7, atol=1e-7, msg=lambda m: f"grad {name}: {m}")
    assert grads[0][3].abs().sum() > 0


def test_tables_cached_in_inference_mode_still_serve_autograd():
    q, k, v, rpb = _inputs(1, 2, 11, 10, 3, 5, bias=True)
    with torch.inference_mode():  # the first call of a shape fills the table caches
        neighborhood_av(neighborhood_qk(q, k, 5, 2, rpb), v, 5, 2)
        neighborhood_attention(q, k, v, 5, 2, rpb)
    rpb.requires_grad_()
    out = neighborhood_av(neighborhood_qk(q, k, 5, 2, rpb).softmax(-1), v, 5, 2).sum()
    out = out + neighborhood_attention(q, k, v, 5, 2, rpb).sum()
    (grad,) = torch.autograd.grad(out, [rpb])
    assert grad.abs().sum() > 0


def test_bias_row_is_key_minus_query_not_offset_from_window_centre():
    neighbours, bias_rows = neighbor_indices(10, 7, 1)
    assert neighbours[0].tolist() == list(range(7)) and bias_rows[0].tolist() == list(range(6, 13))
    assert neighbours[9].tolist() == list(range(3, 10)) and bias_rows[9].tolist() == list(range(0, 7))
    neighbours, bias_rows = neighbor_indices(9, 3, 2)  # groups {0,2,4,6,8} and {1,3,5,7}
    assert neighbours[7].tolist() == [3, 5, 7] and bias_rows[7].tolist() == [0, 1, 2]
    assert neighbours[8].tolist() == [4, 6, 8] and bias_rows[8].tolist() == [0, 1, 2]


def test_halves_compose_to_the_op():
    q, k, v, rpb = _inputs(1, 2, 15, 17, 4, 5, bias=True)
    logits = neighborhood_qk(q * 0.5, k, 5, 3, rpb)
    assert logits.shape == (1, 2, 15, 17, 25)
    out = neighborhood_av(logits.softmax(-1), v, 5, 3)
    torch.testing.assert_close(out, neighborhood_attention(q, k, v, 5, 3, rpb, scale=0.5), rtol=1e-5, atol=1e-5)


def test_av_with_one_hot_weights_picks_that_neighbour():
    v = torch.arange(9 * 8, dtype=torch.float32).reshape(1, 1, 9, 8, 1)
    attn = torch.zeros(1, 1, 9, 8, 9)
    attn[..., 0] = 1.0  # top-left neighbour of a 3x3 window clamped inside the map
    out = neighborhood_av(attn, v, 3)[0, 0, :, :, 0]
    rows = torch.tensor([0, 0, 1, 2, 3, 4, 5, 6, 6])
    cols = torch.tensor([0, 0, 1, 2, 3, 4, 5, 5])
    assert torch.equal(out, v[0, 0, rows][:, cols, 0])


@pytest.mark.parametrize("kernel, dilation, size", [(7, 1, (8, 9)), (3, 2, (7, 11)), (7, 2, (14, 15))])
def test_tiled_gradients_match_reference_including_the_bias_table(kernel, dilation, size):
    grads = []
    for backend in (REFERENCE, "tiled_sdpa"):
        torch.manual_seed(0)
        inputs = [t.requires_grad_() for t in _inputs(1, 2, *size, 3, kernel, bias=True, dtype=torch.float64)]
        out = neighborhood_attention(*inputs[:3], kernel, dilation, inputs[3], backend=backend)
        weights = torch.linspace(-1, 1, out.numel(), dtype=out.dtype).reshape(out.shape)
        grads.append(torch.autograd.grad((out * weights).sum(), inputs))
    for name, reference, tiled in zip("qkv", *grads):
        torch.testing.assert_close(tiled, reference, rtol=1e-7, atol=1e-7, msg=lambda m: f"grad {name}: {m}")
    torch.testing.assert_close(grads[1][3], grads[0][3], rtol=1e-7, atol=1e-7)
    assert grads[0][3].abs().sum() > 0


@pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")
def test_flex_backend_computes_the_reference_in_eager_mode():
    flex = neighborhood_attention.implementation("flex")
    for sample in neighborhood_attention.samples():
        expected = neighborhood_attention.implementation(REFERENCE)(*sample.args, **sample.kwargs)
        actual = flex(*sample.args, **sample.kwargs)
        torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-5, msg=lambda m: f"{sample.label}: {m}")


@pytest.mark.parametrize("call, message", [
    (lambda: neighborhood_attention(*_inputs(1, 1, 6, 20, 2, 7, False)[:3], 7), r"6x20 map is smaller.*pad"),
    (lambda: neighborhood_attention(*_inputs(1, 1, 9, 9, 2, 3, False)[:3], 3, 4), r"3\*4 = 12"),
    (lambda: neighborhood_attention(*_inputs(1, 1, 9, 9, 2, 3, False)[:3], 4), "odd integer kernel_size"),
    (lambda: neighborhood_qk(*_inputs(1, 2, 9, 9, 2, 3, False)[:2], 3, 1, torch.zeros(2, 3, 3)),
     r"rpb must be \(heads, 2k-1, 2k-1\) = \(2, 5, 5\)"),
    (lambda: neighborhood_av(torch.zeros(1, 1, 9, 9, 8), torch.zeros(1, 1, 9, 9, 2), 3), r"H, W, k\*k\) .*k = 3"),
])
def test_bad_arguments_say_what_to_do(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_exported_tiled_path_keeps_rank_at_most_5_and_the_reference_values():
    q, k, v, rpb = _inputs(1, 2, 15, 17, 4, 5, bias=True)

    class Attend(torch.nn.Module):
        def forward(self, q, k, v):
            return neighborhood_attention(q, k, v, 5, 3, rpb, backend="tiled_sdpa")

    program = torch.export.export(Attend(), (q, k, v))
    ranks = [len(node.meta["val"].shape) for node in program.graph.nodes
             if isinstance(node.meta.get("val"), torch.Tensor)]
    assert max(ranks) <= 5  # Core ML takes rank <= 5, XNNPACK <= 6
    expected = neighborhood_attention(q, k, v, 5, 3, rpb, backend=REFERENCE)
    torch.testing.assert_close(program.module()(q, k, v), expected, rtol=1e-5, atol=1e-5)
