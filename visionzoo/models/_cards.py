"""Model cards: ``models/<family>.yaml`` at the repository root, the paper's figures and our tolerances.

A card holds the paper (title, venue, arXiv id), the official repository and licence, what its FLOPs
column counts, and per variant the paper's input size, parameters, FLOPs, top-1 and throughput with
its hardware, plus the exact parameter count we check and its tolerance.
"""
from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import yaml

CARDS_DIR = Path(__file__).resolve().parents[2] / "models"

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


@functools.cache
def load_cards(cards_dir: Path = CARDS_DIR) -> dict[str, dict[str, Any]]:
    """Every card, keyed by family name."""
    if not cards_dir.is_dir():
        raise CardError(
            f"model cards not found at {cards_dir}; install visionzoo from a source checkout (pip install -e .)"
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


def family_of(model_name: str) -> str | None:
    entry = variant_card(model_name)
    return entry["family"] if entry else None
