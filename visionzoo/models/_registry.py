"""Family records: what every tool needs to know about a model family, declared once at the bottom of its file.

A :class:`Family` names the family's model classes, the ``checkpoint_filter_fn`` that converts foreign checkpoint
layouts into ours, its model card, the kind of input it takes and how to build an example of that input. Tools
look families up here (by registered model name or by model instance) instead of importing the model's module.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from timm.models import get_pretrained_cfg, is_model, model_entrypoint
from torch import nn

INPUT_KINDS = ("image", "points")


class UnknownFamilyError(LookupError):
    """A model or name belongs to no registered zoo family."""


def image_example(
    input_size: tuple[int, int, int], batch_size: int = 1, size: int | tuple[int, int] | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """A seeded NCHW batch; ``input_size`` is the ``pretrained_cfg``'s (C, H, W) and ``size`` overrides (H, W)."""
    channels, height, width = input_size
    if size is not None:
        height, width = (size, size) if isinstance(size, int) else size
    return torch.randn(batch_size, channels, height, width, generator=generator)


def points_example(
    input_size: tuple[int, int], batch_size: int = 1, size: int | None = None, generator: torch.Generator | None = None,
) -> torch.Tensor:
    """A seeded (batch, points, coordinates + features) cloud; ``input_size`` is the ``pretrained_cfg``'s
    ``(num_points, point_dims)`` and ``size`` overrides the number of points."""
    num_points, point_dims = input_size
    return torch.randn(batch_size, size or num_points, point_dims, generator=generator)


_DEFAULT_EXAMPLES = {"image": image_example, "points": points_example}


@dataclass(frozen=True)
class Family:
    """One model family. ``card`` is the file name of its card in ``visionzoo/cards`` (default ``<name>.yaml``);
    ``example_input(input_size, batch_size, size, generator)`` builds a seeded input from the ``pretrained_cfg``'s
    ``input_size`` and defaults to the builder of ``input_kind``."""

    name: str
    model_classes: tuple[type[nn.Module], ...]
    checkpoint_filter_fn: Callable[[dict, nn.Module], dict]
    input_kind: str = "image"
    card: str = ""
    example_input: Callable[..., torch.Tensor] | None = None

    def __post_init__(self):
        if self.input_kind not in INPUT_KINDS:
            raise ValueError(f"family {self.name!r}: input_kind must be one of {INPUT_KINDS}, got {self.input_kind!r}")
        if not self.model_classes:
            raise ValueError(f"family {self.name!r} declares no model class")
        if not self.card:
            object.__setattr__(self, "card", f"{self.name}.yaml")
        if self.example_input is None:
            object.__setattr__(self, "example_input", _DEFAULT_EXAMPLES[self.input_kind])

    @property
    def module(self) -> str:
        return self.model_classes[0].__module__


_FAMILIES: dict[str, Family] = {}


def register_family(family: Family) -> Family:
    """Add ``family`` to the registry; a second family under the same name or for the same class is an error."""
    if family.name in _FAMILIES:
        raise ValueError(f"family {family.name!r} is already registered (by {_FAMILIES[family.name].module})")
    claimed = {cls: other.name for other in _FAMILIES.values() for cls in other.model_classes}
    taken = [cls.__name__ for cls in family.model_classes if cls in claimed]
    if taken:
        raise ValueError(f"family {family.name!r}: classes {taken} already belong to another family")
    _FAMILIES[family.name] = family
    _wrap_entrypoints(family)
    return family


def _wrap_entrypoints(family: Family) -> None:
    """Give every model the family registered in timm the offline message for ``pretrained=True`` (see
    ``_pretrained``). Wrapping timm's entrypoints reaches ``timm.create_model`` as well as ``visionzoo.create_model``."""
    from timm.models import _registry as timm_registry

    from visionzoo.models._pretrained import with_weights_help

    for name, entrypoint in list(timm_registry._model_entrypoints.items()):
        if entrypoint.__module__ == family.module and not hasattr(entrypoint, "__wrapped__"):
            timm_registry._model_entrypoints[name] = with_weights_help(entrypoint, name)


def unregister_family(name: str) -> Family:
    """Remove a family (tests and plugins that register one for a while); unknown names are an error."""
    if name not in _FAMILIES:
        raise UnknownFamilyError(f"no family {name!r} is registered; registered: {sorted(_FAMILIES)}")
    return _FAMILIES.pop(name)


def list_families() -> dict[str, Family]:
    """Every registered family, keyed by name."""
    return dict(_FAMILIES)


def family_of(model_or_name: nn.Module | str) -> Family:
    """The family of a registered zoo model name or of a built zoo model."""
    if isinstance(model_or_name, str):
        name = model_or_name
        if is_model(name):
            module = model_entrypoint(name).__module__
            for family in _FAMILIES.values():
                if family.module == module:
                    return family
        raise UnknownFamilyError(f"{name!r} is not a model of any zoo family; run `visionzoo list` to see them")
    for family in _FAMILIES.values():
        if isinstance(model_or_name, family.model_classes):
            return family
    raise UnknownFamilyError(
        f"{type(model_or_name).__name__} is not a zoo model class (features_only wrappers carry no family: "
        "look the family up by model name instead)"
    )


def example_input(
    model_or_name: nn.Module | str, batch_size: int = 1, size=None, generator: torch.Generator | None = None,
    family: Family | None = None,
) -> torch.Tensor:
    """A seeded example input of the model's family at its ``pretrained_cfg`` input size (``size`` overrides the
    spatial size or point count). For a built model the input follows its ``in_chans``, device and dtype; pass
    ``family`` for a features-only wrapper, whose class belongs to no family."""
    family = family or family_of(model_or_name)
    if isinstance(model_or_name, str):
        return family.example_input(tuple(get_pretrained_cfg(model_or_name).input_size), batch_size, size, generator)
    input_size = tuple(model_or_name.pretrained_cfg["input_size"])
    if family.input_kind == "image":
        input_size = (getattr(model_or_name, "in_chans", input_size[0]), *input_size[1:])
    example = family.example_input(input_size, batch_size, size, generator)
    reference = next((t for t in (*model_or_name.parameters(), *model_or_name.buffers()) if t.is_floating_point()), None)
    return example if reference is None else example.to(device=reference.device, dtype=reference.dtype)
