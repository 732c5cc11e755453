"""Per-model facts for the CLI and reports: our counts beside the model card's paper figures."""
from __future__ import annotations

from typing import Any

import timm
import torch

from visionzoo.bench.flops import count_fft_macs, count_macs, count_params
from visionzoo.layers.fuse import fuse_model
from visionzoo.models._cards import variant_card
from visionzoo.models._factory import create_model
from visionzoo.ops import REFERENCE, use_backend


def default_input_size(name: str) -> tuple[int, int, int]:
    return tuple(timm.get_pretrained_cfg(name).input_size)


def measure(name: str, input_size: tuple[int, int, int] | None = None) -> dict[str, Any]:
    """Params and GMACs of ``name`` at ``input_size`` (default: its pretrained cfg), with the card's figures.

    Counting runs on the ``meta`` device (shapes only, no memory for weights) and falls back to the CPU
    for models whose ops have no meta kernel.
    """
    input_size = tuple(input_size or default_input_size(name))
    try:
        model = create_model(name, device="meta")
        macs = count_macs(model, input_size)
    except (NotImplementedError, RuntimeError):
        model = create_model(name)
        macs = count_macs(model, input_size)
    # The reference path of each op is the readable spec; a fast path may trade MACs for speed.
    with use_backend(REFERENCE):
        reference_macs = count_macs(model, input_size)
        fft_macs = count_fft_macs(model, input_size)
    params = count_params(model)
    card = variant_card(name) or {}
    paper_gmacs = card.get("paper_gmacs")
    gmacs, reference_gmacs = macs / 1e9, reference_macs / 1e9
    return {
        "model": name,
        "family": card.get("family"),
        "input_size": list(input_size),
        "params": params,
        "gmacs": gmacs,
        "card_params": card.get("params"),
        "paper_params_m": card.get("paper_params_m"),
        "paper_gmacs": paper_gmacs,
        "gmacs_vs_paper": (gmacs / paper_gmacs - 1.0) if paper_gmacs else None,
        "reference_gmacs": reference_gmacs,
        "reference_gmacs_vs_paper": (reference_gmacs / paper_gmacs - 1.0) if paper_gmacs else None,
        "fft_gmacs": fft_macs / 1e9,
        "top1": card.get("top1"),
        "timm_name": card.get("timm_name"),
    }


def describe(name: str) -> dict[str, Any]:
    """Everything ``visionzoo info`` prints: counts, feature_info, pretrained cfg and the card."""
    facts = measure(name)
    model = create_model(name, device="meta")
    facts["num_features"] = model.num_features
    facts["feature_info"] = [
        {key: info[key] for key in ("num_chs", "reduction", "module") if key in info} for info in model.feature_info
    ]
    facts["pretrained_cfg"] = {
        key: value
        for key, value in model.pretrained_cfg.items()
        if isinstance(value, (str, int, float, bool, tuple, list, type(None)))
    }
    facts["card"] = variant_card(name)
    if facts["card"] and "params_fused" in facts["card"]:
        facts["params_fused"] = fused_params(name)
    return facts


@torch.no_grad()
def fused_params(name: str) -> int:
    """Parameters in the deploy form (BatchNorms folded)."""
    return count_params(fuse_model(create_model(name), inplace=True))
