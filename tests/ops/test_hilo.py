"""HiLo attention: reference vs SDPA backend, padding semantics, and the module against a per-window loop."""
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from visionzoo.layers.attention import MultiHeadSelfAttention
from visionzoo.layers.hilo import HiLoAttention
from visionzoo.ops import use_backend
from visionzoo.ops.hilo import hilo_attention


def _random_args(batch, height, width, channels, window, hifi_heads, lofi_heads, head_dim, bias, seed):
    generator = torch.Generator().manual_seed(seed)

    def rand(*shape):
        return torch.randn(*shape, generator=generator)

    x = rand(batch, height, width, channels)
    kwargs = {}
    if hifi_heads:
        kwargs["hifi_qkv_weight"] = rand(3 * hifi_heads * head_dim, channels) / channels**0.5
        kwargs["hifi_qkv_bias"] = rand(3 * hifi_heads * head_dim) if bias else None
    if lofi_heads:
        kwargs["lofi_q_weight"] = rand(lofi_heads * head_dim, channels) / channels**0.5
        kwargs["lofi_q_bias"] = rand(lofi_heads * head_dim) if bias else None
        kwargs["lofi_kv_weight"] = rand(2 * lofi_heads * head_dim, channels) / channels**0.5
        kwargs["lofi_kv_bias"] = rand(2 * lofi_heads * head_dim) if bias else None
    return x, (window, hifi_heads, lofi_heads), kwargs


