"""A ``load_state_dict`` pre-hook that converts a checkpoint in a foreign layout (timm's, the official release's).

timm users load files two more ways than ``visionzoo.create_model(..., checkpoint_path=FILE)``:
``timm.create_model(name, checkpoint_path=FILE)`` and ``model.load_state_dict(torch.load(FILE))``. Both end in
``model.load_state_dict``, so the zoo model converts there: when the offered keys are not a subset of its own,
the hook runs the family's ``checkpoint_filter_fn`` and keeps the result if it fits the model better. When not
one tensor fits, even after conversion, the error torch raises says so and which layouts the converter reads.
"""
from __future__ import annotations

from torch import nn


def _matches(state_dict, own) -> int:
    return sum(1 for key, value in state_dict.items() if key in own and tuple(value.shape) == tuple(own[key].shape))


def convert_foreign_layout(
    module: nn.Module, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
) -> None:
    if prefix:
        return  # a zoo model nested in another module: the outer model owns the layout of the file
    own = module.state_dict()
    foreign = [key for key in state_dict if key not in own]
    if not foreign:
        return
    from visionzoo.models._registry import UnknownFamilyError, family_of

    try:
        family = family_of(module)
    except UnknownFamilyError:
        return  # a Backbone subclass no family declares (a test's toy model, a user's experiment): nothing to convert
    fitting = _matches(state_dict, own)
    try:
        converted = family.checkpoint_filter_fn(dict(state_dict), module)
    except (KeyError, ValueError, RuntimeError, IndexError) as error:
        reason = f"; its converter could not read the file ({error})"
    else:
        if _matches(converted, own) > fitting:
            state_dict.clear()
            state_dict.update(converted)
            return
        reason = ""
    # Torch only sees strict=True here, whatever the caller asked for; so speak only when not one tensor would
    # load, which no strict=False load means to do either, and otherwise leave torch's own report alone.
    if fitting == 0:
        error_msgs.append(
            f"no tensor of this file fits {type(module).__name__}: keys such as {foreign[:3]} belong to none of the "
            f"layouts the {family.name} converter reads (visionzoo's, timm's, the official release's){reason}. "
            f"Is the file for another model or variant? visionzoo.load_checkpoint(model, FILE) lists every mismatch"
        )
