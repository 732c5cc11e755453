"""vz_convit_*: paper parameter counts, same function as timm's convit_*, official layouts, any input size."""
from pathlib import Path

import pytest
import timm
import torch
from timm.layers import resample_abs_pos_embed

import visionzoo  # noqa: F401  (registers vz_* models)
from visionzoo.bench.flops import count_macs, count_params
from visionzoo.models._cards import variant_card
from visionzoo.models._checkpoint import load_checkpoint
from visionzoo.models.convit import checkpoint_filter_fn
from visionzoo.ops import use_backend

KEYS_DIR = Path("/work/shared/specs/keys")
VARIANTS = ["tiny", "small", "base"]
PLUS_VARIANTS = ["tiny_plus", "small_plus", "base_plus"]
SLOW_VARIANTS = [pytest.param(name, marks=pytest.mark.slow) if name != "tiny" else name for name in VARIANTS]


def _random_timm_pair(variant, **kwargs):
    """timm's convit_<variant> with random weights (gates and positional projections perturbed) and ours loaded from it."""
    torch.manual_seed(0)
    reference = timm.create_model(f"convit_{variant}", **kwargs).eval()
    with torch.no_grad():
        for name, param in reference.named_parameters():
            if "gating_param" in name or "pos_proj" in name:
                param.add_(torch.randn_like(param))
    ours = timm.create_model(f"vz_convit_{variant}").eval()
    load_checkpoint(ours, reference.state_dict(), filter_fn=checkpoint_filter_fn)
    return reference, ours


@pytest.fixture(scope="module")
def tiny_pair():
    return _random_timm_pair("tiny")


def _manifest(path):
    rows = [line.split("\t") for line in path.read_text().splitlines() if line.strip()]
    return {name: tuple(int(size) for size in shape.split(",")) for name, shape, *_ in rows}


@pytest.mark.parametrize("variant", VARIANTS + PLUS_VARIANTS)
def test_param_count_matches_card(variant):
    name = f"vz_convit_{variant}"
    model = timm.create_model(name, device="meta")
    assert count_params(model) == variant_card(name)["params"]


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("layout", ["convit", "timm_convit"])
def test_manifest_layout_is_ours(variant, layout):
    manifest = _manifest(KEYS_DIR / f"{layout}_{variant}.tsv")
    own = {key: tuple(value.shape) for key, value in timm.create_model(f"vz_convit_{variant}", device="meta").state_dict().items()}
    assert manifest == own


@pytest.mark.parametrize("layout", ["convit", "timm_convit"])
def test_official_and_timm_checkpoints_load_strictly(layout):
    model = timm.create_model("vz_convit_tiny")
    state_dict = {name: torch.randn(shape) for name, shape in _manifest(KEYS_DIR / f"{layout}_tiny.tsv").items()}
    # The official release stores {'model': state_dict}; DDP training adds 'module.' prefixes.
    wrapped = {"model": {f"module.{name}": value for name, value in state_dict.items()}}
    load_checkpoint(model, wrapped, filter_fn=checkpoint_filter_fn)
    assert torch.equal(model.pos_embed, state_dict["pos_embed"])


@pytest.mark.parametrize("variant", SLOW_VARIANTS)
def test_same_logits_as_timm_at_224(variant, tiny_pair):
    reference, ours = tiny_pair if variant == "tiny" else _random_timm_pair(variant)
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        expected, actual = reference(x), ours(x)
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-5 * expected.abs().max().item())


def test_other_input_size_equals_timm_built_for_that_size(tiny_pair):
    """At 160 ours resamples pos_embed on the fly; timm needs a model built at 160 with a resampled checkpoint."""
    _, ours = tiny_pair
    reference = timm.create_model("convit_tiny", img_size=160).eval()
    state_dict = dict(ours.state_dict(), pos_embed=resample_abs_pos_embed(ours.pos_embed, [10, 10], num_prefix_tokens=0))
    reference.load_state_dict(state_dict)
    x = torch.randn(1, 3, 160, 160)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), reference(x), rtol=1e-5, atol=1e-5)


