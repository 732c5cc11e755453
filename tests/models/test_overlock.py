"""OverLoCK: paper fidelity (params of both forms, MACs), both official checkpoint layouts into both model forms,
the reparameterised form, and the dynamic kernels' relative position bias."""
from __future__ import annotations

import copy
from pathlib import Path

import pytest
import timm
import torch

from _weights_cache import (
    assert_same_logits, offline, official_state_dict, torch_hub_file,  # noqa: F401
)
from bn_stats import randomize_batchnorm
from visionzoo.bench.flops import count_macs, count_params
from visionzoo.layers.dilated_reparam import DilatedReparamBlock
from visionzoo.layers.fuse import fuse_model
from visionzoo.models._cards import variant_card
from visionzoo.models._checkpoint import load_checkpoint
from visionzoo.models.overlock import _neighborhood_bias, checkpoint_filter_fn

MANIFESTS = Path(__file__).parents[1] / "data" / "overlock"
SMALLEST = "vz_overlock_xt"
VARIANTS = [
    pytest.param(name, marks=() if name == SMALLEST else pytest.mark.slow)
    for name in ("vz_overlock_xt", "vz_overlock_t", "vz_overlock_s", "vz_overlock_b")
]
RELEASE = "https://github.com/LMMMEng/OverLoCK/releases/download/v1/"
# The spec's verified counts of the official models (training, reparameterised), auxiliary head included.
RELEASED_COUNTS = {
    "vz_overlock_xt": (17_307_272, 16_791_384),
    "vz_overlock_t": (34_990_472, 33_981_064),
    "vz_overlock_s": (58_309_772, 56_670_476),
    "vz_overlock_b": (98_012_968, 95_520_680),
}


def _manifest(name: str, reparam: bool) -> dict[str, tuple[int, ...]]:
    path = MANIFESTS / f"overlock_{name.rsplit('_', 1)[1]}{'_reparam' if reparam else ''}.tsv"
    rows = (line.split("\t") for line in path.read_text().splitlines())
    return {key: tuple(int(dim) for dim in shape.split(",")) if shape else () for key, shape in rows}


@pytest.mark.parametrize("name", VARIANTS)
def test_parameter_counts_of_both_forms_equal_card_and_spec(name):
    card = variant_card(name)
    assert count_params(timm.create_model(name, device="meta")) == card["params"]
    assert count_params(timm.create_model(name, device="meta", deploy=True)) == card["params_reparam"]
    released = tuple(count_params(timm.create_model(name, device="meta", deploy=deploy, aux_head=True))
                     for deploy in (False, True))
    assert released == RELEASED_COUNTS[name]
    assert released == (card["params"] + card["aux_head_params"], card["params_reparam"] + card["aux_head_params"])


@pytest.mark.parametrize("name", VARIANTS)
def test_reparameterised_macs_match_the_verified_count_and_the_paper(name):
    """The paper counts the reparameterised model; its extra dilated branches make the training form dearer."""
    card = variant_card(name)
    deployed = count_macs(timm.create_model(name, device="meta", deploy=True), (3, 224, 224)) / 1e9
    assert deployed == pytest.approx(card["verified_gmacs"], rel=0.02)
    assert deployed == pytest.approx(card["paper_gmacs"], rel=card["gmacs_tolerance"])
    assert count_macs(timm.create_model(name, device="meta"), (3, 224, 224)) / 1e9 > deployed


@pytest.mark.parametrize("name", VARIANTS)
@pytest.mark.parametrize("reparam", [False, True], ids=["training_layout", "reparam_layout"])
def test_official_layout_converts_to_every_key_and_shape_of_its_form(name, reparam):
    model = timm.create_model(name, device="meta", deploy=reparam, aux_head=True)
    official = {key: torch.empty(shape, device="meta") for key, shape in _manifest(name, reparam).items()}
    converted = checkpoint_filter_fn({"state_dict": official}, model)
    assert {key: tuple(value.shape) for key, value in converted.items()} == {
        key: tuple(value.shape) for key, value in model.state_dict().items()
    }


