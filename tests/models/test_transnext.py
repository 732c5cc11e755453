"""TransNeXt family: any input size from one checkpoint, official checkpoint layout, MACs against the card."""
from pathlib import Path

import pytest
import timm
import torch

import visionzoo  # noqa: F401  (registers the zoo)
from visionzoo.bench.flops import count_macs
from visionzoo.models._cards import variant_card
from visionzoo.models._checkpoint import load_checkpoint
from visionzoo.models.transnext import checkpoint_filter_fn
from visionzoo.ops import use_backend

KEYS_DIR = Path(__file__).resolve().parents[1] / "data" / "transnext_keys"
MANIFESTS = {
    "vz_transnext_micro": "transnext_micro.tsv",
    "vz_transnext_tiny": "transnext_tiny.tsv",
    "vz_transnext_small": "transnext_small.tsv",
    "vz_transnext_base": "transnext_base.tsv",
    "vz_transnext_micro_aaaa": "transnext_micro_AAAA.tsv",
}


def _official_state_dict(manifest: str) -> dict[str, torch.Tensor]:
    """A synthetic checkpoint in the official layout, plus the fixed-size buffers older exports may carry."""
    state = {}
    for line in (KEYS_DIR / manifest).read_text().splitlines():
        key, shape = line.split("\t")
        state[key] = torch.zeros(tuple(int(n) for n in shape.split(",")))
    state["relative_pos_index1"] = torch.zeros(3136, 49, dtype=torch.long)
    state["relative_coords_table1"] = torch.zeros(10816, 2)
    state["block1.0.attn.seq_length_scale"] = torch.zeros(3136, 1)
    state["block1.0.attn.padding_mask"] = torch.zeros(3136, 9, dtype=torch.bool)
    return state


@pytest.mark.parametrize("name", list(MANIFESTS))
def test_official_layout_converts_to_ours(name):
    model = timm.create_model(name, device="meta")
    official = _official_state_dict(MANIFESTS[name])
    converted = checkpoint_filter_fn({"model": {f"module.{k}": v for k, v in official.items()}}, model)
    own = model.state_dict()
    assert sorted(converted) == sorted(own)
    mismatched = [k for k in own if converted[k].shape != own[k].shape]
    assert not mismatched, mismatched[:5]


def test_official_checkpoint_loads_and_runs():
    model = timm.create_model("vz_transnext_micro").eval()
    official = {key: torch.randn_like(value, dtype=torch.float32) * 0.02 for key, value in
                _official_state_dict(MANIFESTS["vz_transnext_micro"]).items() if value.is_floating_point()}
    load_checkpoint(model, official, filter_fn=checkpoint_filter_fn)
    assert torch.equal(model.stages[2].blocks[3].mlp.dwconv.weight, official["block3.3.mlp.dwconv.dwconv.weight"])
    assert torch.equal(model.stages[0].patch_embed.proj.weight, official["patch_embed1.proj.weight"])
    assert torch.equal(model.stages[3].norm.bias, official["norm4.bias"])
    with torch.no_grad():
        assert torch.isfinite(model(torch.randn(1, 3, 64, 64))).all()


def test_one_state_dict_serves_every_input_size():
    source = timm.create_model("vz_transnext_micro")
    model = timm.create_model("vz_transnext_micro").eval()
    model.load_state_dict(source.state_dict())
    names = {n for n, _ in model.named_parameters()}
    for height, width in ((224, 224), (256, 256), (320, 192)):
        with torch.no_grad():
            out = model(torch.randn(1, 3, height, width))
        assert out.shape == (1, 1000) and torch.isfinite(out).all()
        assert {n for n, _ in model.named_parameters()} == names
        assert not list(model.buffers())


def test_features_only_at_an_unseen_size():
    model = timm.create_model("vz_transnext_micro", features_only=True, out_indices=(1, 3)).eval()
    with torch.no_grad():
        maps = model(torch.randn(1, 3, 320, 192))
    assert [tuple(m.shape) for m in maps] == [(1, 96, 40, 24), (1, 384, 10, 6)]


def test_fixed_pool_size_mode_runs_and_keeps_parameters():
    model = timm.create_model("vz_transnext_micro", fixed_pool_size=2).eval()
    assert sum(p.numel() for p in model.parameters()) == variant_card("vz_transnext_micro")["params"]
    with torch.no_grad():
        assert model(torch.randn(1, 3, 64, 96)).shape == (1, 1000)


def test_too_small_input_is_reported():
    model = timm.create_model("vz_transnext_micro_aaaa", device="meta")
    with pytest.raises(ValueError, match="at least 64x64"):
        model(torch.randn(1, 3, 32, 64, device="meta"))
    with pytest.raises(ValueError, match="3 input channels"):
        model(torch.randn(1, 1, 64, 64, device="meta"))


def test_pretrained_cfgs_follow_the_official_evaluation():
    cfg_224 = timm.models.get_pretrained_cfg("vz_transnext_small.in1k")
    cfg_384 = timm.models.get_pretrained_cfg("vz_transnext_small.in1k_384")
    assert (cfg_224.crop_pct, cfg_224.crop_mode) == (0.875, "center")
    assert (cfg_384.input_size, cfg_384.crop_pct, cfg_384.crop_mode) == ((3, 384, 384), 1.0, "squash")
    assert timm.models.get_pretrained_cfg("vz_transnext_micro_aaaa.in1k").input_size == (3, 256, 256)


def test_no_weight_decay_covers_the_special_parameters():
    model = timm.create_model("vz_transnext_micro", device="meta")
    skipped = model.no_weight_decay()
    assert "stages.0.blocks.0.attn.temperature" in skipped
    assert "stages.3.blocks.1.attn.cpb_fc2.weight" in skipped
    assert "stages.0.blocks.0.attn.q.weight" not in skipped


@pytest.mark.slow
@pytest.mark.parametrize("name", list(MANIFESTS))
def test_macs_match_the_fvcore_recount(name):
    """The unfold reference counts the window matmuls the way fvcore counted the official code."""
    card = variant_card(name)
    model = timm.create_model(name)
    with use_backend("reference"):
        macs = count_macs(model, (3, card["input_size"], card["input_size"]))
    expected = card["fvcore_gmacs"] * 1e9
    assert abs(macs - expected) <= card["gmacs_tolerance"] * expected, f"{macs / 1e9:.3f} vs {expected / 1e9:.3f}"
