"""vz_davit_*: parameter counts, timm equivalence, the official layout, any input size, the padded path, MACs."""
from pathlib import Path

import pytest
import timm
import torch
from timm.models.davit import checkpoint_filter_fn as timm_official_filter

import visionzoo.layers.window_attention as window_attention_module
from visionzoo.bench.flops import count_macs
from visionzoo.models._cards import variant_card
from visionzoo.models.davit import checkpoint_filter_fn
from visionzoo.ops import REFERENCE, use_backend
from visionzoo.ops.window import pad_to_windows

MANIFESTS = Path(__file__).resolve().parents[1] / "data" / "davit"
VARIANTS = ["tiny", "small", "base", "large", "huge", "giant"]
# Exact counts of the official code (spec §2); huge and giant exist only in timm.
SPEC_PARAMS = {"tiny": 28_360_168, "small": 49_745_896, "base": 87_954_408, "large": 196_811_752}
SPEC_MACS = {"tiny": 4_540_244_736}


def _slow_unless_tiny(names):
    return [name if name == "tiny" else pytest.param(name, marks=pytest.mark.slow) for name in names]


def _manifest(path: Path) -> dict[str, tuple[int, ...]]:
    rows = (line.split("\t") for line in path.read_text().splitlines() if line.strip())
    return {key: tuple(int(dim) for dim in shape.split(",")) for key, shape in rows}


def _timm_pair(variant: str, **kwargs):
    torch.manual_seed(0)
    reference = timm.create_model(f"davit_{variant}", **kwargs).eval()
    ours = timm.create_model(f"vz_davit_{variant}", **kwargs).eval()
    ours.load_state_dict(checkpoint_filter_fn(reference.state_dict(), ours))
    return reference, ours


@pytest.mark.parametrize("variant", VARIANTS)
def test_params_and_layout_equal_timm(variant):
    reference = timm.create_model(f"davit_{variant}", device="meta")
    ours = timm.create_model(f"vz_davit_{variant}", device="meta")
    converted = checkpoint_filter_fn(reference.state_dict(), ours)
    assert {k: v.shape for k, v in converted.items()} == {k: v.shape for k, v in ours.state_dict().items()}
    params = sum(p.numel() for p in ours.parameters())
    assert params == sum(p.numel() for p in reference.parameters()) == variant_card(f"vz_davit_{variant}")["params"]
    if variant in SPEC_PARAMS:
        assert params == SPEC_PARAMS[variant]


@pytest.mark.parametrize("variant", _slow_unless_tiny(["tiny", "small", "base"]))
def test_logits_equal_timm(variant):
    reference, ours = _timm_pair(variant)
    for size in ((224, 224), (97, 131)):
        x = torch.randn(1, 3, *size)
        with torch.no_grad():
            expected, actual = reference(x), ours(x)
        torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-5 * expected.abs().max().item())


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["large", "huge"])  # giant (1.4B params) is checked shape-only above
def test_logits_equal_timm_large_variants(variant):
    reference, ours = _timm_pair(variant)
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        expected, actual = reference(x), ours(x)
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-5 * expected.abs().max().item())


@pytest.mark.parametrize("variant", ["tiny", "small", "base"])
def test_official_layout_loads_strictly(variant):
    official = {key: torch.empty(shape) for key, shape in _manifest(MANIFESTS / f"DaViT_{variant}.tsv").items()}
    model = timm.create_model(f"vz_davit_{variant}", device="meta")
    converted = checkpoint_filter_fn(dict(official), model)
    result = model.load_state_dict(converted, strict=True, assign=True)
    assert not result.missing_keys and not result.unexpected_keys
    # Every tensor lands where timm's own converter puts it, and the manifest of timm's layout is ours.
    timm_converted = timm_official_filter(dict(official), model)
    assert converted.keys() == timm_converted.keys()
    assert all(converted[key] is timm_converted[key] for key in converted)
    assert _manifest(MANIFESTS / f"timm_davit_{variant}.tsv") == {k: tuple(v.shape) for k, v in converted.items()}


def test_any_input_size_gives_the_four_level_pyramid():
    model = timm.create_model("vz_davit_tiny", features_only=True).eval()
    assert model.feature_info.reduction() == [4, 8, 16, 32]
    assert model.feature_info.channels() == [96, 192, 384, 768]
    with torch.no_grad():
        maps = model(torch.randn(1, 3, 97, 131))
    assert [tuple(m.shape[-2:]) for m in maps] == [(25, 33), (13, 17), (7, 9), (4, 5)]
    assert all(torch.isfinite(m).all() for m in maps)


def test_padded_window_path_equals_unpadded_at_224(monkeypatch):
    # Pad one whole extra window of zeros at the bottom and right: those form windows of their own, so the
    # real tokens attend exactly as before and the crop must give back the unpadded result.
    model = timm.create_model("vz_davit_tiny").eval()
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        expected = model(x)

    def pad_one_extra_window(tokens, window_size):
        padded = pad_to_windows(tokens, window_size)
        return torch.nn.functional.pad(padded, (0, 0, 0, window_size[1], 0, window_size[0]))

    monkeypatch.setattr(window_attention_module, "pad_to_windows", pad_one_extra_window)
    with torch.no_grad():
        actual = model(x)
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-5)


def test_macs_match_the_official_count():
    model = timm.create_model("vz_davit_tiny")
    with use_backend(REFERENCE):  # plain matmuls, which the MAC counter sees
        macs = count_macs(model, (3, 224, 224))
    assert abs(macs - SPEC_MACS["tiny"]) <= 0.02 * SPEC_MACS["tiny"]
    assert abs(macs / 1e9 - variant_card("vz_davit_tiny")["paper_gmacs"]) <= 0.02 * SPEC_MACS["tiny"] / 1e9


def test_stochastic_depth_grows_over_every_sub_block():
    model = timm.create_model("vz_davit_tiny", drop_path_rate=0.3)
    blocks = [block for stage in model.stages for dual in stage.blocks for block in dual]
    assert isinstance(blocks[0].drop_path1, torch.nn.Identity)
    rates = [block.drop_path1.drop_prob for block in blocks[1:]]
    assert rates == pytest.approx([0.3 * index / (len(blocks) - 1) for index in range(1, len(blocks))])


def test_bad_input_is_explained():
    model = timm.create_model("vz_davit_tiny", device="meta")
    with pytest.raises(ValueError, match="expects 3 input channels"):
        model.forward_features(torch.randn(1, 4, 32, 32))
    with pytest.raises(ValueError, match="NCHW intermediates only"):
        model.forward_intermediates(torch.randn(1, 3, 32, 32), output_fmt="NLC")


def test_training_gradients_equal_timm():
    # The blocks add residuals and apply GELU in place where autograd allows: gradients must not change.
    reference, ours = _timm_pair("tiny")
    reference.train(), ours.train()
    x = torch.randn(2, 3, 40, 52)
    reference(x).square().mean().backward()
    ours(x).square().mean().backward()
    reference_grads = dict(reference.named_parameters())
    for name, param in ours.named_parameters():
        expected = reference_grads[name].grad
        torch.testing.assert_close(param.grad, expected, rtol=1e-4, atol=1e-6 + 1e-4 * expected.abs().max().item())
