"""HaloNet family: halo op (reference vs fast), timm parity, any-size inputs, parameter counts."""
from __future__ import annotations

from pathlib import Path

import pytest
import timm
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from visionzoo.layers.halo import HaloAttention
from visionzoo.models._cards import variant_card
from visionzoo.models.halonet import MODEL_ARGS, checkpoint_filter_fn
from visionzoo.ops import halo as halo_ops
from visionzoo.ops.halo import halo_attention

TIMM_NAMES = {
    "vz_halonet26t": "halonet26t",
    "vz_sehalonet33ts": "sehalonet33ts",
    "vz_halonet50ts": "halonet50ts",
    "vz_eca_halonext26ts": "eca_halonext26ts",
    "vz_halonet_h1": "halonet_h1",
}
SLOW = pytest.mark.slow


def _halo_inputs(batch, heads, dim_qk, dim_v, height, width, block, halo, stride, seed):
    generator = torch.Generator().manual_seed(seed)
    win = block + 2 * halo

    def randn(*shape):
        return torch.randn(*shape, generator=generator)

    return dict(
        q=randn(batch, heads, dim_qk, height // stride, width // stride),
        k=randn(batch, heads, dim_qk, height, width),
        v=randn(batch, heads, dim_v, height, width),
        height_rel=randn(2 * win - 1, dim_qk) * dim_qk ** -0.5,
        width_rel=randn(2 * win - 1, dim_qk) * dim_qk ** -0.5,
        block_size=block,
        halo_size=halo,
        query_stride=stride,
    )


@settings(max_examples=25, deadline=None)
@given(
    batch=st.integers(1, 2),
    heads=st.integers(1, 3),
    dim_qk=st.sampled_from([4, 8]),
    dim_v=st.sampled_from([4, 6]),
    stride=st.sampled_from([1, 2]),
    block=st.sampled_from([2, 4, 6, 8]),
    halo=st.integers(0, 3),
    blocks_h=st.integers(1, 3),
    blocks_w=st.integers(1, 3),
    trim_h=st.integers(0, 7),
    trim_w=st.integers(0, 7),
    seed=st.integers(0, 2**16),
)
def test_halo_fast_matches_reference(
    batch, heads, dim_qk, dim_v, stride, block, halo, blocks_h, blocks_w, trim_h, trim_w, seed
):
    # Whole blocks minus a trim: most sides need block padding; they stay multiples of the query stride.
    height = max(stride, (blocks_h * block - trim_h) // stride * stride)
    width = max(stride, (blocks_w * block - trim_w) // stride * stride)
    inputs = _halo_inputs(batch, heads, dim_qk, dim_v, height, width, block, halo, stride, seed)
    reference = halo_attention(**inputs, backend="reference")
    assert reference.shape == (batch, heads, dim_v, height // stride, width // stride)
    assert torch.isfinite(reference).all()
    # flex refuses eager CPU calls (tests/ops/test_flex_backends.py covers it compiled).
    for backend in (name for name in halo_attention.backends if name != "flex"):
        torch.testing.assert_close(halo_attention(**inputs, backend=backend), reference, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("chunk_bytes", [1, 3000])
@pytest.mark.parametrize("height, width, stride", [(16, 24, 1), (13, 22, 1), (12, 20, 2)])
def test_cache_chunked_inference_computes_the_reference(monkeypatch, chunk_bytes, height, width, stride):
    # 1 byte: one block a chunk; 3000 bytes: chunks of a few blocks that do not divide the count evenly.
    # (13, 22) needs block padding, so the per-block key mask must follow the rows of every chunk.
    monkeypatch.setattr(halo_ops, "CPU_CHUNK_BYTES", chunk_bytes)
    inputs = _halo_inputs(2, 3, 4, 6, height, width, 4, 1, stride, seed=5)
    leaves = {name: value.requires_grad_() for name, value in inputs.items() if isinstance(value, torch.Tensor)}
    blocks = 2 * 3 * -(-height // 4) * -(-width // 4)
    assert halo_ops._blocks_per_cache_chunk((4 // stride) ** 2 * 36 * 4) < blocks, "the case must chunk"
    cat_calls = []
    real_cat = torch.cat
    monkeypatch.setattr(torch, "cat", lambda tensors, *args, **kwargs: cat_calls.append(len(tensors)) or real_cat(
        tensors, *args, **kwargs))
    reference = halo_attention(**inputs, backend="reference")
    with torch.no_grad():
        torch.testing.assert_close(halo_attention(**inputs, backend="blocked_bmm"), reference, rtol=1e-5, atol=1e-5)
    assert cat_calls and cat_calls[-1] > 1, "inference should run in chunks"
    # Under autograd the op runs whole (the chunks' backward costs more than the cache saves) and stays exact.
    cat_calls.clear()
    recorded = halo_attention(**inputs, backend="blocked_bmm")
    assert not cat_calls
    weights = torch.randn_like(reference)
    got = torch.autograd.grad((recorded * weights).sum(), list(leaves.values()))
    expected = torch.autograd.grad((reference * weights).sum(), list(leaves.values()))
    for name, got_grad, expected_grad in zip(leaves, got, expected):
        torch.testing.assert_close(got_grad, expected_grad, rtol=1e-4, atol=1e-5, msg=f"gradient of {name}")


def test_halo_reference_matches_direct_formula():
    """Each output pixel against a loop over its window written from the paper's formula."""
    block, halo, stride = 4, 1, 2
    inputs = _halo_inputs(1, 2, 3, 2, 6, 8, block, halo, stride, seed=0)
    out = halo_attention(**inputs, backend="reference")
    q, k, v = inputs["q"][0], inputs["k"][0], inputs["v"][0]
    rel_h, rel_w = inputs["height_rel"], inputs["width_rel"]
    win, bq, height, width = block + 2 * halo, block // stride, 6, 8
    for head in range(2):
        for oy in range(3):
            for ox in range(4):
                top, left = oy // bq * block - halo, ox // bq * block - halo
                logits, values = [], []
                for u in range(win):
                    for w in range(win):
                        y, x = top + u, left + w
                        inside_ring = -halo <= y < height + halo and -halo <= x < width + halo
                        if not inside_ring:
                            continue  # block padding: masked
                        inside = 0 <= y < height and 0 <= x < width
                        key = k[head, :, y, x] if inside else torch.zeros(3)
                        query = q[head, :, oy, ox]
                        logit = query @ key * 3 ** -0.5
                        logit = logit + query @ rel_h[u - oy % bq + win - 1] + query @ rel_w[w - ox % bq + win - 1]
                        logits.append(logit)
                        values.append(v[head, :, y, x] if inside else torch.zeros(2))
                expected = torch.stack(logits).softmax(0) @ torch.stack(values)
                torch.testing.assert_close(out[0, head, :, oy, ox], expected, rtol=1e-5, atol=1e-6)


def test_halo_op_rejects_mismatched_shapes():
    inputs = _halo_inputs(1, 2, 4, 4, 8, 8, 4, 1, 2, seed=0)
    inputs["q"] = inputs["q"][..., :3]
    with pytest.raises(ValueError, match="do not match"):
        halo_attention(**inputs)
    inputs = _halo_inputs(1, 2, 4, 4, 8, 8, 4, 1, 1, seed=0)
    inputs["height_rel"] = inputs["height_rel"][:-1]
    with pytest.raises(ValueError, match="relative-position tables"):
        halo_attention(**inputs)


def test_halo_layer_matches_timm_halo_attn():
    from timm.layers.halo_attn import HaloAttn

    torch.manual_seed(0)
    for stride, block, halo, dim_head in [(1, 8, 2, None), (2, 8, 3, None), (2, 7, 2, 16)]:
        theirs = HaloAttn(32, 48, stride=stride, num_heads=4, dim_head=dim_head, block_size=block, halo_size=halo)
        ours = HaloAttention(32, 48, stride=stride, num_heads=4, dim_head=dim_head, block_size=block, halo_size=halo)
        ours.load_state_dict(theirs.state_dict())
        x = torch.randn(2, 32, 2 * block, 4 * block)
        torch.testing.assert_close(ours(x), theirs(x), rtol=1e-5, atol=1e-5)


def _randomise_batchnorms(model: torch.nn.Module, seed: int) -> None:
    """Random BN statistics and affine terms, so that no residual branch starts as zero."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                size = module.num_features
                module.weight.copy_(torch.rand(size, generator=generator) * 0.5 + 0.5)
                module.bias.copy_(torch.randn(size, generator=generator) * 0.1)
                module.running_mean.copy_(torch.randn(size, generator=generator) * 0.1)
                module.running_var.copy_(torch.rand(size, generator=generator) + 0.5)


def _timm_and_ours(name: str):
    torch.manual_seed(0)
    theirs = timm.create_model(TIMM_NAMES[name]).eval()
    _randomise_batchnorms(theirs, seed=1)
    ours = timm.create_model(name).eval()
    result = ours.load_state_dict(checkpoint_filter_fn({"model": theirs.state_dict()}, ours))
    assert not result.missing_keys and not result.unexpected_keys
    return theirs, ours


def _assert_relative_close(actual: torch.Tensor, expected: torch.Tensor, tolerance: float = 1e-5) -> None:
    error = (actual - expected).abs().max() / expected.abs().max()
    assert error < tolerance, f"relative error {error:.2e}"


@pytest.mark.parametrize(
    "name", ["vz_halonet26t", *(pytest.param(n, marks=SLOW) for n in TIMM_NAMES if n != "vz_halonet26t")]
)
def test_same_function_as_timm(name):
    theirs, ours = _timm_and_ours(name)
    x = torch.randn(1, 3, 256, 256, generator=torch.Generator().manual_seed(2))
    with torch.inference_mode():
        _assert_relative_close(ours(x), theirs(x))


def test_timm_cannot_but_we_can_run_off_block_sizes():
    theirs, ours = _timm_and_ours("vz_halonet26t")
    x = torch.randn(1, 3, 224, 224)
    with torch.inference_mode(), pytest.raises(Exception):
        theirs(x)
    with torch.inference_mode():
        for height, width in [(224, 224), (288, 288), (160, 352)]:
            x = torch.randn(1, 3, height, width)
            final, features = ours.forward_intermediates(x)
            assert ours.forward_head(final).shape == (1, 1000)
            assert [f.shape[-2:] for f in features] == [(height // r, width // r) for r in (2, 4, 8, 16, 32)]
            assert all(torch.isfinite(f).all() for f in features)


def test_features_only_at_off_block_sizes():
    torch.manual_seed(0)
    model = timm.create_model("vz_halonet26t", features_only=True).eval()
    torch.manual_seed(0)  # the same initial weights for both wrappers
    getter = timm.create_model("vz_halonet26t", features_only=True, feature_cls="getter").eval()
    with torch.inference_mode():
        for height, width in [(224, 224), (160, 288)]:
            x = torch.randn(1, 3, height, width)
            maps, getter_maps = model(x), getter(x)
            assert [m.shape[1] for m in maps] == [64, 256, 512, 1024, 2048]
            assert [m.shape[-2:] for m in maps] == [(height // r, width // r) for r in (2, 4, 8, 16, 32)]
            for ours, other in zip(maps, getter_maps):
                torch.testing.assert_close(ours, other, rtol=1e-5, atol=1e-5)


def test_input_size_error_names_the_multiple():
    model = timm.create_model("vz_halonet26t").eval()
    with pytest.raises(ValueError, match="multiples of 32"):
        model(torch.randn(1, 3, 100, 128))


@pytest.mark.parametrize("name", sorted(MODEL_ARGS))
def test_parameter_count_matches_card(name):
    card = variant_card(name)
    model = timm.create_model(name, device="meta")
    count = sum(p.numel() for p in model.parameters())
    assert abs(count - card["params"]) <= card["params_tolerance"] * card["params"]


MANIFESTS = {
    "vz_halonet26t": "timm_halonet26t.tsv",
    "vz_sehalonet33ts": "timm_sehalonet33ts.tsv",
    "vz_halonet50ts": "timm_halonet50ts.tsv",
    "vz_halonet_h1": "timm_halonet_h1.tsv",
}


@pytest.mark.parametrize("name", sorted(MANIFESTS))
def test_timm_key_manifest_loads_without_missing_or_unexpected_keys(name):
    """The manifests list every key and shape of timm's released state dicts (specs/keys)."""
    path = Path(__file__).resolve().parents[1] / "data" / "halonet" / MANIFESTS[name]
    manifest = {}
    for line in path.read_text().splitlines():
        key, _, shape = line.partition("\t")
        manifest[key] = tuple(int(size) for size in shape.split(",") if size)
    model = timm.create_model(name, device="meta")
    state = {key: torch.empty(shape, device="meta") for key, shape in manifest.items()}
    own = {key: tuple(value.shape) for key, value in model.state_dict().items()}
    converted = checkpoint_filter_fn(state, model)
    assert set(converted) == set(own)
    assert all(tuple(converted[key].shape) == own[key] for key in own)


@SLOW
def test_block_aligned_non_square_size_matches_timm():
    theirs, ours = _timm_and_ours("vz_halonet26t")
    x = torch.randn(1, 3, 256, 512, generator=torch.Generator().manual_seed(4))
    with torch.inference_mode():
        _assert_relative_close(ours(x), theirs(x))


def test_features_only_keeps_final_conv_as_last_level():
    model = timm.create_model("vz_halonet_h3", features_only=True).eval()
    with torch.inference_mode():
        maps = model(torch.randn(1, 3, 64, 64))
    assert [m.shape[1] for m in maps] == [64, 96, 192, 384, 1024]
