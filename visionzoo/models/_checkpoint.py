"""Safe checkpoint loading: ``torch.load(weights_only=True)`` or safetensors, never arbitrary unpickling."""
from __future__ import annotations

import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import Callable

import torch
from torch import nn

WRAPPER_KEYS = ("state_dict", "model", "module")
EMA_KEYS = ("state_dict_ema", "model_ema")


class CheckpointError(ValueError):
    """A checkpoint could not be read, or does not fit the model."""


def _unwrap(obj, path) -> dict[str, torch.Tensor]:
    if not isinstance(obj, Mapping):
        raise CheckpointError(
            f"{path} holds a {type(obj).__name__}, not a state dict; save model.state_dict() instead of the model"
        )
    for key in WRAPPER_KEYS:
        if key in obj and isinstance(obj[key], Mapping):
            return _unwrap(obj[key], path)
    non_tensors = [key for key, value in obj.items() if not isinstance(value, torch.Tensor)]
    if non_tensors:
        raise CheckpointError(
            f"{path} is not a state dict: entries {non_tensors[:5]} are not tensors "
            f"(expected a mapping of parameter names to tensors, optionally under 'model' or 'state_dict')"
        )
    if obj and all(key.startswith("module.") for key in obj):
        obj = {key[len("module."):]: value for key, value in obj.items()}
    return dict(obj)


def read_checkpoint(path: str | Path):
    """The object in a torch file, unpickled with ``weights_only=True``: tensors, containers and plain types only.

    A file that would need arbitrary unpickling, a truncated or corrupt file, and a missing one each raise a
    :class:`CheckpointError` that says so (never torch's advice to re-run with ``weights_only=False``).
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        message = str(error)
        reason = next((line.strip() for line in message.splitlines() if "GLOBAL" in line), None)
        if reason is None:
            raise CheckpointError(
                f"{path} is not a readable PyTorch checkpoint: it is truncated, corrupt or not written by torch.save"
            ) from None
        raise CheckpointError(
            f"refused to load {path}: it contains Python objects other than tensors, which could run code "
            f"when unpickled ({reason}). Nothing from the file was executed. "
            f"Re-save only the weights (torch.save(model.state_dict(), ...)) or convert the file to safetensors."
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError, IndexError, KeyError, TypeError) as error:
        # torch follows the reason with paragraphs of advice; the reason is its first sentence.
        text = str(error).strip()
        first_line = text.splitlines()[0].split(". ")[0] if text else type(error).__name__
        raise CheckpointError(
            f"{path} is not a readable PyTorch checkpoint (truncated, corrupt or not written by torch.save): "
            f"{first_line}"
        ) from None


def has_ema_weights(obj) -> bool:
    return isinstance(obj, Mapping) and any(isinstance(obj.get(key), Mapping) for key in EMA_KEYS)


def load_state_dict(
    path: str | Path, prefer_ema: bool = False, require_ema: bool = False
) -> dict[str, torch.Tensor]:
    """Read a state dict from ``.safetensors`` or a torch file, refusing anything but tensors and containers.

    Training checkpoints wrapping the weights under ``model``/``state_dict`` (and ``module.`` prefixes
    from DistributedDataParallel) are unwrapped; ``prefer_ema`` picks ``state_dict_ema``/``model_ema`` when
    present, ``require_ema`` refuses a file without them.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        if require_ema:
            raise CheckpointError(f"{path} is a safetensors file of one set of weights; it holds no EMA weights")
        try:
            return load_file(str(path), device="cpu")
        except Exception as error:
            raise CheckpointError(f"{path} is not a readable safetensors file: {error}") from error
    return state_dict_from(read_checkpoint(path), path, prefer_ema, require_ema)


def state_dict_from(obj, path, prefer_ema: bool = False, require_ema: bool = False) -> dict[str, torch.Tensor]:
    """The weights in an object read by :func:`read_checkpoint` from ``path`` (see :func:`load_state_dict`)."""
    if require_ema and not has_ema_weights(obj):
        raise CheckpointError(
            f"{path} holds no EMA weights (no {' or '.join(EMA_KEYS)} entry: the run trained without ema.enabled); "
            f"evaluate it without --ema"
        )
    if (prefer_ema or require_ema) and isinstance(obj, Mapping):
        for key in EMA_KEYS:
            if isinstance(obj.get(key), Mapping):
                return _unwrap(obj[key], path)
    return _unwrap(obj, path)


def load_checkpoint(
    model: nn.Module,
    path_or_state_dict: str | Path | Mapping[str, torch.Tensor],
    filter_fn: Callable[[dict, nn.Module], dict] | None = None,
    strict: bool = True,
) -> nn.Module:
    """Load weights into ``model`` after ``filter_fn`` converts their layout; mismatches are listed by name."""
    if isinstance(path_or_state_dict, Mapping):
        state_dict = _unwrap(path_or_state_dict, "the state dict")
    else:
        state_dict = load_state_dict(path_or_state_dict)
    if filter_fn is not None:
        state_dict = filter_fn(state_dict, model)
    own = model.state_dict()
    missing = [key for key in own if key not in state_dict]
    unexpected = [key for key in state_dict if key not in own]
    mismatched = [
        f"{key}: checkpoint {tuple(state_dict[key].shape)} vs model {tuple(own[key].shape)}"
        for key in own
        if key in state_dict and state_dict[key].shape != own[key].shape
    ]
    if strict and (missing or unexpected or mismatched):
        lines = [f"checkpoint does not match {type(model).__name__}:"]
        for title, keys in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", mismatched)):
            if keys:
                shown = ", ".join(keys[:10]) + (f", ... ({len(keys) - 10} more)" if len(keys) > 10 else "")
                lines.append(f"  {len(keys)} {title}: {shown}")
        lines.append("Check that the checkpoint is for this model and variant (e.g. vz_shvit_s1 vs vz_shvit_s2).")
        raise CheckpointError("\n".join(lines))
    model.load_state_dict(state_dict, strict=strict)
    return model
