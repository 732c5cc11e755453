"""vz_sparsifiner_*: exact counts, the official layout, timm's DeiT weights, and what the predictor computes."""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import timm
import torch

import visionzoo  # noqa: F401  (registers vz_* models)
from visionzoo.bench.flops import count_params
from visionzoo.models._cards import variant_card
from visionzoo.models._checkpoint import load_checkpoint
from visionzoo.models.sparsifiner import checkpoint_filter_fn, top_keys
from visionzoo.ops import REFERENCE, use_backend

MANIFEST = Path(__file__).parents[1] / "data" / "sparsifiner" / "official_deit_small.tsv"
SIZES = ["tiny", pytest.param("small", marks=pytest.mark.slow), pytest.param("base", marks=pytest.mark.slow)]


def _manifest(path):
    rows = [line.split("\t") for line in path.read_text().splitlines() if line.strip()]
    return {name: tuple(int(size) for size in shape.split(",")) for name, shape in rows}


def _tiny(**kwargs):
    torch.manual_seed(0)
    return timm.create_model("vz_sparsifiner_deit_tiny", **kwargs).eval()


@pytest.mark.parametrize("size", ["tiny", "small", "base"])
def test_param_count_matches_card_and_is_deit_plus_predictors(size):
    name = f"vz_sparsifiner_deit_{size}"
    model = timm.create_model(name, device="meta")
    deit = timm.create_model(f"deit_{size}_patch16_224", device="meta")
    predictors = sum(p.numel() for n, p in model.named_parameters() if ".mask_predictor." in n)
    assert count_params(model) == variant_card(name)["params"]
    assert count_params(model) == count_params(deit) + predictors
    assert predictors == 12 * 16_768


def test_official_layout_is_ours_and_converts_strictly():
    own = timm.create_model("vz_sparsifiner_deit_small", device="meta").state_dict()
    manifest = _manifest(MANIFEST)
    assert manifest == {key: tuple(value.shape) for key, value in own.items()}
    official = {key: torch.randn(shape) for key, shape in manifest.items()}
    model = timm.create_model("vz_sparsifiner_deit_small")
    load_checkpoint(model, {"model": official}, filter_fn=checkpoint_filter_fn)  # strict
    assert all(torch.equal(model.state_dict()[key], value) for key, value in official.items())


@pytest.mark.parametrize("size", SIZES)
def test_timm_deit_weights_load_and_keep_rate_one_is_that_deit(size):
    torch.manual_seed(0)
    deit = timm.create_model(f"deit_{size}_patch16_224").eval()
    model = timm.create_model(f"vz_sparsifiner_deit_{size}", keep_rate=1.0).eval()
    predictors = {k: v.clone() for k, v in model.state_dict().items() if ".mask_predictor." in k}
    load_checkpoint(model, deit.state_dict(), filter_fn=checkpoint_filter_fn)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in predictors.items()), "predictors keep their init"
    images = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(model(images), deit(images), rtol=1e-4, atol=1e-4)


def test_every_key_kept_through_the_sparse_path_is_dense_deit():
    """keep_rate 1.0 skips the predictor; a rate that keeps every key anyway runs it and must agree."""
    torch.manual_seed(0)
    deit = timm.create_model("deit_tiny_patch16_224", img_size=64).eval()
    model = timm.create_model("vz_sparsifiner_deit_tiny", img_size=64, keep_rate=0.999).eval()
    load_checkpoint(model, deit.state_dict(), filter_fn=checkpoint_filter_fn)
    images = torch.randn(2, 3, 64, 64)
    for backend in (REFERENCE, "gather", "sdpa"):
        with use_backend(backend), torch.no_grad():
            torch.testing.assert_close(model(images), deit(images), rtol=1e-4, atol=1e-4)


def test_distilled_deit_is_refused_with_what_to_use():
    deit = timm.create_model("deit_tiny_distilled_patch16_224", device="meta")
    with pytest.raises(ValueError, match="deit_\\*_patch16_224"):
        checkpoint_filter_fn(deit.state_dict(), _tiny(device="meta"))