def test_checkpoint_filter_resamples_pos_embed_for_other_build_size(tiny_pair):
    _, ours = tiny_pair
    built_at_96 = timm.create_model("vz_convit_tiny", img_size=96).eval()
    load_checkpoint(built_at_96, ours.state_dict(), filter_fn=checkpoint_filter_fn)
    assert built_at_96.pos_embed.shape == (1, 36, 192)
    x = torch.randn(1, 3, 96, 96)
    with torch.no_grad():
        torch.testing.assert_close(built_at_96(x), ours(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("size", [(160, 160), (288, 288), (160, 224), (96, 64)])
def test_other_sizes_and_stride16_features(size, tiny_pair):
    _, ours = tiny_pair
    x = torch.randn(1, 3, *size)
    grid = (size[0] // 16, size[1] // 16)
    with torch.no_grad():
        features = ours.forward_features(x)
        assert features.shape == (1, 1 + grid[0] * grid[1], 192)
        final, intermediates = ours.forward_intermediates(x, indices=[0, 9, 11])
        assert torch.equal(final, features)
        assert [tuple(t.shape) for t in intermediates] == [(1, 192, *grid)] * 3
        assert torch.isfinite(ours.forward_head(features)).all()
        if size == (96, 64):
            # The fast GPSA path and the reference math agree on non-square grids too.
            with use_backend("reference"):
                torch.testing.assert_close(ours.forward_features(x), features, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("feature_cls", [None, "getter"])
def test_features_only_returns_patch_maps(feature_cls):
    kwargs = {} if feature_cls is None else {"feature_cls": feature_cls}
    model = timm.create_model("vz_convit_tiny", features_only=True, out_indices=(9, 10, 11), **kwargs).eval()
    assert model.feature_info.reduction() == [16, 16, 16]
    for size in [(160, 224), (64, 64)]:
        with torch.no_grad():
            maps = model(torch.randn(2, 3, *size))
        assert [tuple(m.shape) for m in maps] == [(2, 192, size[0] // 16, size[1] // 16)] * 3
    assert len(timm.create_model("vz_convit_tiny", features_only=True, **kwargs).feature_info) == 12


def test_intermediates_nlc_norm_and_stop_early(tiny_pair):
    _, ours = tiny_pair
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        tokens = ours.forward_intermediates(x, indices=2, norm=True, output_fmt="NLC", intermediates_only=True)
        features = ours.forward_features(x)
        early = ours.forward_intermediates(x, indices=[3], stop_early=True, intermediates_only=True)
        full = ours.forward_intermediates(x, indices=[3], intermediates_only=True)
    assert [tuple(t.shape) for t in tokens] == [(1, 24, 192)] * 2
    torch.testing.assert_close(tokens[-1], features[:, 1:])
    torch.testing.assert_close(early[0], full[0])
    with pytest.raises(ValueError, match="output_fmt"):
        ours.forward_intermediates(x, output_fmt="NHWC")


def test_prune_before_class_token_keeps_gpsa_features(tiny_pair):
    _, ours = tiny_pair
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        expected = ours.forward_intermediates(x, indices=[4], intermediates_only=True)[0]
        pruned = timm.create_model("vz_convit_tiny").eval()
        pruned.load_state_dict(ours.state_dict())
        assert pruned.prune_intermediate_layers([4]) == [4]
        assert len(pruned.blocks) == 5 and pruned.cls_token is None and pruned.num_classes == 0
        torch.testing.assert_close(pruned.forward_intermediates(x, indices=[4], intermediates_only=True)[0], expected)
        # With the head pruned the model returns the normalised patch tokens.
        assert pruned(x).shape == (1, 16, 192)


def test_bad_inputs_say_what_to_do():
    model = timm.create_model("vz_convit_tiny")
    with pytest.raises(ValueError, match="multiples of 16.*100x64"):
        model(torch.randn(1, 3, 100, 64))
    with pytest.raises(ValueError, match="3 input channels"):
        model(torch.randn(1, 1, 64, 64))
    with pytest.raises(TypeError):
        timm.create_model("vz_convit_tiny", not_an_argument=1)
    with pytest.raises(ValueError, match="global_pool"):
        timm.create_model("vz_convit_tiny", global_pool="max")


def test_classifier_pooling_and_decay_groups():
    model = timm.create_model("vz_convit_tiny").eval()
    x = torch.randn(2, 3, 32, 48)
    with torch.no_grad():
        features = model.forward_features(x)
        torch.testing.assert_close(model.forward_head(features, pre_logits=True), features[:, 0])
        model.reset_classifier(7, "avg")
        assert model(x).shape == (2, 7) and model.get_classifier().out_features == 7
        torch.testing.assert_close(model.forward_head(features, pre_logits=True), features[:, 1:].mean(1))
        model.reset_classifier(0, "")
        assert model(x).shape == features.shape
    names = dict(model.named_parameters())
    assert model.no_weight_decay() <= set(names)
    groups = timm.models.group_parameters(model, model.group_matcher())
    assert sorted(name for group in groups.values() for name in group) == sorted(names)


def test_grad_checkpointing_gives_same_outputs_and_grads():
    torch.manual_seed(0)
    model = timm.create_model("vz_convit_tiny", drop_path_rate=0.0)
    x = torch.randn(2, 3, 32, 32)
    plain = model(x).sum()
    plain.backward()
    grads = {name: param.grad.clone() for name, param in model.named_parameters()}
    model.zero_grad()
    model.set_grad_checkpointing(True)
    checkpointed = model(x).sum()
    checkpointed.backward()
    torch.testing.assert_close(checkpointed, plain)
    for name, param in model.named_parameters():
        torch.testing.assert_close(param.grad, grads[name], rtol=1e-5, atol=1e-7)


def test_meta_device_bf16_and_export():
    assert timm.create_model("vz_convit_tiny", device="meta").pos_embed.is_meta
    model = timm.create_model("vz_convit_tiny").eval()
    x = torch.randn(1, 3, 32, 64)
    with torch.no_grad():
        expected = model(x)
        bf16 = timm.create_model("vz_convit_tiny").eval().to(torch.bfloat16)
        bf16.load_state_dict(model.state_dict())
        assert bf16(x.bfloat16()).dtype == torch.bfloat16
    exported = torch.export.export(model, (x,))
    torch.testing.assert_close(exported.module()(x), expected)


@pytest.mark.slow
def test_compile_fullgraph_matches_eager(tiny_pair):
    _, ours = tiny_pair
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        torch.testing.assert_close(torch.compile(ours, fullgraph=True)(x), ours(x), rtol=1e-5, atol=1e-5)


def test_reference_macs_match_card():
    """The card's GMACs count the model's math; the reference backend computes exactly that."""
    card = variant_card("vz_convit_tiny")
    with use_backend("reference"):
        macs = count_macs(timm.create_model("vz_convit_tiny"), (3, 224, 224))
    assert abs(macs / 1e9 - card["paper_gmacs"]) <= card["gmacs_tolerance"] * card["paper_gmacs"]
