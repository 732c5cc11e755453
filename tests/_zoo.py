"""Which zoo models the tests exercise, and at what sizes (from the model cards)."""
from __future__ import annotations

import copy

import pytest
import timm

import visionzoo
from visionzoo.models._cards import load_cards, variant_card

DEFAULT_TEST_SIZES = ((64, 64), (96, 128))


def zoo_models() -> list[str]:
    return visionzoo.list_models()


def smallest_per_family() -> set[str]:
    """Each family's smallest registered variant by the card's parameter count: the default-run set."""
    registered = set(zoo_models())
    chosen = set()
    for card in load_cards().values():
        variants = [(v["params"], name) for name, v in card["variants"].items() if name in registered]
        if variants:
            chosen.add(min(variants)[1])
    # Models that no card lists still get the full default-run treatment (and fail the card test).
    chosen |= {name for name in registered if variant_card(name) is None}
    return chosen


def model_params(every: bool = False) -> list:
    """pytest params over the zoo: the smallest variant of each family by default, the rest marked slow."""
    fast = smallest_per_family()
    return [
        pytest.param(name, id=name, marks=() if every or name in fast else pytest.mark.slow) for name in zoo_models()
    ]


def input_sizes(name: str) -> tuple[tuple[int, int], tuple[int, int]]:
    card = variant_card(name)
    sizes = load_cards()[card["family"]].get("test", {}).get("sizes") if card else None
    return tuple(tuple(size) for size in sizes) if sizes else DEFAULT_TEST_SIZES


def family_module(model):
    return __import__(type(model).__module__, fromlist=["checkpoint_filter_fn"])


_BUILT: dict = {}
CACHE_MAX_PARAMS = 60_000_000


def create(name: str, **kwargs):
    """``timm.create_model`` with a cache: initialising weights dominates the contract's run time, so each
    (name, kwargs) is built once and later callers get a deep copy they may modify freely. Models above
    CACHE_MAX_PARAMS are rebuilt each time to keep the slow run's memory bounded."""
    key = (name, tuple(sorted(kwargs.items())))
    if key in _BUILT:
        return copy.deepcopy(_BUILT[key])
    model = timm.create_model(name, **kwargs)
    if sum(p.numel() for p in model.parameters()) <= CACHE_MAX_PARAMS:
        _BUILT[key] = copy.deepcopy(model)
    return model
