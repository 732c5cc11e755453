"""SHViT (vz_shvit_s1..s4): exact sizes, deploy fold, dynamic input, checkpoint layouts, features, MACs."""
import re
from pathlib import Path

import pytest
import timm
import torch
from torch import nn

import visionzoo  # noqa: F401  (registers the zoo)
from bn_stats import randomize_batchnorm
from visionzoo.bench.flops import count_macs, count_params
from visionzoo.layers.attention import SingleHeadSelfAttention
from visionzoo.layers.fuse import fuse_model
from visionzoo.layers.mlp import ConvNormFfn
from visionzoo.layers.residual import Residual
from visionzoo.models._cards import variant_card
from visionzoo.models.shvit import checkpoint_filter_fn

VARIANTS = ["vz_shvit_s1", "vz_shvit_s2", "vz_shvit_s3", "vz_shvit_s4"]
SLOW_AFTER_S1 = [name if name == "vz_shvit_s1" else pytest.param(name, marks=pytest.mark.slow) for name in VARIANTS]
WIDTHS = {"vz_shvit_s1": (128, 224, 320), "vz_shvit_s2": (128, 308, 448),
          "vz_shvit_s3": (192, 352, 448), "vz_shvit_s4": (224, 336, 448)}
# State-dict manifests (key, shape) of the official release and of timm, copied from the spec sheets.
KEYS_DIR = Path(__file__).resolve().parents[1] / "data" / "keys"


def _relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return ((actual - expected).abs().max() / expected.abs().max()).item()


@pytest.fixture(scope="module")
def s1():
    torch.manual_seed(0)
    return randomize_batchnorm(timm.create_model("vz_shvit_s1")).eval()


@pytest.mark.parametrize("name", VARIANTS)
def test_parameter_counts_are_exact_unfused_and_fused(name):
    card = variant_card(name)
    model = timm.create_model(name, device="meta")
    assert count_params(model) == card["params"]
    assert count_params(fuse_model(model)) == card["params_fused"]


def test_deploy_form_matches_eval_outputs(s1):
    fused = fuse_model(s1)
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in fused.modules())
    # Every depthwise residual became a plain conv; the residuals left hold an FFN or the attention.
    residuals = [m for m in fused.modules() if isinstance(m, Residual)]
    assert all(isinstance(m.m, (ConvNormFfn, SingleHeadSelfAttention)) for m in residuals)
    x = torch.randn(2, 3, 97, 131)
    with torch.no_grad():
        assert _relative_error(fused(x), s1(x)) < 1e-5
    assert fused.get_classifier() is fused.head