def test_keep_rate_sets_the_kept_keys_per_query():
    model = _tiny(keep_rate=0.1)
    attention = model.blocks[0].attn
    q = k = torch.randn(1, 3, 197, 64)
    approx = attention.mask_predictor(q, k, (14, 14), (14, 14))
    assert approx.shape == (1, 3, 196, 197)
    assert top_keys(approx, 0.1).shape == (1, 3, 196, math.ceil(0.1 * 197))
    with pytest.raises(ValueError, match="keep_rate"):
        _tiny(keep_rate=0.0, device="meta")


def test_predictor_keeps_coef_topk_coefficients_and_thresholds_the_basis():
    model = _tiny()
    predictor = model.blocks[0].attn.mask_predictor
    with torch.no_grad():
        predictor.proj_back_n.copy_(torch.linspace(-0.05, 0.05, 197 * 32).view(197, 32))
    q, k = torch.randn(1, 3, 197, 64), torch.randn(1, 3, 197, 64)
    sparse = predictor(q, k, (14, 14), (14, 14))
    dense = predictor(q, k, (14, 14), (14, 14), reconstruction=True)
    # Sparse: 8 of 32 coefficients on |W_up| with entries <= 0.02 zeroed; dense: all 32 on the raw W_up.
    reduced_keys = predictor.proj_c_k(k).transpose(-2, -1) @ predictor.proj_n
    coefficients = ((predictor.proj_c_q(q) @ reduced_keys) * 3**-0.5).softmax(-1)[:, :, 1:]
    top = coefficients.topk(8, dim=-1)
    basis = predictor.proj_back_n.abs().T
    basis = torch.where(basis > 0.02, basis, 0.0)
    expected = torch.zeros_like(coefficients).scatter(-1, top.indices, top.values) @ basis
    torch.testing.assert_close(sparse, expected)
    torch.testing.assert_close(dense, coefficients @ predictor.proj_back_n.T)


def test_reconstruction_phase_trains_the_predictors():
    model = _tiny(img_size=64)
    model.set_reconstruction(True)
    out = model.forward_distill(torch.randn(2, 3, 64, 64), record=("approx_attention",))
    assert len(out["approx_attention"]) == 12 and out["approx_attention"][0].shape == (2, 3, 16, 17)
    sum(a.square().sum() for a in out["approx_attention"]).backward()
    missing = [n for n, p in model.named_parameters() if ".mask_predictor." in n and p.grad is None]
    assert not missing, missing


def test_other_input_sizes_resample_the_token_tables():
    model = _tiny()
    with torch.no_grad():
        out = model(torch.randn(1, 3, 96, 128))
    assert out.shape == (1, 1000) and torch.isfinite(out).all()
    with pytest.raises(ValueError, match="reduced_tokens=32"):
        checkpoint_filter_fn(model.state_dict(), timm.create_model("vz_sparsifiner_deit_tiny", img_size=96))
    small = timm.create_model("vz_sparsifiner_deit_tiny", img_size=96, reduced_tokens=32)
    converted = checkpoint_filter_fn(model.state_dict(), small)
    assert converted["blocks.0.attn.mask_predictor.proj_n"].shape == (37, 32)
    small.load_state_dict(converted)


def test_tied_zero_scores_keep_the_lowest_key_indices():
    scores = torch.zeros(2, 1, 3, 10)
    scores[..., 7] = 0.5
    scores[1, 0, 2, 9] = -0.25  # reconstruction-phase scores can be negative: below the zeros they stay
    kept = top_keys(scores, 0.3).sort(dim=-1).values
    assert kept[0].tolist() == [[[0, 1, 7]] * 3]
    assert kept[1, 0, 2].tolist() == [0, 1, 7]


def test_inference_keeps_the_selection_tables_until_the_weights_change():
    model = _tiny()
    predictor = model.blocks[0].attn.mask_predictor
    q, k = torch.randn(1, 3, 1 + 16 * 12, 64), torch.randn(1, 3, 1 + 16 * 12, 64)

    def kept():
        return predictor.kept_keys(q, k, (16, 12), (14, 14), 0.25)

    with torch.no_grad():
        first = kept()
        tables = predictor._selection_tables((16, 12), (14, 14))
        assert kept().equal(first) and predictor._selection_tables((16, 12), (14, 14)) is tables
        # An in-place update (load_state_dict, an optimiser step) must not leave the old tables in use.
        predictor.proj_back_n.copy_(torch.linspace(-0.05, 0.05, 197 * 32).view(197, 32))
        updated = kept()
    assert updated.equal(kept()) and not updated.equal(first)  # grad enabled: made afresh
