"""SpectFormer: exact parameter counts with and without the token-labeling head, the official key layouts of both
families, other input sizes through the filter resampling rule, and the errors for sizes the rule cannot serve."""
import math
from pathlib import Path

import pytest
import timm
import torch

from visionzoo.bench.flops import count_fft_macs, count_macs, count_params
from visionzoo.models._cards import variant_card
from visionzoo.models.spectformer import HierarchicalSpectFormer, SpectFormer, checkpoint_filter_fn
from visionzoo.ops import REFERENCE, use_backend
from visionzoo.ops.spectral_gating import resize_spectral_filter

MANIFESTS = Path(__file__).parent.parent / "data" / "spectformer"
# The official --arch names: dashed for the vanilla family, underscored for the hierarchical configs.
LAYOUTS = {
    "spectformer-ti": "vz_spectformer_t",
    "spectformer-xs": "vz_spectformer_xs",
    "spectformer-s": "vz_spectformer_s",
    "spectformer-b": "vz_spectformer_b",
    "spectformer_s": "vz_spectformer_h_s",
    "spectformer_b": "vz_spectformer_h_b",
    "spectformer_l": "vz_spectformer_h_l",
}
HIERARCHICAL = ["vz_spectformer_h_s", "vz_spectformer_h_b", "vz_spectformer_h_l"]


def _official_state_dict(layout: str) -> dict[str, torch.Tensor]:
    """A synthetic checkpoint with every key and shape of the official manifest, on the meta device."""
    state_dict = {}
    for line in (MANIFESTS / f"{layout}.tsv").read_text().splitlines():
        key, shape = line.split("\t")
        size = [int(dim) for dim in shape.split(",")] if shape else []
        dtype = torch.int64 if key.endswith("num_batches_tracked") else torch.float32
        state_dict[key] = torch.empty(size, dtype=dtype, device="meta")
    return state_dict


@pytest.mark.parametrize("layout, options", [
    *[(layout, {}) for layout in sorted(LAYOUTS)],
    *[(layout, {"aux_head": False}) for layout, name in sorted(LAYOUTS.items()) if name in HIERARCHICAL],
])
def test_official_layout_loads_strictly(layout, options):
    """Hierarchical checkpoints hold the token-labeling head; a model built without it drops those keys."""
    model = timm.create_model(LAYOUTS[layout], device="meta", **options)
    converted = checkpoint_filter_fn({"model": _official_state_dict(layout)}, model)
    expected = {key: tuple(value.shape) for key, value in model.state_dict().items()}
    assert {key: tuple(value.shape) for key, value in converted.items()} == expected
    model.load_state_dict(converted, strict=True, assign=True)


@pytest.mark.parametrize("name", HIERARCHICAL)
def test_counts_with_and_without_the_token_labeling_head(name):
    card = variant_card(name)
    assert count_params(timm.create_model(name, device="meta")) == card["params"]
    assert count_params(timm.create_model(name, device="meta", aux_head=False)) == card["params_without_aux_head"]


def test_hierarchical_converter_names_every_official_part():
    model = timm.create_model("vz_spectformer_h_s", device="meta")
    keys = checkpoint_filter_fn({
        "patch_embed1.conv.0.weight": torch.empty(0), "patch_embed3.proj.weight": torch.empty(0),
        "block2.1.mlp.dwconv.dwconv.bias": torch.empty(0), "block3.0.attn.kv.weight": torch.empty(0),
        "norm3.weight": torch.empty(0), "norm4.bias": torch.empty(0), "post_network.0.attn.q.weight": torch.empty(0),
    }, model)
    assert list(keys) == [
        "stem.conv.0.weight", "stages.2.downsample.proj.weight", "stages.1.blocks.1.mlp.dwconv.bias",
        "stages.2.blocks.0.attn.kv.weight", "stages.2.norm.weight", "norm.bias", "class_block.attn.q.weight",
    ]


def _tiny_vanilla(**kwargs) -> SpectFormer:
    torch.manual_seed(0)
    return SpectFormer(embed_dim=32, depth=3, spectral_depth=2, num_heads=2, num_classes=5, **kwargs).eval()


def _tiny_hierarchical(**kwargs) -> HierarchicalSpectFormer:
    torch.manual_seed(0)
    return HierarchicalSpectFormer(
        stem_hidden_dim=8, embed_dims=(8, 16, 24, 32), depths=(1, 1, 1, 1), num_heads=(1, 2, 2, 4),
        num_classes=5, **kwargs,
    ).eval()