@settings(max_examples=30, deadline=None)
@given(
    batch=st.integers(1, 2),
    height=st.integers(1, 9),
    width=st.integers(1, 9),
    channels=st.sampled_from([3, 8]),
    window=st.integers(1, 4),
    heads=st.sampled_from([(0, 1), (1, 0), (1, 1), (2, 3)]),
    head_dim=st.sampled_from([4, 8]),
    bias=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_sdpa_backend_matches_reference(batch, height, width, channels, window, heads, head_dim, bias, seed):
    x, args, kwargs = _random_args(batch, height, width, channels, window, *heads, head_dim, bias, seed)
    expected = hilo_attention(x, *args, backend="reference", **kwargs)
    actual = hilo_attention(x, *args, backend="sdpa", **kwargs)
    assert actual.shape == (batch, height, width, sum(heads) * head_dim)
    torch.testing.assert_close(actual, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("backend", ["reference", "sdpa"])
def test_odd_sizes_equal_zero_padding_then_crop(backend):
    # The official dense-prediction backbone pads the normalised map with zeros and crops after.
    x, args, kwargs = _random_args(2, 7, 5, 8, 3, 1, 2, 4, True, seed=0)
    padded = F.pad(x, (0, 0, 0, 1, 0, 2))
    expected = hilo_attention(padded, *args, backend=backend, **kwargs)[:, :7, :5]
    torch.testing.assert_close(hilo_attention(x, *args, backend=backend, **kwargs), expected)


def _per_window_loop(module: HiLoAttention, x: torch.Tensor) -> torch.Tensor:
    """HiLo written window by window and query by query, for maps whose sides are multiples of s."""
    batch, height, width, channels = x.shape
    s, head_dim = module.window_size, channels // (module.hifi_heads + module.lofi_heads)
    hifi = torch.zeros(batch, height, width, module.hifi_heads * head_dim)
    qkv = module.h_qkv(x).reshape(batch, height, width, 3, module.hifi_heads, head_dim)
    for row in range(0, height, s):
        for col in range(0, width, s):
            q, k, v = qkv[:, row:row + s, col:col + s].reshape(batch, s * s, 3, module.hifi_heads, head_dim).unbind(2)
            weights = torch.einsum("bqhd,bkhd->bhqk", q, k).mul(module.scale).softmax(-1)
            out = torch.einsum("bhqk,bkhd->bqhd", weights, v)
            hifi[:, row:row + s, col:col + s] = out.reshape(batch, s, s, -1)
    pooled = torch.stack(
        [
            torch.stack([x[:, r:r + s, c:c + s].mean(dim=(1, 2)) for c in range(0, width, s)], dim=1)
            for r in range(0, height, s)
        ],
        dim=1,
    ).reshape(batch, -1, channels)
    k, v = module.l_kv(pooled).reshape(batch, -1, 2, module.lofi_heads, head_dim).unbind(2)
    q = module.l_q(x).reshape(batch, height * width, module.lofi_heads, head_dim)
    weights = torch.einsum("bqhd,bkhd->bhqk", q, k).mul(module.scale).softmax(-1)
    lofi = torch.einsum("bhqk,bkhd->bqhd", weights, v).reshape(batch, height, width, -1)
    return torch.cat([module.h_proj(hifi), module.l_proj(lofi)], dim=-1)


@pytest.mark.parametrize("backend", ["reference", "sdpa"])
def test_module_matches_per_window_loop(backend):
    torch.manual_seed(0)
    module = HiLoAttention(64, num_heads=8, window_size=2, alpha=0.9)
    assert (module.hifi_heads, module.lofi_heads) == (1, 7)
    x = torch.randn(2, 4, 6, 64)
    with torch.no_grad(), use_backend(backend):
        torch.testing.assert_close(module(x), _per_window_loop(module, x), atol=1e-5, rtol=1e-5)


def test_window_one_is_plain_multi_head_attention():
    torch.manual_seed(0)
    module = HiLoAttention(48, num_heads=3, window_size=1, alpha=0.9)
    assert module.hifi_heads == 0 and not hasattr(module, "h_qkv")
    reference = MultiHeadSelfAttention(48, num_heads=3, qkv_bias=True)
    with torch.no_grad():
        reference.qkv.weight.copy_(torch.cat([module.l_q.weight, module.l_kv.weight]))
        reference.qkv.bias.copy_(torch.cat([module.l_q.bias, module.l_kv.bias]))
        reference.proj.load_state_dict(module.l_proj.state_dict())
        x = torch.randn(2, 3, 5, 48)
        torch.testing.assert_close(module(x), reference(x.reshape(2, 15, 48)).reshape(2, 3, 5, 48))


def test_head_split_and_parameter_shapes_follow_the_paper():
    # LITv2-S stage 3: C 384, 12 heads, alpha 0.9 -> 10 Lo-Fi heads and 2 Hi-Fi heads.
    module = HiLoAttention(384, num_heads=12, window_size=2, alpha=0.9, device="meta")
    shapes = {name: tuple(p.shape) for name, p in module.named_parameters()}
    assert shapes == {
        "l_q.weight": (320, 384), "l_q.bias": (320,), "l_kv.weight": (640, 384), "l_kv.bias": (640,),
        "l_proj.weight": (320, 320), "l_proj.bias": (320,), "h_qkv.weight": (192, 384), "h_qkv.bias": (192,),
        "h_proj.weight": (64, 64), "h_proj.bias": (64,),
    }


def test_gradients_match_between_backends():
    torch.manual_seed(0)
    module = HiLoAttention(32, num_heads=4, window_size=3, alpha=0.5)
    x = torch.randn(1, 5, 7, 32)
    grads = {}
    for backend in ("reference", "sdpa"):
        module.zero_grad()
        with use_backend(backend):
            module(x).square().sum().backward()
        grads[backend] = [p.grad.clone() for p in module.parameters()]
    for expected, actual in zip(grads["reference"], grads["sdpa"]):
        torch.testing.assert_close(actual, expected, atol=1e-4, rtol=1e-4)


def test_bad_arguments_are_reported():
    x = torch.randn(1, 4, 4, 8)
    with pytest.raises(ValueError, match="at least one head"):
        hilo_attention(x, 2, 0, 0)
    with pytest.raises(ValueError, match="hifi_qkv_weight"):
        hilo_attention(x, 2, 1, 0)
    with pytest.raises(ValueError, match=r"\(B, H, W, C\)"):
        hilo_attention(x[0], 2, 0, 1, lofi_q_weight=torch.randn(4, 8), lofi_kv_weight=torch.randn(8, 8))
    with pytest.raises(ValueError, match="alpha"):
        HiLoAttention(8, num_heads=2, alpha=1.5)
