"""Model cards and the registry agree both ways, every card carries the facts the tools read, and the cards ship
inside the package."""
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import yaml

import visionzoo
from visionzoo.models._cards import CARDS_DIR, REQUIRED_VARIANT_FIELDS, CardError, _validate, load_cards

REPO = Path(__file__).resolve().parents[2]


def test_every_registered_model_has_a_card():
    carded = {name for card in load_cards().values() for name in card["variants"]}
    missing = sorted(set(visionzoo.list_models()) - carded)
    assert not missing, f"registered but not in visionzoo/cards/*.yaml: {missing}"


def test_every_card_variant_is_registered():
    registered = set(visionzoo.list_models())
    for family, card in load_cards().items():
        unknown = sorted(set(card["variants"]) - registered)
        assert not unknown, f"visionzoo/cards/{family}.yaml lists unregistered models: {unknown}"
        assert all(name.startswith(f"vz_") for name in card["variants"])


def test_card_fields_are_well_formed():
    for family, card in load_cards().items():
        assert card["flops_unit"] in ("MACs", "FLOPs"), family
        for name, variant in card["variants"].items():
            assert isinstance(variant["params"], int) and variant["params"] > 0, name
            assert 0.0 <= variant["params_tolerance"] <= 0.05, name
            sizes = card.get("test", {}).get("sizes", [])
            # Image families test (H, W) pairs, point families point counts.
            assert all(isinstance(size, int) or len(size) == 2 for size in sizes), family


def test_malformed_card_is_reported(tmp_path):
    card = {"family": "broken", "paper": {"title": "t"}, "variants": {"vz_broken_a": {"params": 1}}}
    path = tmp_path / "broken.yaml"
    path.write_text(yaml.safe_dump(card))
    with pytest.raises(CardError) as info:
        _validate(card, path)
    message = str(info.value)
    assert "official_repo" in message and "paper.arxiv" in message
    assert f"variants.vz_broken_a.{REQUIRED_VARIANT_FIELDS[0]}" in message


def test_opt_out_without_a_reason_is_reported(tmp_path):
    card = yaml.safe_load((CARDS_DIR / "shvit.yaml").read_text())
    card["variants"]["vz_shvit_s1"]["contract_opt_outs"] = {"compile_fullgraph_captures_whole_model": " "}
    with pytest.raises(CardError, match=r"variants\.vz_shvit_s1\.contract_opt_outs .*compile_fullgraph.* give no reason"):
        _validate(card, tmp_path / "shvit.yaml")
    card["contract_opt_outs"] = ["compile_fullgraph_captures_whole_model"]
    with pytest.raises(CardError, match="contract_opt_outs must map contract items to reasons"):
        _validate(card, tmp_path / "shvit.yaml")


def test_cards_live_inside_the_package():
    assert CARDS_DIR.parent == Path(visionzoo.__file__).parent and CARDS_DIR.is_dir()
    assert not (REPO / "models").exists(), "cards moved to visionzoo/cards; a models/ folder would be a stale copy"


def test_wheel_carries_the_cards_and_lists_details(tmp_path):
    """A non-editable install has no checkout beside it: build the wheel from a copy of the sources, check that it
    holds every card, and run ``visionzoo list --details`` from the unpacked wheel outside the checkout."""
    source = tmp_path / "source"
    source.mkdir()
    shutil.copy(REPO / "pyproject.toml", source)
    shutil.copy(REPO / "README.md", source)
    shutil.copytree(REPO / "visionzoo", source / "visionzoo", ignore=shutil.ignore_patterns("__pycache__"))
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q",
         str(source), "-w", str(tmp_path / "dist")],
        capture_output=True, text=True, timeout=300,
    )
    assert build.returncode == 0, build.stderr
    (wheel,) = (tmp_path / "dist").glob("visionzoo-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        shipped = {name for name in archive.namelist() if name.startswith("visionzoo/cards/")}
        archive.extractall(tmp_path / "site")
    assert shipped == {f"visionzoo/cards/{path.name}" for path in CARDS_DIR.glob("*.yaml")}

    env = {**os.environ, "PYTHONPATH": str(tmp_path / "site")}
    listed = subprocess.run(
        [sys.executable, "-m", "visionzoo", "list", "shvit_s1", "--details"],
        capture_output=True, text=True, timeout=300, cwd=tmp_path, env=env,
    )
    assert listed.returncode == 0, listed.stderr
    row = next(line for line in listed.stdout.splitlines() if line.startswith("vz_shvit_s1"))
    card = load_cards()["shvit"]["variants"]["vz_shvit_s1"]
    assert f"{card['paper_params_m']}" in row.split() and f"{card['top1']}" in row.split()
    where = subprocess.run(
        [sys.executable, "-c", "import visionzoo; print(visionzoo.__file__)"],
        capture_output=True, text=True, timeout=120, cwd=tmp_path, env=env,
    )
    assert where.stdout.strip().startswith(str(tmp_path / "site"))
