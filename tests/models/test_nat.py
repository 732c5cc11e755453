"""NAT / DiNAT / DiNAT-s: the official and Hugging Face layouts convert to ours, exact parameter counts and layer
schedules of the sheet, the padding rule for small maps, and the published files loading offline."""
import re
from pathlib import Path

import pytest
import timm
import torch
import torch.nn.functional as F
from _weights_cache import (
    assert_same_logits,
    hf_snapshot,
    offline,  # noqa: F401  (fixture)
    official_reference,
    official_state_dict,
    torch_hub_file,
)

from visionzoo.layers.neighborhood_attention import NeighborhoodAttention2d
from visionzoo.models._cards import variant_card
from visionzoo.models.nat import MODEL_ARGS, checkpoint_filter_fn
from visionzoo.ops import neighborhood_attention

MANIFESTS = Path(__file__).parents[1] / "data" / "nat"
# Registered name → official manifest (the 384 DiNAT-L shares dinat_large's layout; DiNAT-s-L 384 dinat_s_large's).
OFFICIAL = {
    **{f"vz_{name}": name for name in (
        "nat_mini", "nat_tiny", "nat_small", "nat_base", "dinat_mini", "dinat_tiny", "dinat_small", "dinat_base",
        "dinat_large", "dinat_s_tiny", "dinat_s_small", "dinat_s_base", "dinat_s_large")},
    "vz_dinat_large_384": "dinat_large", "vz_dinat_large_384_k11": "dinat_large_384_11x11",
    "vz_dinat_s_large_384": "dinat_s_large",
}
SMALL = ("vz_nat_mini", "vz_dinat_mini", "vz_dinat_s_tiny")


def _manifest(name: str) -> dict[str, torch.Size]:
    rows = (line.split("\t") for line in (MANIFESTS / f"{name}.tsv").read_text().splitlines())
    return {key: torch.Size(int(d) for d in shape.split(",")) for key, shape in rows}


def _meta_model(name: str):
    with torch.device("meta"):
        return timm.create_model(name)


def _shapes(state_dict) -> dict[str, torch.Size]:
    return {key: value.shape for key, value in state_dict.items()}


def _params(name):
    return pytest.param(name, marks=() if name in SMALL else pytest.mark.slow)


@pytest.mark.parametrize("name", [_params(name) for name in OFFICIAL])
def test_official_layout_converts_to_every_key_and_shape(name):
    official = {key: torch.empty(shape, device="meta") for key, shape in _manifest(OFFICIAL[name]).items()}
    model = _meta_model(name)
    assert _shapes(checkpoint_filter_fn(official, model)) == _shapes(model.state_dict())


@pytest.mark.parametrize("name", [_params(name) for name in OFFICIAL])
def test_parameter_count_is_the_cards(name):
    assert sum(p.numel() for p in _meta_model(name).parameters()) == variant_card(name)["params"]


_TRANSFORMERS_NAMES = (
    (r"^patch_embed\.proj\.", "embeddings.patch_embeddings.projection."), (r"^patch_embed\.norm\.", "embeddings.norm."),
    (r"^levels\.", "encoder.levels."), (r"\.blocks\.", ".layers."), (r"\.norm1\.", ".layernorm_before."),
    (r"\.norm2\.", ".layernorm_after."), (r"\.attn\.rpb$", ".attention.self.rpb"),
    (r"\.attn\.proj\.", ".attention.output.dense."), (r"\.mlp\.fc1\.", ".intermediate.dense."),
    (r"\.mlp\.fc2\.", ".output.dense."), (r"^norm\.", "layernorm."), (r"^head\.", "classifier."),
)


