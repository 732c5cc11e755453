"""pretrained=True resolves each published checkpoint from generated caches (never the network), converts it, and
gives the logits of the model the weights were made for; the tags' cfgs agree with timm's and with the cards."""
from __future__ import annotations

import pytest
import timm
import torch

from _weights_cache import (
    assert_same_logits,
    cache_timm_copy, hf_snapshot, offline, official_reference, official_state_dict, torch_hub_file,  # noqa: F401
)
from visionzoo.models._cards import CardError, load_cards
from visionzoo.models._pretrained import PretrainedWeightsError, list_weight_sources, weight_source

# (zoo model, timm model, timm tag, input size): timm's hub copies, the smallest of each family.
TIMM_COPIES = [
    ("vz_shvit_s1", "shvit_s1", "in1k", 96),
    ("vz_convit_tiny", "convit_tiny", "fb_in1k", 224),  # timm's ConViT takes only its build size
    ("vz_davit_tiny", "davit_tiny", "msft_in1k", 96),
    ("vz_halonet26t", "halonet26t", "a1h_in1k", 256),
]


@pytest.mark.parametrize("name, timm_name, tag, size", TIMM_COPIES)
def test_timm_hub_copy_gives_timms_logits(offline, name, timm_name, tag, size):
    reference = cache_timm_copy(timm_name, tag)
    model = timm.create_model(name, pretrained=True).eval()
    assert model.pretrained_cfg["hf_hub_id"] == f"timm/{timm_name}.{tag}"
    assert_same_logits(model, reference, size, batch=2)


@pytest.mark.parametrize("name", ["vz_transnext_micro", "vz_litv2_small"])
def test_authors_release_gives_the_converted_official_logits(offline, name):
    official = official_state_dict(name)
    source = weight_source(name)
    # The authors' training scripts save {'model': state_dict, ...}; their loaders accept that or a bare dict.
    path = hf_snapshot(source.hf_hub_id) / source.hf_hub_filename if source.hf_hub_id else torch_hub_file(source.url)
    torch.save({"model": official, "epoch": 299, "max_accuracy": 82.0}, path)
    model = timm.create_model(name, pretrained=True).eval()
    reference = official_reference(name, official)
    assert_same_logits(model, reference, 64, exact=True)


def test_each_tag_loads_its_own_file(offline):
    """The 384 fine-tune is a different file from the 224 weights; asking for the tag must read that file."""
    official = official_state_dict("vz_litv2_small")
    torch.save({"model": official}, torch_hub_file(weight_source("vz_litv2_small.in1k").url))
    with pytest.raises(PretrainedWeightsError, match="litv2_b_384.pth"):
        timm.create_model("vz_litv2_base.in1k_384", pretrained=True)


def test_offline_error_names_the_hub_file_and_the_import_command(offline):
    with pytest.raises(PretrainedWeightsError) as error:
        timm.create_model("vz_transnext_micro", pretrained=True)
    message = str(error.value)
    assert "DaiShiResearch/transnext-micro-224-1k" in message
    assert "https://huggingface.co/DaiShiResearch/transnext-micro-224-1k/resolve/main/transnext_micro_224_1k.pth" in message
    assert "visionzoo weights import vz_transnext_micro.in1k FILE" in message


def test_offline_error_names_the_release_url(offline):
    with pytest.raises(PretrainedWeightsError) as error:
        timm.create_model("vz_litv2_small", pretrained=True)
    assert "https://github.com/ziplab/LITv2/releases/download/v1.0/litv2_s.pth" in str(error.value)
    assert "visionzoo weights import vz_litv2_small.in1k FILE" in str(error.value)


def test_model_without_published_weights_keeps_timms_refusal(offline):
    assert timm.models.get_pretrained_cfg("vz_convit_tiny_plus").hf_hub_id is None
    with pytest.raises(RuntimeError, match="No pretrained weights exist"):
        timm.create_model("vz_convit_tiny_plus", pretrained=True)
    with pytest.raises(PretrainedWeightsError, match="has no published weights: the official README"):
        weight_source("vz_convit_tiny_plus")


@pytest.mark.parametrize(
    "source", [source for source in list_weight_sources() if source.source == "timm"], ids=lambda source: source.name
)
def test_timm_copies_carry_timms_own_eval_settings(source):
    ours = timm.models.get_pretrained_cfg(source.name)
    theirs = timm.models.get_pretrained_cfg(source.hf_hub_id.split("/", 1)[1])
    assert ours.hf_hub_id == source.hf_hub_id
    for field in ("input_size", "crop_pct", "crop_mode", "interpolation", "mean", "std", "num_classes"):
        assert getattr(ours, field) == getattr(theirs, field), field


def test_every_card_variant_has_weights_or_says_why():
    for card in load_cards().values():
        for variant, entry in card["variants"].items():
            tags = [f"{variant}.{item['tag']}" for item in entry["weights"]]
            assert sorted(tags) == timm.list_pretrained(f"{variant}.*")
            if not tags:
                assert entry["weights_note"]
                assert timm.models.get_pretrained_cfg(variant).hf_hub_id is None
            else:
                assert timm.models.get_pretrained_cfg(variant).tag == entry["weights"][0]["tag"]  # default first


def test_384_fine_tunes_warp_to_the_square():
    for name in ("vz_transnext_small.in1k_384", "vz_transnext_base.in1k_384", "vz_litv2_base.in1k_384"):
        cfg = timm.models.get_pretrained_cfg(name)
        assert (cfg.input_size, cfg.crop_pct, cfg.crop_mode) == ((3, 384, 384), 1.0, "squash")
    assert timm.models.get_pretrained_cfg("vz_transnext_small.in1k_384").hf_hub_filename == (
        "transnext_small_384_1k_ft_1k.pth"
    )


@pytest.mark.parametrize("entry, expected", [
    ({"input_size": 224}, "has no 'weights' entry"),
    ({"input_size": 224, "weights": []}, "no 'weights_note' saying why"),
    ({"input_size": 224, "weights": [{"tag": "in1k", "top1": 1.0, "eval": {}}]}, "exactly one of hf_hub_id/url"),
])
def test_card_weights_entries_are_checked(monkeypatch, entry, expected):
    from visionzoo.models import _pretrained

    monkeypatch.setattr(_pretrained, "load_cards", lambda: {"toy": {"variants": {"vz_toy": entry}}})
    with pytest.raises(CardError, match=expected):
        _pretrained.pretrained_cfgs("toy", dict)


def test_pretrained_cfgs_come_from_the_card(monkeypatch):
    from visionzoo.models import _pretrained

    entry = {"input_size": 224, "weights": [
        {"tag": "a", "source": "official", "url": "https://example.org/a.pth", "license": "mit", "top1": 1.0,
         "eval": {"input_size": 288, "crop_pct": 0.9, "interpolation": "bilinear"}},
        {"tag": "b", "source": "timm", "hf_hub_id": "timm/toy.b", "license": "mit", "top1": 2.0, "eval": {}},
    ]}
    monkeypatch.setattr(_pretrained, "load_cards", lambda: {"toy": {"variants": {"vz_toy": entry}}})
    cfgs = _pretrained.pretrained_cfgs("toy", dict)
    assert list(cfgs) == ["vz_toy.a", "vz_toy.b"]
    assert cfgs["vz_toy.a"] == dict(input_size=(3, 288, 288), license="mit", url="https://example.org/a.pth",
                                    hf_hub_id=None, crop_pct=0.9, interpolation="bilinear")
    assert cfgs["vz_toy.b"]["hf_hub_id"] == "timm/toy.b" and cfgs["vz_toy.b"]["input_size"] == (3, 224, 224)
