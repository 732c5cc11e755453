"""LITv2: paper fidelity (params, MACs), official checkpoint layout, any input size, timm contract details."""
import re
from pathlib import Path

import pytest
import timm
import torch

from visionzoo.bench.flops import count_macs, count_params
from visionzoo.layers.fuse import fuse_model
from visionzoo.models._cards import variant_card
from visionzoo.models._checkpoint import load_checkpoint
from visionzoo.models.litv2 import LITv2, checkpoint_filter_fn
from visionzoo.ops import use_backend

VARIANTS = ["vz_litv2_small", "vz_litv2_medium", "vz_litv2_base"]
MANIFESTS = Path("/work/shared/specs/keys")
SIZES = [(64, 64), (96, 128)]


def _tiny(**kwargs) -> LITv2:
    torch.manual_seed(0)
    return LITv2(embed_dim=32, depths=(1, 1, 1, 1), num_heads=(1, 2, 4, 8), num_classes=10, **kwargs).eval()


@pytest.mark.parametrize("name", VARIANTS)
def test_parameter_count_equals_card(name):
    model = timm.create_model(name, device="meta")
    assert all(p.is_meta for p in model.parameters())
    assert count_params(model) == variant_card(name)["params"]


@pytest.mark.parametrize(
    "name, size",
    [("vz_litv2_small", 224), ("vz_litv2_medium", 224), ("vz_litv2_base", 224), ("vz_litv2_base", 384)],
)
def test_macs_match_the_repo_counter(name, size):
    card = variant_card(name)
    figures = card if size == card["input_size"] else card["finetune_384"]
    macs = count_macs(timm.create_model(name, device="meta"), (3, size, size)) / 1e9
    assert macs == pytest.approx(figures["paper_gmacs"], rel=card["gmacs_tolerance"])
    assert macs == pytest.approx(figures["repo_gmacs"], rel=0.005)


def _official_state_dict(name: str, device: str = "cpu") -> dict[str, torch.Tensor]:
    """A synthetic checkpoint with every key and shape of the official release's manifest, entry i filled with i."""
    state_dict = {}
    lines = (MANIFESTS / f"litv2_{name.split('_')[-1]}.tsv").read_text().splitlines()
    for index, line in enumerate(lines):
        key, shape = line.split("\t")
        size = [int(dim) for dim in shape.split(",")] if shape else []
        dtype = torch.int64 if key.endswith("num_batches_tracked") else torch.float32
        state_dict[key] = torch.full(size, index, dtype=dtype, device=device)
    return state_dict


@pytest.mark.skipif(not MANIFESTS.is_dir(), reason="needs the spec's key manifests")
@pytest.mark.parametrize("name", VARIANTS)
def test_official_layout_converts_to_every_key_and_shape(name):
    model = timm.create_model(name, device="meta")
    converted = checkpoint_filter_fn({"model": _official_state_dict(name, device="meta")}, model)
    own = model.state_dict()
    assert sorted(converted) == sorted(own)
    assert {key: tuple(value.shape) for key, value in converted.items()} == {
        key: tuple(value.shape) for key, value in own.items()
    }


@pytest.mark.skipif(not MANIFESTS.is_dir(), reason="needs the spec's key manifests")
def test_official_checkpoint_loads_strictly_and_round_trips():
    official = _official_state_dict("vz_litv2_small")
    model = timm.create_model("vz_litv2_small")
    wrapped = {"model": {f"module.{key}": value for key, value in official.items()}, "epoch": torch.tensor(300)}
    load_checkpoint(model, wrapped, filter_fn=checkpoint_filter_fn)
    # The DTM closing official stage i opens our stage i + 1; the depthwise conv loses one name level.
    assert torch.equal(model.stages[1].downsample.dconv.conv_offset.weight,
                       official["layers.0.downsample.dconv.conv_offset.weight"])
    assert torch.equal(
        model.stages[3].downsample.norm.running_var, official["layers.2.downsample.norm_layer.running_var"]
    )
    assert torch.equal(
        model.stages[2].blocks[5].mlp.dwconv.weight, official["layers.2.blocks.5.mlp.dwconv.dwconv.weight"]
    )
    # Our own layout passes through unchanged.
    ours = model.state_dict()
    assert checkpoint_filter_fn(ours, model).keys() == ours.keys()


