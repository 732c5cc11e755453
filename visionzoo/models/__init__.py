"""The zoo: one module per family; importing this package registers every ``vz_*`` model in timm."""
import importlib as _importlib
import pkgutil as _pkgutil

from visionzoo.models._checkpoint import CheckpointError, load_checkpoint, load_state_dict
from visionzoo.models._factory import UnknownModelError, check_model_name, create_model, list_models

for _module in _pkgutil.iter_modules(__path__):
    if not _module.name.startswith("_"):
        _importlib.import_module(f"{__name__}.{_module.name}")

__all__ = [
    "CheckpointError",
    "UnknownModelError",
    "check_model_name",
    "create_model",
    "list_models",
    "load_checkpoint",
    "load_state_dict",
]
