"""Strip self-attention: both fast paths against the reference (odd maps, maps not divisible by or smaller than
the reduction, batch 1, gradients), the padding rule, the BatchNorm's training statistics and bad calls."""
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from visionzoo.ops.strip_attention import strip_attention

FAST_PATHS = ["sdpa", "conv_bmm"]


def _random_call(batch, channels, height, width, heads, qk_per_head, v_per_head, reduction, norm, seed,
                 dtype=torch.float32):
    generator = torch.Generator().manual_seed(seed)

    def rand(*shape):
        return torch.randn(*shape, generator=generator, dtype=dtype)

    qk_dim, v_dim = heads * qk_per_head, heads * v_per_head
    kwargs = dict(
        q_weight=rand(qk_dim, channels) / channels**0.5, q_bias=rand(qk_dim),
        k_weight=rand(qk_dim, channels) / channels**0.5, k_bias=rand(qk_dim),
        v_weight=rand(v_dim, channels) / channels**0.5, v_bias=rand(v_dim),
    )
    if reduction > 1:
        kwargs.update(reduction=reduction, reduction_weight=rand(channels, 1, reduction, reduction) / reduction,
                      reduction_bias=rand(channels))
        if norm:
            kwargs.update(norm_weight=rand(channels).abs() + 0.5, norm_bias=rand(channels),
                          norm_mean=rand(channels) * 0.1, norm_var=rand(channels).abs() + 0.5)
    return rand(batch, channels, height, width), heads, kwargs


