"""layers.inference_cache: derived tensors kept between inference calls, never stale, never in a recorded graph."""
import pytest
import torch

from visionzoo.layers.inference_cache import InferenceCache


def _counting(table):
    made = []

    def make():
        made.append(1)
        return table.abs() * 2

    return made, make


def test_keeps_the_value_until_its_source_changes_in_place():
    table = torch.nn.Parameter(torch.randn(5, 3))
    cache = InferenceCache(2)
    made, make = _counting(table)
    with torch.no_grad():
        first = cache.get("grid", [table], make)
        assert cache.get("grid", [table], make) is first and len(made) == 1
        table.mul_(-3.0)  # what load_state_dict or an optimiser step does
        updated = cache.get("grid", [table], make)
    assert len(made) == 2 and torch.equal(updated, table.detach().abs() * 2)


def test_keeps_nothing_while_a_graph_may_be_recorded_or_the_key_is_traced():
    table = torch.nn.Parameter(torch.randn(5, 3))
    cache = InferenceCache(2)
    made, make = _counting(table)
    value = cache.get("grid", [table], make)
    assert value.requires_grad and cache.keys() == []  # grad enabled: the autograd history is needed
    with torch.no_grad():
        cache.get(("grid", object()), [table], make)  # not plain data: a symbolic trace's proxy
    assert len(made) == 2 and cache.keys() == []


def test_evicts_the_least_recently_used_key():
    table = torch.randn(2)
    cache = InferenceCache(2)
    with torch.inference_mode():
        for key in ("a", "b", "a", "c"):
            cache.get(key, [table], lambda: table + 1)
    assert cache.keys() == ["a", "c"]
    with pytest.raises(ValueError, match="at least one entry"):
        InferenceCache(0)
