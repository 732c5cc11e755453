"""Which zoo models the tests exercise, at what sizes and with which inputs (from the model cards and the
family records), and which contract checks a card opts a model out of."""
from __future__ import annotations

import copy

import pytest
import torch

import visionzoo
from visionzoo.models._cards import contract_opt_outs, load_cards, variant_card

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


def input_sizes(name: str) -> tuple:
    """The card's test sizes: (H, W) pairs for image families, point counts for point families. Image families
    without card sizes use DEFAULT_TEST_SIZES; point families without them use their ``pretrained_cfg`` size."""
    card = variant_card(name)
    sizes = load_cards()[card["family"]].get("test", {}).get("sizes") if card else None
    if sizes:
        return tuple(tuple(size) if isinstance(size, list) else size for size in sizes)
    return DEFAULT_TEST_SIZES if visionzoo.family_of(name).input_kind == "image" else (None, None)


def example_input(name: str, size_index: int = 0, batch: int = 2) -> torch.Tensor:
    """The family's declared example input at the card's ``size_index``-th test size (CPU, float32)."""
    return visionzoo.example_input(name, batch, input_sizes(name)[size_index])


def skip_if_opted_out(name: str, item: str) -> None:
    """Skip a contract check that the model's card opts out of, naming the card's reason; pytest's ``-ra`` summary
    lists every opt-out. ``item`` is the contract test's name without ``test_``."""
    reason = contract_opt_outs(name).get(item)
    if reason is not None:
        pytest.skip(f"card opt-out: {name} skips {item}: {reason}")


_BUILT: dict = {}
CACHE_MAX_PARAMS = 60_000_000


def create(name: str, **kwargs):
    """``visionzoo.create_model`` with a cache: initialising weights dominates the contract's run time, so each
    (name, kwargs) is built once and later callers get a deep copy they may modify freely. Models above
    CACHE_MAX_PARAMS are rebuilt each time to keep the slow run's memory bounded."""
    key = (name, tuple(sorted(kwargs.items())))
    if key in _BUILT:
        return copy.deepcopy(_BUILT[key])
    model = visionzoo.create_model(name, **kwargs)
    if sum(p.numel() for p in model.parameters()) <= CACHE_MAX_PARAMS:
        _BUILT[key] = copy.deepcopy(model)
    return model