@settings(max_examples=25, deadline=None)
@given(
    batch=st.integers(1, 2),
    channels=st.sampled_from([3, 8]),
    height=st.integers(1, 11),
    width=st.integers(1, 11),
    heads=st.integers(1, 3),
    qk_per_head=st.sampled_from([1, 4]),
    v_per_head=st.sampled_from([2, 5]),
    reduction=st.integers(1, 4),
    norm=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_fast_paths_match_reference(batch, channels, height, width, heads, qk_per_head, v_per_head, reduction, norm,
                                    seed):
    x, heads, kwargs = _random_call(batch, channels, height, width, heads, qk_per_head, v_per_head, reduction, norm, seed)
    expected = strip_attention(x, heads, backend="reference", **kwargs)
    assert expected.shape == (batch, heads * v_per_head, height, width)
    for backend in FAST_PATHS:
        actual = strip_attention.implementation(backend)(x, heads, **kwargs)
        torch.testing.assert_close(actual, expected, atol=1e-5, rtol=1e-5, msg=lambda m: f"{backend}: {m}")


@settings(max_examples=8, deadline=None)
@given(
    height=st.integers(1, 9),
    width=st.integers(1, 9),
    reduction=st.integers(2, 4),
    seed=st.integers(0, 2**16),
)
def test_fast_path_gradients_match_reference(height, width, reduction, seed):
    x, heads, kwargs = _random_call(1, 4, height, width, 2, 2, 3, reduction, True, seed, dtype=torch.float64)
    inputs = {"x": x, **{key: kwargs[key] for key in ("q_weight", "k_weight", "v_weight", "reduction_weight")}}
    grads = {}
    for backend in ("reference", *FAST_PATHS):
        leaves = {key: value.detach().clone().requires_grad_() for key, value in inputs.items()}
        call = dict(kwargs, **{key: value for key, value in leaves.items() if key != "x"})
        (strip_attention.implementation(backend)(leaves["x"], heads, **call) ** 2).sum().backward()
        grads[backend] = {key: value.grad for key, value in leaves.items()}
    for backend in FAST_PATHS:
        for key, grad in grads["reference"].items():
            torch.testing.assert_close(grads[backend][key], grad, msg=lambda m: f"{backend} d/d{key}: {m}")


@pytest.mark.parametrize("backend", ["reference", *FAST_PATHS])
def test_keys_see_the_map_zero_padded_to_whole_windows(backend):
    # 7x5 with r = 4 (and a 3x2 map, smaller than r): the key grid is ceil(H/r) x ceil(W/r), as if the map had
    # been zero-padded on the bottom/right; the queries stay at the input's size.
    for height, width in ((7, 5), (3, 2)):
        x, heads, kwargs = _random_call(2, 8, height, width, 2, 4, 4, 4, True, seed=1)
        padded = F.pad(x, (0, -width % 4, 0, -height % 4))
        attend = strip_attention.implementation(backend)
        full = attend(padded, heads, **kwargs)
        # Padded query positions differ only in their own rows; cropping them leaves the unpadded queries.
        expected = full[:, :, :height, :width]
        torch.testing.assert_close(attend(x, heads, **kwargs), expected)


def test_reduction_is_a_strided_depthwise_conv_and_values_keep_their_width():
    x, heads, kwargs = _random_call(1, 6, 8, 8, 1, 3, 6, 2, False, seed=2)
    reduced = F.conv2d(x, kwargs["reduction_weight"], kwargs["reduction_bias"], stride=2, groups=6)
    q = torch.einsum("oc,bchw->bohw", kwargs["q_weight"], x).flatten(2) + kwargs["q_bias"][:, None]
    k = torch.einsum("oc,bchw->bohw", kwargs["k_weight"], reduced).flatten(2) + kwargs["k_bias"][:, None]
    v = torch.einsum("oc,bchw->bohw", kwargs["v_weight"], reduced).flatten(2) + kwargs["v_bias"][:, None]
    weights = torch.softmax(q.transpose(1, 2) @ k / 3**0.5, dim=-1)  # 64 queries over 16 keys
    assert weights.shape == (1, 64, 16)
    expected = (v @ weights.transpose(1, 2)).reshape(1, 6, 8, 8)
    torch.testing.assert_close(strip_attention(x, heads, backend="reference", **kwargs), expected)


@pytest.mark.parametrize("backend", ["reference", *FAST_PATHS])
def test_training_batchnorm_uses_batch_statistics_and_updates_running_ones(backend):
    x, heads, kwargs = _random_call(3, 4, 6, 6, 1, 4, 4, 2, True, seed=3)
    fn = strip_attention.implementation(backend)
    mean_before = kwargs["norm_mean"].clone()
    out = fn(x, heads, norm_training=True, norm_momentum=0.5, **kwargs)
    reduced = F.conv2d(x, kwargs["reduction_weight"], kwargs["reduction_bias"], stride=2, groups=4)
    torch.testing.assert_close(kwargs["norm_mean"], 0.5 * mean_before + 0.5 * reduced.mean((0, 2, 3)))
    # In training the running statistics do not enter the output.
    kwargs["norm_mean"].add_(10.0)
    torch.testing.assert_close(fn(x, heads, norm_training=True, **kwargs), out)


def test_cpu_calls_take_the_conv_bmm_path():
    x, heads, kwargs = _random_call(1, 4, 5, 5, 1, 4, 4, 2, False, seed=5)
    assert strip_attention.select(x, heads, **kwargs) is strip_attention.backends["conv_bmm"].fn


def test_bad_calls_say_what_is_wrong():
    x, heads, kwargs = _random_call(1, 8, 4, 4, 2, 4, 4, 2, False, seed=4)
    with pytest.raises(ValueError, match=r"\(B, C, H, W\) map"):
        strip_attention(x[0], heads, **kwargs)
    with pytest.raises(ValueError, match="divisible by num_heads 3"):
        strip_attention(x, 3, **kwargs)
    with pytest.raises(ValueError, match=r"depthwise reduction_weight of shape \(8, 1, 2, 2\)"):
        strip_attention(x, heads, **dict(kwargs, reduction_weight=None))
    with pytest.raises(ValueError, match="q_weight and k_weight must both be"):
        strip_attention(x[:, :4], heads, **kwargs)
