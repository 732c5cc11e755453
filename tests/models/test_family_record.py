"""Family records: every zoo model belongs to exactly one family, whose card, converter and example input the tools
find through ``visionzoo.family_of`` and ``visionzoo.create_model``; cards may opt models out of contract checks
with a reason, and the contract test reports those opt-outs."""
import ast
from pathlib import Path

import pytest
import timm
import torch
from timm.models import generate_default_cfgs, register_model
from timm.models import _registry as timm_registry
from torch import nn

import visionzoo
from _zoo import example_input, input_sizes, skip_if_opted_out
from visionzoo.models import (
    Family,
    UnknownFamilyError,
    UnknownModelError,
    family_of,
    list_families,
    register_family,
    unregister_family,
)
from visionzoo.models import _cards
from visionzoo.models._cards import CARDS_DIR, contract_opt_outs, load_cards

CONTRACT_TEST = Path(__file__).with_name("test_model_contract.py")
TOY_IMAGE, TOY_POINTS = "vz_familytest_image", "vz_familytest_points"


def test_every_zoo_model_belongs_to_one_family_and_every_family_has_models():
    by_family = {}
    for name in visionzoo.list_models():
        by_family.setdefault(family_of(name).name, []).append(name)
    assert set(by_family) == set(list_families())


def test_family_of_a_built_model_matches_its_name():
    for family in list_families().values():
        name = min(card_name for card_name in load_cards()[family.name]["variants"])
        model = visionzoo.create_model(name, device="meta")
        assert family_of(model) is family_of(name) is family
        assert isinstance(model, family.model_classes)


def test_every_family_names_its_card_and_every_card_a_family():
    families = list_families()
    for family in families.values():
        path = CARDS_DIR / family.card
        assert path.is_file(), f"family {family.name} names card {path}, which does not exist"
        assert load_cards()[family.name]["family"] == family.name
    assert set(load_cards()) == set(families)


@pytest.mark.parametrize("family", sorted(list_families()))
def test_example_input_follows_the_declared_kind(family):
    record = list_families()[family]
    name = min(load_cards()[family]["variants"])
    if record.input_kind == "image":
        model = visionzoo.create_model(name, device="meta", in_chans=1)
        x = visionzoo.example_input(model, 2, (64, 96))
        assert x.shape == (2, 1, 64, 96) and x.is_meta
        assert visionzoo.example_input(name).shape == (1, *timm.get_pretrained_cfg(name).input_size)
    first, second = (example_input(name, index) for index in range(2))
    assert first.shape[0] == 2 and first.shape != second.shape, input_sizes(name)


def test_unknown_names_and_foreign_models_say_so():
    with pytest.raises(UnknownFamilyError, match="'resnet18' is not a model of any zoo family"):
        family_of("resnet18")
    with pytest.raises(UnknownFamilyError, match="Linear is not a zoo model class"):
        family_of(nn.Linear(2, 2))
    with pytest.raises(UnknownModelError, match="unknown model 'vz_shvit_s9'"):
        visionzoo.create_model("vz_shvit_s9")


def test_features_only_wrapper_finds_its_family_by_name():
    wrapper = visionzoo.create_model("vz_shvit_s1", features_only=True, device="meta")
    with pytest.raises(UnknownFamilyError, match="look the family up by model name"):
        family_of(wrapper)
    x = visionzoo.example_input(wrapper, 1, 64, family=family_of("vz_shvit_s1"))
    assert x.shape == (1, 3, 64, 64) and x.is_meta


def test_family_records_reject_bad_declarations():
    with pytest.raises(ValueError, match=r"input_kind must be one of \('image', 'points'\), got 'video'"):
        Family("broken", (nn.Linear,), lambda state, model: state, input_kind="video")
    with pytest.raises(ValueError, match="declares no model class"):
        Family("broken", (), lambda state, model: state)
    shvit = family_of("vz_shvit_s1")
    with pytest.raises(ValueError, match="'shvit' is already registered"):
        register_family(Family("shvit", (nn.Linear,), shvit.checkpoint_filter_fn))
    with pytest.raises(ValueError, match=r"classes \['SHViT'\] already belong to another family"):
        register_family(Family("shvit_again", shvit.model_classes, shvit.checkpoint_filter_fn))
    with pytest.raises(UnknownFamilyError, match="no family 'never' is registered"):
        unregister_family("never")
    assert "shvit_again" not in list_families()


class ToyImageNet(nn.Module):
    def __init__(self, num_classes=3, **kwargs):
        super().__init__()
        self.head = nn.Linear(3, num_classes)

    def forward(self, x):
        return self.head(x.mean((2, 3)))


class ToyPointNet(nn.Module):
    def __init__(self, num_classes=3, **kwargs):
        super().__init__()
        self.head = nn.Linear(6, num_classes)

    def forward(self, points):
        return self.head(points.max(dim=1).values)


def _renamed_checkpoint_filter(state_dict, model):
    """The toy family's "official" layout calls the classifier ``fc``."""
    return {key.replace("fc.", "head."): value for key, value in state_dict.items()}


