"""Model cards and the registry agree both ways, and every card carries the facts the tools read."""
import pytest
import yaml

import visionzoo
from visionzoo.models._cards import CARDS_DIR, REQUIRED_VARIANT_FIELDS, CardError, _validate, load_cards


def test_every_registered_model_has_a_card():
    carded = {name for card in load_cards().values() for name in card["variants"]}
    missing = sorted(set(visionzoo.list_models()) - carded)
    assert not missing, f"registered but not in models/*.yaml: {missing}"


def test_every_card_variant_is_registered():
    registered = set(visionzoo.list_models())
    for family, card in load_cards().items():
        unknown = sorted(set(card["variants"]) - registered)
        assert not unknown, f"models/{family}.yaml lists unregistered models: {unknown}"
        assert all(name.startswith(f"vz_") for name in card["variants"])


def test_card_fields_are_well_formed():
    for family, card in load_cards().items():
        assert card["flops_unit"] in ("MACs", "FLOPs"), family
        for name, variant in card["variants"].items():
            assert isinstance(variant["params"], int) and variant["params"] > 0, name
            assert 0.0 <= variant["params_tolerance"] <= 0.05, name
            sizes = card.get("test", {}).get("sizes", [])
            assert all(len(size) == 2 for size in sizes), family


def test_malformed_card_is_reported(tmp_path):
    card = {"family": "broken", "paper": {"title": "t"}, "variants": {"vz_broken_a": {"params": 1}}}
    path = tmp_path / "broken.yaml"
    path.write_text(yaml.safe_dump(card))
    with pytest.raises(CardError) as info:
        _validate(card, path)
    message = str(info.value)
    assert "official_repo" in message and "paper.arxiv" in message
    assert f"variants.vz_broken_a.{REQUIRED_VARIANT_FIELDS[0]}" in message


def test_cards_live_in_the_repository():
    assert CARDS_DIR.name == "models" and CARDS_DIR.is_dir()