@pytest.mark.parametrize("name", ["vz_spectformer_t", "vz_spectformer_h_s"])
@pytest.mark.parametrize("size", [(160, 160), (256, 256), (288, 288), (320, 192)])
def test_a_224_model_runs_at_other_sizes(name, size):
    model = timm.create_model(name).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, *size))
    assert out.shape == (1, 1000) and torch.isfinite(out).all()


@pytest.mark.parametrize("build", [_tiny_vanilla, _tiny_hierarchical])
def test_another_size_runs_the_resampled_filters(build):
    """At 320x192 the model computes what a model built for 320x192 computes with the filters resampled by the
    documented rule (and, for the vanilla model, the position embedding resampled)."""
    model = build()
    at_size = build(img_size=(320, 192))
    state = model.state_dict()
    for key, value in at_size.state_dict().items():
        if key.endswith("complex_weight"):
            filter_module = model.get_submodule(key.rsplit(".", 1)[0])
            trained = filter_module.grid_size
            grid = at_size.get_submodule(key.rsplit(".", 1)[0]).grid_size
            state[key] = resize_spectral_filter(state[key], grid, trained)
        elif key == "pos_embed":
            state[key] = value  # checked by the position-embedding path below
    at_size.load_state_dict(state)
    if isinstance(model, SpectFormer):
        with torch.no_grad():
            at_size.pos_embed.copy_(
                torch.nn.functional.interpolate(
                    model.pos_embed.reshape(1, 14, 14, -1).permute(0, 3, 1, 2), size=(20, 12), mode="bicubic",
                    antialias=True, align_corners=False,
                ).permute(0, 2, 3, 1).reshape(1, 240, -1)
            )
    x = torch.randn(2, 3, 320, 192)
    with torch.no_grad():
        torch.testing.assert_close(model(x), at_size(x), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("build, grid", [(_tiny_vanilla, "14x14"), (_tiny_hierarchical, "56x56")])
def test_without_resizing_another_size_is_a_clear_error(build, grid):
    model = build(resize_filters=False)
    with pytest.raises(ValueError, match=f"learned on a {grid} .*resize_filters=True"):
        model(torch.randn(1, 3, 160, 160))
    assert model(torch.randn(1, 3, 224, 224)).shape == (1, 5)


def test_sizes_the_rule_cannot_serve_are_refused():
    with pytest.raises(ValueError, match="multiples of 16, got 224x200"):
        _tiny_vanilla()(torch.randn(1, 3, 224, 200))
    with pytest.raises(ValueError, match="at least 32"):
        _tiny_hierarchical()(torch.randn(1, 3, 24, 24))


def test_token_labeling_head_adds_half_its_per_token_maximum():
    model = _tiny_hierarchical()
    plain = _tiny_hierarchical(aux_head=False)
    plain.load_state_dict({k: v for k, v in model.state_dict().items() if not k.startswith("aux_head.")})
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        features = model.forward_features(x)
        tokens = model.norm(model.class_block(torch.cat(
            [features.flatten(2).transpose(1, 2).mean(1, keepdim=True), features.flatten(2).transpose(1, 2)], 1
        )))
        bonus = 0.5 * model.aux_head(tokens[:, 1:]).amax(1)
        torch.testing.assert_close(model(x), plain(x) + bonus)
    model.reset_classifier(3)
    assert model.aux_head.out_features == 3 and model(x).shape == (2, 3)


@pytest.mark.parametrize("name, transforms", [
    # (blocks, channels, grid points) per spectral stage; each block runs one rFFT and one inverse.
    ("vz_spectformer_xs", [(4, 384, 14 * 14)]),
    ("vz_spectformer_h_s", [(3, 64, 56 * 56), (4, 128, 28 * 28)]),
])
def test_fft_macs_are_counted_apart_by_the_stated_formula(name, transforms):
    model = timm.create_model(name, device="meta")
    expected = sum(blocks * 2 * channels * 1.25 * points * math.log2(points) for blocks, channels, points in transforms)
    with use_backend(REFERENCE):
        assert count_fft_macs(model, (3, 224, 224)) == pytest.approx(expected, abs=len(transforms) * 4)
        gemm = count_macs(model, (3, 224, 224))
    assert gemm / 1e9 == pytest.approx(variant_card(name)["paper_gmacs"], rel=0.01)
    with use_backend("dft_matmul"):  # the portable path turns the FFTs into GEMMs: no FFT left, more GEMM MACs
        assert count_fft_macs(model, (3, 224, 224)) == 0
        assert count_macs(model, (3, 224, 224)) > gemm


def test_models_without_ffts_count_none():
    assert count_fft_macs(_tiny_hierarchical(spectral_stages=0), (3, 64, 64)) == 0
