"""Creating zoo models by name, with errors that suggest the names a user probably meant."""
from __future__ import annotations

import difflib
import sys
from collections.abc import Mapping
from pathlib import Path

from torch import nn

# timm imports wandb whenever it is installed (for its own logging helper). This is visionzoo's first import of
# timm, so hide wandb from it here: only `visionzoo train --wandb` should pay for importing wandb.
_hide_wandb = "wandb" not in sys.modules and "timm" not in sys.modules
if _hide_wandb:
    sys.modules["wandb"] = None  # makes `import wandb` raise ImportError, which timm catches
try:
    import timm
finally:
    if _hide_wandb:
        del sys.modules["wandb"]

from visionzoo.models._checkpoint import load_checkpoint
from visionzoo.models._registry import family_of

ZOO_PREFIX = "vz_"


class UnknownModelError(ValueError):
    """No zoo model is registered under the requested name."""


def list_models(pattern: str = "vz_*") -> list[str]:
    """Registered zoo model names matching a shell-style pattern (``'vz_*'`` is the whole zoo)."""
    if not pattern.startswith(ZOO_PREFIX):
        pattern = ZOO_PREFIX + pattern
    return timm.list_models(pattern)


def check_model_name(name: str) -> str:
    """Return ``name`` if it is a registered zoo model, else raise with the closest registered names."""
    known = list_models()
    if name in known:
        return name
    # Users often type timm's name for a family that the zoo also has ("shvit_s1"): compare with the prefix.
    query = name if name.startswith(ZOO_PREFIX) else ZOO_PREFIX + name
    close = difflib.get_close_matches(query, known, n=5, cutoff=0.5)
    hint = f" Did you mean: {', '.join(close)}?" if close else ""
    raise UnknownModelError(f"unknown model {name!r}.{hint} Run `visionzoo list` to see every zoo model.")


def create_model(name: str, pretrained: bool = False, checkpoint_path: str | Path | Mapping | None = None,
                 **kwargs) -> nn.Module:
    """``timm.create_model`` for zoo names, plus a checked name and an optional local checkpoint.

    ``checkpoint_path`` (a file, or a state dict already loaded) may be in our layout or any layout the
    family's ``checkpoint_filter_fn`` converts (timm's, the official release's); it is loaded safely and strictly.
    """
    check_model_name(name)
    model = timm.create_model(name, pretrained=pretrained, **kwargs)
    if checkpoint_path is not None:
        load_checkpoint(model, checkpoint_path, filter_fn=family_of(name).checkpoint_filter_fn)
    return model