TOYS = {"image": (TOY_IMAGE, ToyImageNet, (3, 32, 32)), "points": (TOY_POINTS, ToyPointNet, (128, 6))}
# timm's register_model reads the pretrained cfg of each name from its module's ``default_cfgs``.
default_cfgs = generate_default_cfgs({name: {"input_size": size} for name, _, size in TOYS.values()})


@pytest.fixture(params=sorted(TOYS))
def toy_family(request):
    """One toy family of each input kind, registered in timm and in the zoo for one test."""
    name, cls, input_size = TOYS[request.param]

    def entrypoint(pretrained=False, pretrained_cfg=None, pretrained_cfg_overlay=None, cache_dir=None, **kwargs):
        model = cls(**kwargs)
        model.pretrained_cfg = {"input_size": input_size}
        return model

    entrypoint.__name__ = name
    entrypoint.__module__ = __name__
    register_model(entrypoint)
    family = register_family(Family("familytest", (cls,), _renamed_checkpoint_filter, input_kind=request.param))
    yield name, family
    unregister_family("familytest")
    timm_registry._clear_model_entries(name)
    timm_registry._model_entrypoints.pop(name, None)


def test_create_model_converts_checkpoints_through_the_family_record(toy_family, tmp_path):
    name, family = toy_family
    source = family.model_classes[0]()
    official = {key.replace("head.", "fc."): value for key, value in source.state_dict().items()}
    torch.save(official, tmp_path / "official.pth")
    for checkpoint in (tmp_path / "official.pth", official):
        model = visionzoo.create_model(name, checkpoint_path=checkpoint)
        assert all(torch.equal(model.state_dict()[key], value) for key, value in source.state_dict().items())
    assert family_of(name) is family_of(model) is family


def test_example_input_of_each_kind(toy_family):
    name, family = toy_family
    model = visionzoo.create_model(name).to(torch.float64)
    x = visionzoo.example_input(model, 2)
    assert x.dtype == torch.float64 and model(x).shape == (2, 3)
    if family.input_kind == "points":
        assert x.shape == (2, 128, 6) and visionzoo.example_input(name, 1, 50).shape == (1, 50, 6)
    else:
        assert x.shape == (2, 3, 32, 32) and visionzoo.example_input(name, 1, (8, 16)).shape == (1, 3, 8, 16)
    seeded = [visionzoo.example_input(name, 1, generator=torch.Generator().manual_seed(0)) for _ in range(2)]
    assert torch.equal(*seeded)


def _opt_out_calls() -> dict[str, list[str]]:
    """Each contract check's name (without ``test_``) and the items its ``skip_if_opted_out`` calls name."""
    tree = ast.parse(CONTRACT_TEST.read_text())
    return {
        node.name.removeprefix("test_"): [
            call.args[1].value for call in ast.walk(node)
            if isinstance(call, ast.Call) and getattr(call.func, "id", None) == "skip_if_opted_out"
        ]
        for node in tree.body if isinstance(node, ast.FunctionDef) and node.name.startswith("test_")
    }


def test_contract_checks_ask_for_their_own_opt_out():
    wrong = {check: items for check, items in _opt_out_calls().items() if items and items != [check]}
    assert not wrong, f"a contract check must pass its own name to skip_if_opted_out: {wrong}"
    assert "compile_fullgraph_captures_whole_model" in {check for check, items in _opt_out_calls().items() if items}


def test_card_opt_outs_name_contract_checks_that_honour_them():
    items = {check for check, calls in _opt_out_calls().items() if calls}
    for name in visionzoo.list_models():
        unknown = sorted(set(contract_opt_outs(name)) - items)
        assert not unknown, (
            f"{name}: the card opts out of {unknown}, which are not checks of {CONTRACT_TEST.name} that a card may skip"
        )


def test_opt_outs_merge_family_and_variant_and_are_reported(monkeypatch):
    card = {
        "family": "shvit",
        "contract_opt_outs": {"compile_fullgraph_captures_whole_model": "token counts depend on the input"},
        "variants": {"vz_shvit_s1": {"contract_opt_outs": {"bf16_forward": "no bf16 kernel for one op"}},
                     "vz_shvit_s2": {}},
    }
    for key in ("paper", "flops_unit", "official_repo", "license"):
        card[key] = None
    monkeypatch.setattr(_cards, "load_cards", lambda: {"shvit": card})
    assert contract_opt_outs("vz_shvit_s1") == {
        "compile_fullgraph_captures_whole_model": "token counts depend on the input",
        "bf16_forward": "no bf16 kernel for one op",
    }
    assert set(contract_opt_outs("vz_shvit_s2")) == {"compile_fullgraph_captures_whole_model"}
    with pytest.raises(pytest.skip.Exception, match="card opt-out: vz_shvit_s1 skips bf16_forward: no bf16 kernel"):
        skip_if_opted_out("vz_shvit_s1", "bf16_forward")
    skip_if_opted_out("vz_shvit_s2", "bf16_forward")


@pytest.mark.parametrize("toy_family", ["points"], indirect=True)
def test_mm_backbone_refuses_point_families(toy_family):
    pytest.importorskip("mmdet")
    from visionzoo.mm.backbone import VisionZooBackbone

    with pytest.raises(ValueError, match="vz_familytest_points takes points; mmdet/mmseg backbones take images"):
        VisionZooBackbone(toy_family[0])
