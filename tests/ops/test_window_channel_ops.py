"""Window attention and channel-group attention: fast paths vs references, padding, and the shared modules."""
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from visionzoo.layers.activations import InferenceInplaceGELU
from visionzoo.layers.channel_attention import ChannelGroupAttention
from visionzoo.layers.pos_embed import ConvPosEnc
from visionzoo.layers.window_attention import WindowAttention
from visionzoo.ops import REFERENCE, use_backend
from visionzoo.ops.attention import sdpa_reference
from visionzoo.ops.channel_attention import channel_attention, channel_attention_reference
from visionzoo.ops.window import (
    pad_to_windows,
    window_attention,
    window_attention_reference,
    window_partition,
    window_reverse,
)


@st.composite
def window_problems(draw):
    batch = draw(st.integers(1, 3))
    window = (draw(st.integers(1, 5)), draw(st.integers(1, 5)))
    rows, cols = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    heads = draw(st.integers(1, 3))
    head_dim = draw(st.integers(1, 9))
    return batch, window, rows * window[0], cols * window[1], heads, head_dim


@given(window_problems(), st.booleans())
def test_window_attention_sdpa_matches_reference(problem, with_bias):
    batch, window, height, width, heads, head_dim = problem
    channels = heads * head_dim + 1
    x = torch.randn(batch, height, width, channels)
    weight = torch.randn(3 * heads * head_dim, channels) / channels**0.5
    bias = torch.randn(3 * heads * head_dim) if with_bias else None
    expected = window_attention_reference(x, weight, bias, window, heads, scale=0.41)
    actual = window_attention(x, weight, bias, window, heads, scale=0.41, backend="sdpa")
    assert actual.shape == (batch, height, width, heads * head_dim)
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-5)


def test_window_attention_reference_attends_within_each_window_only():
    # Brute force: gather the tokens of the window each query sits in, attend among them.
    x = torch.randn(2, 6, 9, 5)
    weight, bias = torch.randn(24, 5), torch.randn(24)
    out = window_attention_reference(x, weight, bias, (3, 3), num_heads=2)
    q, k, v = torch.nn.functional.linear(x, weight, bias).reshape(2, 6, 9, 3, 2, 4).unbind(3)
    for row, col in ((0, 0), (4, 7), (5, 3)):
        r0, c0 = row // 3 * 3, col // 3 * 3
        keys = k[:, r0 : r0 + 3, c0 : c0 + 3].reshape(2, 9, 2, 4).transpose(1, 2)
        values = v[:, r0 : r0 + 3, c0 : c0 + 3].reshape(2, 9, 2, 4).transpose(1, 2)
        query = q[:, row, col].unsqueeze(2)
        expected = sdpa_reference(query, keys, values).reshape(2, 8)
        torch.testing.assert_close(out[:, row, col], expected)


def test_window_attention_gradients_match_reference():
    x = torch.randn(2, 4, 6, 6, requires_grad=True)
    weight = torch.randn(18, 6, requires_grad=True)
    bias = torch.randn(18, requires_grad=True)
    grads = [
        torch.autograd.grad(
            window_attention(x, weight, bias, (2, 3), 2, backend=backend).square().sum(), (x, weight, bias)
        )
        for backend in (REFERENCE, "sdpa")
    ]
    for fast, ref in zip(grads[1], grads[0]):
        torch.testing.assert_close(fast, ref, rtol=1e-4, atol=1e-4)


