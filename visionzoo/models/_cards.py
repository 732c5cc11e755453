"""Model cards: ``visionzoo/cards/<family>.yaml``, shipped inside the package; the paper's figures and our
tolerances.

A card holds the paper (title, venue, arXiv id), the official repository and licence, what its FLOPs
column counts, and per variant the paper's input size, parameters, FLOPs, top-1 and throughput with
its hardware, plus the exact parameter count we check and its tolerance.

A card may opt its family (top level) or one variant out of a model-contract check with a written reason:
``contract_opt_outs: {<contract item>: <reason>}``, where the item is the contract test's name without
``test_``. The contract test reports each opt-out with its reason instead of running the check.
"""
from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import yaml

CARDS_DIR = Path(__file__).resolve().parents[1] / "cards"

REQUIRED_CARD_FIELDS = ("family", "paper", "official_repo", "license", "flops_unit", "variants")
REQUIRED_PAPER_FIELDS = ("title", "venue", "arxiv")
REQUIRED_VARIANT_FIELDS = ("input_size", "params", "params_tolerance", "paper_params_m", "paper_gmacs", "top1")


class CardError(ValueError):
    """A model card is missing or malformed."""


def _validate(card: dict[str, Any], path: Path) -> None:
    missing = [field for field in REQUIRED_CARD_FIELDS if field not in card]
    missing += [f"paper.{field}" for field in REQUIRED_PAPER_FIELDS if field not in card.get("paper", {})]
    for name, variant in card.get("variants", {}).items():
        missing += [f"variants.{name}.{field}" for field in REQUIRED_VARIANT_FIELDS if field not in variant]
    if missing:
        raise CardError(f"model card {path} lacks: {', '.join(missing)}")
    scopes = {"": card, **{f"variants.{name}.": variant for name, variant in card["variants"].items()}}
    for scope, entry in scopes.items():
        opt_outs = entry.get("contract_opt_outs", {})
        if not isinstance(opt_outs, dict):
            raise CardError(f"model card {path}: {scope}contract_opt_outs must map contract items to reasons")
        unexplained = [item for item, reason in opt_outs.items() if not isinstance(reason, str) or not reason.strip()]
        if unexplained:
            raise CardError(
                f"model card {path}: {scope}contract_opt_outs {unexplained} give no reason; write why the model "
                "cannot meet the check"
            )


@functools.cache
def load_cards(cards_dir: Path = CARDS_DIR) -> dict[str, dict[str, Any]]:
    """Every card, keyed by family name."""
    if not cards_dir.is_dir():
        raise CardError(
            f"model cards not found at {cards_dir}; this installation of visionzoo is incomplete: reinstall it"
        )
    cards = {}
    for path in sorted(cards_dir.glob("*.yaml")):
        with path.open() as handle:
            card = yaml.safe_load(handle)
        _validate(card, path)
        cards[card["family"]] = card
    return cards


def variant_card(model_name: str) -> dict[str, Any] | None:
    """The card entry of one registered model name (``None`` if no card lists it), with its family's fields."""
    for family, card in load_cards().items():
        variant = card["variants"].get(model_name)
        if variant is not None:
            return {
                "family": family,
                "paper": card["paper"],
                "flops_unit": card["flops_unit"],
                "official_repo": card["official_repo"],
                "license": card["license"],
                **variant,
            }
    return None


def contract_opt_outs(model_name: str) -> dict[str, str]:
    """The contract items a model is opted out of, with their reasons: its family's, then its variant's."""
    entry = variant_card(model_name)
    if entry is None:
        return {}
    family_opt_outs = load_cards()[entry["family"]].get("contract_opt_outs", {})
    return {**family_opt_outs, **entry.get("contract_opt_outs", {})}
