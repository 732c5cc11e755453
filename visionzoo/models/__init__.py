"""The zoo: one module per family; importing this package registers every ``vz_*`` model in timm and every
family record (:class:`Family`) in the zoo's own registry."""
import importlib as _importlib
import pkgutil as _pkgutil

from visionzoo.models._checkpoint import CheckpointError, load_checkpoint, load_state_dict
from visionzoo.models._factory import UnknownModelError, check_model_name, create_model, list_models
from visionzoo.models._registry import (
    INPUT_KINDS,
    Family,
    UnknownFamilyError,
    example_input,
    family_of,
    list_families,
    register_family,
    unregister_family,
)

for _module in _pkgutil.iter_modules(__path__):
    if not _module.name.startswith("_"):
        _importlib.import_module(f"{__name__}.{_module.name}")

__all__ = [
    "INPUT_KINDS",
    "CheckpointError",
    "Family",
    "UnknownFamilyError",
    "UnknownModelError",
    "check_model_name",
    "create_model",
    "example_input",
    "family_of",
    "list_families",
    "list_models",
    "load_checkpoint",
    "load_state_dict",
    "register_family",
    "unregister_family",
]