@pytest.fixture(scope="module")
def small_model():
    return randomize_batchnorm(timm.create_model(SMALLEST, num_classes=10, aux_head=True)).eval()


def test_release_files_load_offline_into_either_form(offline):
    """The ``in1k`` tag (training layout) merges into ``deploy=True`` as ``fuse_model`` does; the ``in1k_reparam``
    tag loads strictly into ``deploy=True`` and, as merged kernels with identity BNs and zero branches, into the
    training form. Each pair computes the same logits."""
    for tag, manifest, suffix in (("in1k", SMALLEST, ""), ("in1k_reparam", f"{SMALLEST}_reparam", "_reparam")):
        official = official_state_dict(manifest)
        torch.save({"state_dict": official}, torch_hub_file(f"{RELEASE}overlock_xt_in1k_224{suffix}.pth"))
        model = timm.create_model(f"{SMALLEST}.{tag}", pretrained=True).eval()
        assert model.pretrained_cfg["crop_pct"] == 0.925
        deployed = load_checkpoint(timm.create_model(SMALLEST, deploy=True), official,
                                   filter_fn=checkpoint_filter_fn).eval()
        assert torch.equal(deployed.stages[5].downsample.h_proj[0].weight, official["patch_embedx.h_proj.0.weight"])
        assert torch.equal(deployed.head.weight, official["head.4.weight"].flatten(1))
        if suffix:
            assert torch.equal(deployed.stages[0].blocks[1].proj[1].lk_origin.bias,
                               official["blocks1.1.proj.1.lk_origin.bias"])
        else:
            assert torch.equal(model.stages[4].blocks[0].rpb2, official["sub_blocks3.0.rpb2"])
            assert torch.equal(model.stages[1].blocks[0].proj[7].weight, official["blocks2.0.proj.7.gamma"].flatten())
            fused = fuse_model(model)
            assert not any(isinstance(module, DilatedReparamBlock) for module in fused.modules())
            assert_same_logits(fused, model, 64)
        assert_same_logits(model, deployed, 64)


def test_relative_position_bias_follows_the_natten_rule():
    """Query (i, j) and window tap (a, c) read rpb[key_row − i + k − 1, key_col − j + k − 1] for the window
    clamped inside the map, written out directly."""
    kernel, height, width = 3, 5, 4
    rpb = torch.randn(2, 2 * kernel - 1, 2 * kernel - 1)
    bias = _neighborhood_bias(rpb, height, width, kernel)
    assert bias.shape == (2, height, width, kernel * kernel)
    for i in range(height):
        for j in range(width):
            top, left = min(max(i - 1, 0), height - kernel), min(max(j - 1, 0), width - kernel)
            for a in range(kernel):
                for c in range(kernel):
                    expected = rpb[:, top + a - i + kernel - 1, left + c - j + kernel - 1]
                    assert torch.equal(bias[:, i, j, a * kernel + c], expected)


def test_small_maps_are_enlarged_to_the_kernel_and_pooled_back(small_model):
    """At 64×64 the stride-16 map (4×4) and stride-32 map (2×2) are smaller than the 13 and 7 kernels; a
    non-square input keeps both sides' proportions. Every level keeps its size."""
    model = small_model
    for size in ((64, 64), (40, 72)):
        with torch.no_grad():
            levels = model.forward_intermediates(torch.randn(1, 3, *size), intermediates_only=True)
        assert [tuple(level.shape[-2:]) for level in levels] == [
            (-(-size[0] // stride), -(-size[1] // stride)) for stride in (4, 8, 16, 32)
        ]
        assert all(torch.isfinite(level).all() for level in levels)


def test_aux_head_classifies_the_overview_context(small_model):
    model = copy.deepcopy(small_model)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert model.aux_logits(x).shape == (2, 10)
    model.reset_classifier(3)
    with torch.no_grad():
        assert model.aux_logits(x).shape == (2, 3) and model(x).shape == (2, 3)
    with pytest.raises(RuntimeError, match="pass aux_head=True"):
        timm.create_model(SMALLEST, device="meta").aux_logits(x)