@given(st.integers(1, 2), st.integers(1, 11), st.integers(1, 11), st.integers(1, 4), st.integers(1, 4))
def test_window_partition_round_trip_and_padding(batch, height, width, wh, ww):
    x = torch.randn(batch, height, width, 3)
    padded = pad_to_windows(x, (wh, ww))
    assert padded.shape[1] % wh == 0 and padded.shape[2] % ww == 0
    assert padded.shape[1] - height < wh and padded.shape[2] - width < ww
    assert torch.equal(padded[:, :height, :width], x) and padded[:, height:].abs().sum() == 0
    windows = window_partition(padded, (wh, ww))
    assert windows.shape == (batch * padded.shape[1] // wh * padded.shape[2] // ww, wh * ww, 3)
    assert torch.equal(window_reverse(windows, (wh, ww), padded.shape[1], padded.shape[2]), padded)


def test_window_ops_reject_maps_that_do_not_tile():
    with pytest.raises(ValueError, match="pad it to multiples of the window"):
        window_attention(torch.randn(1, 7, 8, 4), torch.randn(12, 4), None, (7, 7), 2)
    with pytest.raises(ValueError, match="do not split into q, k, v of 2 heads"):
        window_attention(torch.randn(1, 7, 7, 4), torch.randn(9, 4), None, (7, 7), 2)
    with pytest.raises(ValueError, match="qkv weight"):
        window_attention(torch.randn(1, 7, 7, 4), torch.randn(12, 5), None, (7, 7), 2)


@given(st.integers(1, 3), st.integers(1, 50), st.integers(1, 4), st.integers(1, 9))
def test_channel_attention_grouped_bmm_matches_reference(batch, tokens, groups, group_dim):
    qkv = torch.randn(batch, tokens, 3 * groups * group_dim)
    expected = channel_attention_reference(qkv, groups)
    actual = channel_attention(qkv, groups, backend="grouped_bmm")
    assert actual.shape == (batch, tokens, groups * group_dim)
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-5)


def test_channel_attention_reference_follows_the_spec_per_group():
    # Written out for one group with explicit indices: M[i, j] = softmax_j(sum_n k[n, i] v[n, j] · s), y = q Mᵀ.
    qkv = torch.randn(1, 5, 3 * 2 * 3)
    out = channel_attention_reference(qkv, num_groups=2, scale=0.5)
    q, k, v = qkv[0].reshape(5, 3, 2, 3).unbind(1)
    for group in range(2):
        logits = torch.einsum("ni,nj->ij", k[:, group], v[:, group]) * 0.5
        expected = torch.einsum("nj,ij->ni", q[:, group], logits.softmax(dim=-1))
        torch.testing.assert_close(out[0, :, group * 3 : (group + 1) * 3], expected)


def test_channel_attention_gradients_match_reference():
    qkv = torch.randn(2, 13, 24, requires_grad=True)
    grads = [
        torch.autograd.grad(channel_attention(qkv, 2, backend=backend).square().sum(), qkv)[0]
        for backend in (REFERENCE, "grouped_bmm")
    ]
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-4, atol=1e-5)


def test_channel_attention_rejects_bad_packing():
    with pytest.raises(ValueError, match="3 \\* groups \\* group_dim"):
        channel_attention(torch.randn(2, 5, 20), 3)


def test_window_attention_module_pads_with_zero_tokens_and_crops():
    torch.manual_seed(0)
    module = WindowAttention(16, num_heads=2, window_size=(3, 4)).eval()
    x = torch.randn(2, 5, 6, 16)
    padded_by_hand = torch.zeros(2, 6, 8, 16)
    padded_by_hand[:, :5, :6] = x
    with torch.no_grad():
        out = module(x)
        attended = window_attention_reference(padded_by_hand, module.qkv.weight, module.qkv.bias, (3, 4), 2, module.scale)
        expected = module.proj(attended)
    assert out.shape == x.shape
    torch.testing.assert_close(out, expected[:, :5, :6])


def test_channel_attention_module_takes_any_token_layout():
    module = ChannelGroupAttention(12, num_groups=3).eval()
    x = torch.randn(2, 4, 5, 12)
    with torch.no_grad():
        out = module(x)
        with use_backend(REFERENCE):
            flat = module(x.reshape(2, 20, 12))
    assert out.shape == x.shape
    torch.testing.assert_close(out, flat.reshape(2, 4, 5, 12))


def test_conv_pos_enc_is_x_plus_depthwise_conv():
    module = ConvPosEnc(8)
    x = torch.randn(2, 5, 7, 8)
    expected = x + module.proj(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
    torch.testing.assert_close(module(x), expected)
    module(x).sum().backward()
    assert module.proj.weight.grad is not None and module.proj.bias.grad is not None


def test_inference_inplace_gelu_is_exact_and_keeps_autograd_inputs():
    act = InferenceInplaceGELU()
    x = torch.randn(4, 7)
    expected = torch.nn.functional.gelu(x)
    fresh = x.clone()
    with torch.no_grad():
        out = act(fresh)
    assert out.data_ptr() == fresh.data_ptr()
    torch.testing.assert_close(out, expected)
    leaf = x.clone().requires_grad_(True)
    out = act(leaf)
    assert out.data_ptr() != leaf.data_ptr() and torch.equal(leaf.detach(), x)
    out.sum().backward()
    assert leaf.grad is not None