@pytest.mark.parametrize("size", [(64, 64), (97, 131), (16, 200)])
def test_any_input_size_works(s1, size):
    x = torch.randn(1, 3, *size)
    with torch.no_grad():
        logits = s1(x)
        features = s1.forward_intermediates(x, intermediates_only=True)
    assert logits.shape == (1, 1000) and torch.isfinite(logits).all()
    expected = [(-(-size[0] // 2**k), -(-size[1] // 2**k)) for k in (4, 5, 6)]
    assert [tuple(f.shape[-2:]) for f in features] == expected
    assert [f.shape[1] for f in features] == list(WIDTHS["vz_shvit_s1"])


@pytest.mark.parametrize("shape, message", [
    ((1, 3, 8, 64), "at least 16x16"),
    ((1, 1, 64, 64), "expects 3 input channels"),
    ((1, 64, 64, 3), "channels-last"),
    ((3, 64, 64), "add a batch dimension"),
])
def test_bad_input_is_explained(s1, shape, message):
    with pytest.raises(ValueError, match=message):
        s1(torch.randn(shape))
    with pytest.raises(ValueError, match=message):
        s1.forward_intermediates(torch.randn(shape))


# ---- checkpoint layouts -------------------------------------------------------------------------------------

def _timm_to_official(key: str) -> str:
    """Inverse of the official → timm prefix table of spec §3.10, written independently of the model code."""
    parts = key.split(".")
    if parts[0] != "stages":
        return key
    stage, kind, index, rest = int(parts[1]), parts[2], int(parts[3]), ".".join(parts[4:])
    if kind == "blocks":
        return f"blocks{stage + 1}.{index + (3 if stage else 0)}.{rest}"
    position = {0: "0.0", 1: "0.1", 2: "1", 3: "2.0", 4: "2.1"}[index]
    return f"blocks{stage + 1}.{position}.{rest}"


def _manifest(name: str) -> dict[str, tuple[int, ...]]:
    rows = (line.split("\t") for line in (KEYS_DIR / name).read_text().splitlines() if line)
    return {key: tuple(int(d) for d in dims.split(",")) if dims else () for key, dims in rows}


@pytest.fixture(scope="module")
def timm_s1():
    torch.manual_seed(1)
    return randomize_batchnorm(timm.create_model("shvit_s1"), seed=1).eval()


def test_timm_checkpoint_loads_and_reproduces_timm_logits(timm_s1):
    ours = timm.create_model("vz_shvit_s1").eval()
    ours.load_state_dict(checkpoint_filter_fn(timm_s1.state_dict(), ours), strict=True)
    x = torch.randn(2, 3, 160, 160)
    with torch.no_grad():
        assert _relative_error(ours(x), timm_s1(x)) < 1e-5


def test_official_checkpoint_wrapped_with_2d_weights_reproduces_timm_logits(timm_s1):
    official = {_timm_to_official(key): value for key, value in timm_s1.state_dict().items()}
    assert {key: tuple(v.shape) for key, v in official.items()} == _manifest("shvit_s1.tsv")
    # The official loader accepts 1x1 conv weights stored 2-D; a DDP training checkpoint wraps everything.
    official = {key: v.flatten(1) if v.dim() == 4 and v.shape[2:] == (1, 1) else v for key, v in official.items()}
    checkpoint = {"model": {f"module.{key}": value for key, value in official.items()}, "epoch": torch.tensor(299)}
    ours = timm.create_model("vz_shvit_s1").eval()
    ours.load_state_dict(checkpoint_filter_fn(checkpoint, ours), strict=True)
    x = torch.randn(2, 3, 96, 128)
    with torch.no_grad():
        assert _relative_error(ours(x), timm_s1(x)) < 1e-5


@pytest.mark.parametrize("key, expected", [
    ("patch_embed.6.bn.weight", "stem.conv3.bn.weight"),
    ("blocks1.1.conv.m.c.weight", "stages.0.blocks.1.conv.m.conv.weight"),
    ("blocks2.0.1.m.pw1.c.weight", "stages.1.downsample.1.m.pw1.conv.weight"),
    ("blocks2.1.se.fc1.weight", "stages.1.downsample.2.se.fc1.weight"),
    ("blocks3.2.0.m.bn.bias", "stages.2.downsample.3.m.bn.bias"),
    ("blocks3.4.mixer.m.qkv.c.weight", "stages.2.blocks.1.mixer.m.qkv.conv.weight"),
    ("stages.1.downsample.4.m.pw2.c.weight", "stages.1.downsample.4.m.pw2.conv.weight"),
    ("head.l.weight", "head.linear.weight"),
    ("head.linear.weight", "head.linear.weight"),
])
def test_key_mapping_follows_the_spec_table(key, expected):
    model = timm.create_model("vz_shvit_s1", device="meta")
    assert list(checkpoint_filter_fn({key: torch.zeros(1)}, model)) == [expected]


@pytest.mark.parametrize("name", VARIANTS)
@pytest.mark.parametrize("layout", ["shvit_{}.tsv", "timm_shvit_{}.tsv", "ours"])
def test_every_layout_covers_the_model_exactly(name, layout):
    model = timm.create_model(name, device="meta")
    own = {key: tuple(value.shape) for key, value in model.state_dict().items()}
    if layout == "ours":
        manifest = own
    else:
        manifest = _manifest(layout.format(name.rsplit("_", 1)[1]))
    synthetic = {key: torch.empty(shape, device="meta") for key, shape in manifest.items()}
    converted = checkpoint_filter_fn(synthetic, model)
    assert {key: tuple(value.shape) for key, value in converted.items()} == own


# ---- timm model contract (the family-specific parts) ---------------------------------------------------------

@pytest.mark.parametrize("name", VARIANTS)
def test_feature_info_is_strides_16_32_64_with_stage_widths(name):
    model = timm.create_model(name, features_only=True, device="meta")
    assert model.feature_info.reduction() == [16, 32, 64]
    assert model.feature_info.channels() == list(WIDTHS[name])


def test_features_only_maps(s1):
    model = timm.create_model("vz_shvit_s1", features_only=True).eval()
    # FeatureListNet flattens the top-level Sequentials: stem.conv0 -> stem_conv0, stages.1 -> stages_1.
    flattened = {
        re.sub(r"^(stem|stages)\.", r"\1_", key): value
        for key, value in s1.state_dict().items() if not key.startswith("head.")
    }
    model.load_state_dict(flattened, strict=True)
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        maps = model(x)
        expected = s1.forward_intermediates(x, intermediates_only=True)
    assert [tuple(m.shape) for m in maps] == [(1, 128, 4, 6), (1, 224, 2, 3), (1, 320, 1, 2)]
    assert all(torch.equal(a, b) for a, b in zip(maps, expected))


def test_forward_intermediates_agree_with_forward_features(s1):
    x = torch.randn(1, 3, 64, 80)
    with torch.no_grad():
        final, maps = s1.forward_intermediates(x)
        torch.testing.assert_close(final, s1.forward_features(x))
        torch.testing.assert_close(maps[-1], final)
        early = s1.forward_intermediates(x, indices=[0], stop_early=True, intermediates_only=True)
    assert len(early) == 1 and torch.equal(early[0], maps[0])
    with pytest.raises(ValueError, match="NCHW"):
        s1.forward_intermediates(x, output_fmt="NHWC")


def test_prune_reset_and_head_variants():
    model = timm.create_model("vz_shvit_s1").eval()
    assert model.prune_intermediate_layers(indices=[1]) == [1]
    assert len(model.stages) == 2 and model.num_features == 224
    with torch.no_grad():
        assert model(torch.randn(1, 3, 64, 64)).shape == (1, 224, 2, 2)
    model.reset_classifier(10, "avg")
    assert model.get_classifier().out_features == 10
    with torch.no_grad():
        assert model(torch.randn(2, 3, 64, 64)).shape == (2, 10)
    with pytest.raises(ValueError, match="pooled width"):
        model.reset_classifier(10, "catavgmax")


def test_construction_options():
    with pytest.raises(TypeError):
        timm.create_model("vz_shvit_s1", not_an_option=1)
    model = timm.create_model("vz_shvit_s1", in_chans=1, num_classes=7, drop_rate=0.1, drop_path_rate=0.1)
    assert model.stages[2].blocks[-1].ffn.drop_path.drop_prob == pytest.approx(0.1)
    assert model(torch.randn(2, 1, 32, 48)).shape == (2, 7)
    assert model.pretrained_cfg["first_conv"] == "stem.conv0.conv"
    assert model.pretrained_cfg["classifier"] == "head.linear"
    assert timm.create_model("vz_shvit_s4").pretrained_cfg["input_size"] == (3, 256, 256)


# ---- MACs ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", SLOW_AFTER_S1)
def test_fused_macs_match_the_paper(name):
    card = variant_card(name)
    size = card["input_size"]
    macs = count_macs(fuse_model(timm.create_model(name)), (3, size, size))
    assert macs / 1e9 == pytest.approx(card["paper_gmacs"], rel=card["gmacs_tolerance"])
