"""Rebuild a model as a training run left it: class count, input size and build arguments from its checkpoint.

``visionzoo train`` saves its whole config in every checkpoint (``config.model.num_classes``,
``config.model.kwargs``, ``config.data.input_size``), so ``export`` and ``bench`` given ``best.pth`` of a 3-class
fine-tune build a 3-class model at the trained input size without being told. Plain state dicts and
safetensors files record none of this: ``--num-classes`` (and ``--img-size``) say it instead, as for ``eval``.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from visionzoo.models._checkpoint import EMA_KEYS, CheckpointError, load_checkpoint, load_state_dict
from visionzoo.models._factory import create_model
from visionzoo.models._registry import family_of


@dataclass(frozen=True)
class TrainedSetup:
    """What a checkpoint records about its model; ``None`` where it records nothing."""

    model_name: str | None = None
    num_classes: int | None = None
    input_size: int | None = None
    model_kwargs: dict = field(default_factory=dict)


def read_checkpoint(path: str | Path):
    """The checkpoint's contents, unpickled with ``weights_only`` (tensors and plain containers only).

    A file that is not such a checkpoint (crafted, truncated, another format) gets the safe loader's
    explanation instead of torch's traceback.
    """
    path = Path(path)
    if path.suffix == ".safetensors" or not path.is_file():
        return load_state_dict(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception:
        load_state_dict(path)  # raises the CheckpointError that says what is wrong with the file
        raise


def trained_setup(contents) -> TrainedSetup:
    """The setup a ``visionzoo train`` checkpoint records in its ``config``; empty for other files."""
    config = contents.get("config") if isinstance(contents, Mapping) else None
    if not isinstance(config, Mapping):
        return TrainedSetup()
    model = config.get("model") if isinstance(config.get("model"), Mapping) else {}
    data = config.get("data") if isinstance(config.get("data"), Mapping) else {}
    kwargs = model.get("kwargs")
    return TrainedSetup(
        model_name=model.get("name"),
        num_classes=model.get("num_classes"),
        input_size=data.get("input_size"),
        model_kwargs=dict(kwargs) if isinstance(kwargs, Mapping) else {},
    )


def _weights(contents, path: Path, ema: bool):
    if not ema:
        return contents
    for key in EMA_KEYS:
        if isinstance(contents, Mapping) and isinstance(contents.get(key), Mapping):
            return contents[key]
    raise CheckpointError(f"{path} holds no EMA weights (no {' or '.join(EMA_KEYS)}); leave out --ema")


def create_trained_model(
    name: str | None,
    checkpoint: str | Path | None = None,
    num_classes: int | None = None,
    model_kwargs: dict | None = None,
    ema: bool = False,
) -> tuple[nn.Module, TrainedSetup]:
    """The zoo model ``name`` (or the one the checkpoint was trained as) with the checkpoint's weights loaded.

    The class count is ``num_classes``, else the checkpoint's, else the model's default; ``model_kwargs`` are
    added to the checkpoint's. Weights go through the family's ``checkpoint_filter_fn``; a head of another
    size is refused by name, with the shapes, by :func:`load_checkpoint`.
    """
    if num_classes is not None and num_classes < 1:
        raise ValueError(f"--num-classes must be at least 1, got {num_classes}")
    if checkpoint is None:
        if ema:
            raise ValueError("--ema picks the EMA weights of a --checkpoint; give one")
        setup, contents = TrainedSetup(), None
    else:
        contents = read_checkpoint(checkpoint)
        setup = trained_setup(contents)
    if name is None:
        if setup.model_name is None:
            raise ValueError("name the model (e.g. vz_shvit_s1): the checkpoint does not record which model it holds")
        name = setup.model_name
    elif setup.model_name is not None and setup.model_name != name:
        raise ValueError(f"{checkpoint} was trained as {setup.model_name}, not {name}; name {setup.model_name} "
                         "or leave the name out")
    kwargs = {**setup.model_kwargs, **(model_kwargs or {})}
    classes = num_classes if num_classes is not None else setup.num_classes
    if classes is not None:
        kwargs["num_classes"] = classes
    model = create_model(name, **kwargs)
    if contents is not None:
        try:
            load_checkpoint(model, _weights(contents, Path(checkpoint), ema),
                            filter_fn=family_of(model).checkpoint_filter_fn)
        except CheckpointError as error:
            if classes is not None or "shape mismatch" not in str(error):
                raise
            raise CheckpointError(f"{error}\nThe model was built with its default {model.num_classes} classes and "
                                  "the checkpoint does not record its own: pass --num-classes N.") from None
    return model, TrainedSetup(name, model.num_classes, setup.input_size, kwargs)