def test_one_checkpoint_serves_every_size():
    model = _tiny()
    before = {key: (tuple(value.shape), value.clone()) for key, value in model.state_dict().items()}
    for height, width in [*SIZES, (128, 96), (70, 45)]:
        with torch.no_grad():
            assert model(torch.randn(1, 3, height, width)).shape == (1, 10)
    after = model.state_dict()
    assert before.keys() == after.keys()
    for key, (shape, value) in before.items():
        assert shape == tuple(after[key].shape) and torch.equal(value, after[key]), key


@pytest.mark.parametrize("height, width", SIZES)
def test_intermediates_match_feature_info(height, width):
    model = _tiny()
    x = torch.randn(1, 3, height, width)
    with torch.no_grad():
        final, intermediates = model.forward_intermediates(x)
        features = model.forward_features(x)
        normed = model.forward_intermediates(x, indices=[3], norm=True, intermediates_only=True)
    assert len(intermediates) == len(model.feature_info)
    for feature, info in zip(intermediates, model.feature_info):
        assert feature.shape == (1, info["num_chs"], height // info["reduction"], width // info["reduction"])
    torch.testing.assert_close(final, features)
    torch.testing.assert_close(normed[0], features)


@pytest.mark.parametrize("feature_cls", [None, "getter"])
def test_features_only(feature_cls):
    kwargs = {} if feature_cls is None else {"feature_cls": feature_cls}
    # The registered name with a tiny configuration: the wrapper is what is under test.
    model = timm.create_model(
        "vz_litv2_small", features_only=True, out_indices=(1, 3), embed_dim=32, depths=(1, 1, 1, 1),
        num_heads=(1, 2, 4, 8), **kwargs,
    ).eval()
    assert model.feature_info.channels() == [64, 256] and model.feature_info.reduction() == [8, 32]
    for height, width in SIZES:
        with torch.no_grad():
            features = model(torch.randn(1, 3, height, width))
        expected = [(1, 64, height // 8, width // 8), (1, 256, height // 32, width // 32)]
        assert [tuple(f.shape) for f in features] == expected


def test_odd_sizes_follow_the_dense_backbone():
    # Pad the image to a multiple of 4, floor at each DTM; HiLo pads its 2×2 windows internally.
    model = _tiny()
    with torch.no_grad():
        intermediates = model.forward_intermediates(torch.randn(1, 3, 70, 45), intermediates_only=True)
    assert [tuple(f.shape[-2:]) for f in intermediates] == [(18, 12), (9, 6), (4, 3), (2, 1)]


def test_backends_agree_on_the_whole_model():
    model = _tiny()
    x = torch.randn(2, 3, 96, 128)
    with torch.no_grad():
        fast = model(x)
        with use_backend("reference"):
            reference = model(x)
    torch.testing.assert_close(fast, reference, atol=1e-4, rtol=1e-4)


def test_dtm_starts_as_a_plain_strided_conv():
    model = _tiny()
    dtm = model.stages[1].downsample
    x = torch.randn(1, 12, 10, 32)
    plain = torch.nn.functional.conv2d(x.permute(0, 3, 1, 2), dtm.dconv.weight, dtm.dconv.bias, stride=2)
    expected = dtm.act(dtm.norm(plain)).permute(0, 2, 3, 1)
    with torch.no_grad():
        torch.testing.assert_close(dtm(x), expected, atol=1e-5, rtol=1e-5)


def test_deploy_form_folds_the_dtm_batchnorm():
    model = _tiny()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 1.5)
                module.weight.uniform_(0.5, 1.5)
        x = torch.randn(2, 3, 64, 96)
        expected = model(x)
        fused = fuse_model(model)
        assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fused.modules())
        torch.testing.assert_close(fused(x), expected, atol=1e-5, rtol=1e-5)


def test_classifier_and_pooling_controls():
    model = _tiny()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert model.forward_head(model.forward_features(x), pre_logits=True).shape == (2, model.num_features)
        model.reset_classifier(5)
        assert model(x).shape == (2, 5) and model.get_classifier().out_features == 5
        model.reset_classifier(0, "")
        assert model(x).shape == (2, model.num_features, 2, 2)
    with pytest.raises(ValueError, match="global_pool"):
        model.reset_classifier(3, "max")
    with pytest.raises(TypeError):
        LITv2(not_an_option=1)


def test_grad_checkpointing_keeps_outputs():
    model = _tiny()
    x = torch.randn(1, 3, 64, 96)
    expected = model(x)
    model.set_grad_checkpointing(True)
    torch.testing.assert_close(model(x), expected)


def test_group_matcher_covers_every_parameter_and_no_weight_decay_names_exist():
    model = _tiny()

    for coarse in (False, True):
        matcher = model.group_matcher(coarse=coarse)
        patterns = [matcher["stem"]] + (
            [matcher["blocks"]] if isinstance(matcher["blocks"], str) else [p for p, _ in matcher["blocks"]]
        )
        names = [name for name, _ in model.named_parameters()]
        unmatched = [n for n in names if not any(re.match(p, n) for p in patterns)]
        assert unmatched == [] or (coarse and all(n.startswith(("norm", "head")) for n in unmatched))
    assert set(model.no_weight_decay()) <= {name for name, _ in model.named_parameters()}


def test_prune_intermediate_layers():
    model = _tiny()
    assert model.prune_intermediate_layers(indices=[1], prune_norm=True) == [1]
    with torch.no_grad():
        assert model.forward_features(torch.randn(1, 3, 64, 64)).shape == (1, 64, 8, 8)


def test_bfloat16_forward():
    model = _tiny().to(torch.bfloat16)
    with torch.no_grad():
        out = model(torch.randn(1, 3, 64, 64, dtype=torch.bfloat16))
    assert out.dtype == torch.bfloat16 and torch.isfinite(out).all()


def test_bad_inputs_are_explained():
    model = _tiny()
    with pytest.raises(ValueError, match="at least 29x29"):
        model(torch.randn(1, 3, 28, 64))
    with pytest.raises(ValueError, match="channels-last"):
        model(torch.randn(1, 64, 64, 3))


def test_pretrained_cfg():
    cfg = timm.create_model("vz_litv2_base", device="meta").pretrained_cfg
    assert cfg["license"] == "apache-2.0" and cfg["first_conv"] == "patch_embed.proj" and cfg["classifier"] == "head"
    cfg384 = timm.models.get_pretrained_cfg("vz_litv2_base.in1k_384").to_dict()
    assert cfg384["input_size"] == (3, 384, 384) and cfg384["crop_pct"] == 1.0


@pytest.mark.slow
def test_compile_fullgraph_matches_eager():
    model = _tiny()
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        torch.testing.assert_close(torch.compile(model, fullgraph=True)(x), model(x), atol=1e-5, rtol=1e-5)


@pytest.mark.slow
def test_export_with_dynamic_sizes():
    model = _tiny()
    # Sides are multiples of 32: the export sees no odd sizes and needs no guards on them.
    height_blocks = torch.export.Dim("height_blocks", min=1, max=32)
    width_blocks = torch.export.Dim("width_blocks", min=1, max=32)
    program = torch.export.export(
        model, (torch.randn(2, 3, 64, 96),), dynamic_shapes={"x": {2: height_blocks * 32, 3: width_blocks * 32}}
    )
    for height, width in [(128, 64), (96, 96)]:
        x = torch.randn(2, 3, height, width)
        with torch.no_grad():
            torch.testing.assert_close(program.module()(x), model(x), atol=1e-5, rtol=1e-5)


@pytest.mark.slow
def test_onnx_dynamo_export_emits_deform_conv(tmp_path):
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    model = _tiny()
    with torch.no_grad():
        for stage in model.stages[1:]:
            stage.downsample.dconv.conv_offset.weight.normal_(std=0.1)
    x = torch.randn(1, 3, 64, 96)
    path = tmp_path / "litv2.onnx"
    torch.onnx.export(model, (x,), dynamo=True, opset_version=19).save(str(path))
    assert "DeformConv" in {node.op_type for node in onnx.load(str(path)).graph.node}
    session = ort.InferenceSession(str(path))
    out = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    with torch.no_grad():
        torch.testing.assert_close(torch.from_numpy(out), model(x), atol=1e-5, rtol=1e-5)