def _transformers_layout(official: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """The official state dict renamed as the sheet's table (specs/nat.md §5) maps it to NatForImageClassification."""
    hf = {}
    for key, value in official.items():
        name = key
        for pattern, replacement in _TRANSFORMERS_NAMES:
            name = re.sub(pattern, replacement, name)
        name = name if name.startswith("classifier.") else prefix + name
        if key.endswith(".gamma1"):
            gamma2 = official[key.replace(".gamma1", ".gamma2")]
            hf[name.replace(".gamma1", ".layer_scale_parameters")] = torch.stack([value, gamma2])
        elif ".attn.qkv." in key:
            for part, chunk in zip(("query", "key", "value"), value.chunk(3)):
                hf[name.replace(".attn.qkv.", f".attention.self.{part}.")] = chunk
        elif not key.endswith(".gamma2"):
            hf[name] = value
    return hf


@pytest.mark.parametrize("name, prefix", [("vz_nat_mini", "nat."), ("vz_dinat_mini", "dinat."),
                                          pytest.param("vz_nat_small", "nat.", marks=pytest.mark.slow)])
def test_transformers_layout_gives_the_official_models_logits(name, prefix):
    official = official_state_dict(name) if name in SMALL else {
        key: torch.randn(shape) * 0.05 for key, shape in _manifest(OFFICIAL[name]).items()}
    model = timm.create_model(name).eval()
    model.load_state_dict(_transformers_layout(official, prefix))
    assert_same_logits(model, official_reference(name, official), 64, exact=True)


def test_layer_scale_and_dilations_follow_the_official_builders():
    nat_small, dinat_small = _meta_model("vz_nat_small"), _meta_model("vz_dinat_small")
    assert hasattr(nat_small.stages[0].blocks[0], "gamma1") and not hasattr(dinat_small.stages[0].blocks[0], "gamma1")
    dilations = [[block.attn.dilation for block in stage.blocks] for stage in _meta_model("vz_dinat_tiny").stages]
    assert dilations == [[1, 8, 1], [1, 4, 1, 4], [1, 2] * 9, [1] * 5]
    assert MODEL_ARGS["vz_dinat_large_384"]["dilations"][:3] == ((1, 13, 1), (1, 6, 1, 6), (1, 3) * 9)
    assert MODEL_ARGS["vz_dinat_s_tiny"]["dilations"] == ((1, 8), (1, 4), (1, 2) * 3, (1, 1))


def test_bias_tables_are_exempt_from_weight_decay():
    model = _meta_model("vz_dinat_mini")
    exempt = model.no_weight_decay()
    assert len(exempt) == 18 and all(name.endswith(".attn.rpb") for name in exempt)
    assert "stages.0.blocks.0.attn.rpb" in exempt


def test_small_maps_are_padded_with_bias_only_keys_as_natten_0_14_did():
    torch.manual_seed(0)
    layer = NeighborhoodAttention2d(8, 2, kernel_size=3, dilation=2).eval()
    x = torch.randn(1, 5, 7, 8)  # span 3 * 2 = 6 > 5 rows: one zero row is added, then cropped away
    padded = F.pad(x, (0, 0, 0, 0, 0, 1))
    q, k, v = layer.qkv(padded).view(1, 6, 7, 3, 2, 4).permute(3, 0, 4, 1, 2, 5)
    expected = neighborhood_attention(q, k, v, 3, 2, layer.rpb, backend="reference")
    expected = layer.proj(expected.permute(0, 2, 3, 1, 4).reshape(1, 6, 7, 8))[:, :5]
    with torch.no_grad():
        torch.testing.assert_close(layer(x), expected)


@pytest.mark.parametrize("size", [(32, 45), (224, 200)])
def test_any_input_size_gives_the_four_level_pyramid(size):
    model = timm.create_model("vz_dinat_s_tiny", features_only=True).eval()
    with torch.no_grad():
        features = model(torch.randn(1, 3, *size))
    height, width = size
    expected = [-(-height // stride) for stride in (4, 8, 16, 32)], [-(-width // stride) for stride in (4, 8, 16, 32)]
    assert [tuple(f.shape[-2:]) for f in features] == list(zip(*expected))
    assert [f.shape[1] for f in features] == [96, 192, 384, 768]


@pytest.mark.parametrize("name, tag, location", [
    ("vz_nat_mini", "in1k", "url"), ("vz_nat_mini", "in1k_hf", "hf"), ("vz_dinat_s_tiny", "in1k", "url"),
])
def test_published_files_load_offline(offline, name, tag, location):  # noqa: F811
    official = official_state_dict(name)
    weights = next(item for item in variant_card(name)["weights"] if item["tag"] == tag)
    if location == "url":
        torch.save(official, torch_hub_file(weights["url"]))  # a bare state dict, as the authors saved it
    else:
        torch.save(_transformers_layout(official, "nat."), hf_snapshot(weights["hf_hub_id"]) / "pytorch_model.bin")
    model = timm.create_model(f"{name}.{tag}", pretrained=True).eval()
    assert_same_logits(model, official_reference(name, official), 64, exact=True)


def _official_weights(name: str, head_classes: int | None = None) -> dict[str, torch.Tensor]:
    """Random weights in the official layout of ``name`` (its manifest); ``head_classes`` resizes the classifier,
    as an IN-22k pre-training file may have any head."""
    generator = torch.Generator().manual_seed(0)
    shapes = _manifest(OFFICIAL[name])
    if head_classes is not None:
        shapes["head.weight"], shapes["head.bias"] = (head_classes, shapes["head.weight"][1]), (head_classes,)
    return {key: torch.randn(shape, generator=generator) * 0.05 for key, shape in shapes.items()}


IN22K_FILES = {
    "vz_dinat_large": "imagenet22k/dinat_large_in22k_224.pth",
    "vz_dinat_large_384_k11": "imagenet22k/dinat_large_in22k_224_11x11interp.pth",
    "vz_dinat_s_large": "imagenet22k/dinat_s_large_in22k_224.pth",
}


@pytest.mark.parametrize("name", IN22K_FILES)
def test_in22k_tags_are_the_authors_pretraining_files_as_headless_backbones(name):
    cfg = timm.models.get_pretrained_cfg(f"{name}.in22k")
    assert cfg.url == f"https://shi-labs.com/projects/dinat/checkpoints/{IN22K_FILES[name]}"
    assert cfg.num_classes == 0 and cfg.input_size == (3, 224, 224)
    assert timm.create_model(f"{name}.in22k", device="meta").num_classes == 0


def test_headless_model_drops_any_head_of_the_file():
    official = official_state_dict("vz_dinat_mini")
    official["head.weight"], official["head.bias"] = torch.randn(21841, 512), torch.randn(21841)
    model = timm.create_model("vz_dinat_mini", num_classes=0)
    converted = checkpoint_filter_fn(official, model)
    assert not any(key.startswith("head.") for key in converted)
    model.load_state_dict(converted)
    assert torch.equal(model.stages[2].blocks[1].attn.rpb, official["levels.2.blocks.1.attn.rpb"])
    assert "head.weight" in checkpoint_filter_fn(official, timm.create_model("vz_dinat_mini", device="meta"))


@pytest.mark.slow
@pytest.mark.parametrize("name, tag, location", [
    ("vz_dinat_large", "in22k_ft_in1k", "url"), ("vz_dinat_large", "in22k_ft_in1k_hf", "hf"),
    ("vz_dinat_large_384_k11", "in22k_ft_in1k_hf", "hf"), ("vz_dinat_s_large_384", "in22k_ft_in1k", "url"),
    ("vz_dinat_large", "in22k", "url"), ("vz_dinat_large_384_k11", "in22k", "url"),
    ("vz_dinat_s_large", "in22k", "url"),
])
def test_large_published_files_load_offline(offline, name, tag, location):  # noqa: F811
    weights = next(item for item in variant_card(name)["weights"] if item["tag"] == tag)
    official = _official_weights(name, head_classes=21841 if tag == "in22k" else None)
    if location == "url":
        torch.save(official, torch_hub_file(weights["url"]))
    else:
        torch.save(_transformers_layout(official, "dinat."), hf_snapshot(weights["hf_hub_id"]) / "pytorch_model.bin")
    model = timm.create_model(f"{name}.{tag}", pretrained=True).eval()
    if tag == "in22k":
        del official["head.weight"], official["head.bias"]
        reference = timm.create_model(name, num_classes=0)
        reference.load_state_dict(checkpoint_filter_fn(official, reference))
        assert_same_logits(model, reference.eval(), 64, exact=True)
        fine_tune = timm.create_model(f"{name}.{tag}", pretrained=True, num_classes=10)
        assert fine_tune.head.weight.shape == (10, 1536)
        assert torch.equal(fine_tune.stages[0].blocks[0].attn.rpb, model.stages[0].blocks[0].attn.rpb)
    else:
        assert_same_logits(model, official_reference(name, official), 64, exact=True)
