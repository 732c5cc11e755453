"""Training recipes: every config loads, names a zoo model, and resolves overrides and lr scaling as stated."""
import re
from pathlib import Path

import pytest
import timm

import visionzoo
from visionzoo.models._cards import variant_card
from visionzoo.engine.config import (
    CONFIGS_DIR,
    ConfigError,
    derive,
    find_config,
    load_config,
    parse_overrides,
    save_config,
)

# The variants listed in the spec sheets (specs/*.md, section 2) of the families with training recipes.
SPEC_VARIANTS = {
    "shvit": ["vz_shvit_s1", "vz_shvit_s2", "vz_shvit_s3", "vz_shvit_s4"],
    "davit": ["vz_davit_tiny", "vz_davit_small", "vz_davit_base"],
    "convit": [f"vz_convit_{size}{plus}" for size in ("tiny", "small", "base") for plus in ("", "_plus")],
    "halonet": ["vz_halonet26t", "vz_sehalonet33ts", "vz_halonet50ts", "vz_eca_halonext26ts"]
    + [f"vz_halonet_h{i}" for i in range(5)],
    "transnext": [f"vz_transnext_{v}" for v in ("micro", "tiny", "small", "base", "micro_aaaa")],
    "litv2": ["vz_litv2_small", "vz_litv2_medium", "vz_litv2_base"],
    "s2aformer": [f"vz_s2aformer_{v}" for v in ("mini", "t", "xs", "s", "m")],
    "spectformer": [f"vz_spectformer_{v}" for v in ("t", "xs", "s", "b", "h_s", "h_b", "h_l")],
    "sparsifiner": ["vz_sparsifiner_deit_small"],
    "nat": [f"vz_{family}_{size}" for family in ("nat", "dinat") for size in ("mini", "tiny", "small", "base")]
    + [f"vz_dinat_s_{size}" for size in ("tiny", "small", "base")],
    "overlock": [f"vz_overlock_{v}" for v in ("xt", "t", "s", "b")],
}
SPEC_NAMES = {name for names in SPEC_VARIANTS.values() for name in names}
RECIPES = sorted(CONFIGS_DIR.glob("*.yaml"))


@pytest.mark.parametrize("path", RECIPES, ids=[p.stem for p in RECIPES])
def test_recipe_loads_and_names_a_known_model(path):
    cfg = load_config(path)
    name = cfg["model"]["name"]
    assert timm.is_model(name), f"{path.name} names {name}, which is not registered"
    # File name = registry name without vz_ (fine-tuning recipes add a suffix).
    assert path.stem == name.removeprefix("vz_") or path.stem.startswith(name.removeprefix("vz_") + "_ft")
    derived = derive(cfg, world_size=8)
    assert derived["batch_size"] * 8 * derived["accum_steps"] == cfg["train"]["global_batch_size"]
    max_lr = 2.0 if cfg["optim"]["name"] in ("sgd", "momentum", "nesterov") else 0.1  # SGD steps are larger
    assert 0 < derived["lr"] < max_lr and cfg["train"]["epochs"] >= 1 and cfg["data"]["input_size"] >= 224


def test_every_spec_and_registered_variant_has_a_recipe():
    registered = {name for name in visionzoo.list_models() if visionzoo.family_of(name).name in SPEC_VARIANTS}
    # A card may state that no recipe was published for a variant (``recipe: null``); those need none.
    unpublished = {name for name in registered if (variant_card(name) or {}).get("recipe", "") is None}
    missing = sorted(
        name for name in (SPEC_NAMES | registered) - unpublished if not (CONFIGS_DIR / f"{name[3:]}.yaml").is_file()
    )
    assert not missing, f"no recipe in configs/cls for {missing}"


def test_paper_recipes_resolve_to_the_papers_numbers():
    shvit = load_config("vz_shvit_s4")
    assert derive(shvit, 8)["lr"] == pytest.approx(4e-3)  # 1e-3 x 2048 / 512
    assert (shvit["optim"]["clip_mode"], shvit["optim"]["clip_grad"]) == ("agc", 0.02)
    assert shvit["ema"]["decay"] == 0.99996 and shvit["data"]["input_size"] == 256
    assert shvit["optim"]["weight_decay"] == 0.03
    transnext = load_config("transnext_small")
    assert derive(transnext, 8)["lr"] == 1e-3 and transnext["model"]["drop_path_rate"] == 0.45
    litv2 = derive(load_config("litv2_base"), 8)
    assert (litv2["lr"], litv2["warmup_lr"], litv2["min_lr"]) == pytest.approx((1e-3, 1e-6, 1e-5))
    assert load_config("convit_tiny")["optim"]["lr"] == 5e-4
    overlock = load_config("overlock_b")
    assert derive(overlock, 8)["lr"] == pytest.approx(2e-3) and overlock["model"]["drop_path_rate"] == 0.5
    assert (overlock["optim"]["clip_grad"], overlock["ema"]["decay"]) == (5.0, 0.9999)


def test_overrides_are_dotted_yaml_values():
    cfg = load_config("shvit_s1", ["optim.lr=2e-3", "aug.scale=[0.5, 1]", "ema.enabled=false", "model.kwargs={a: 1}"])
    assert cfg["optim"]["lr"] == 2e-3 and isinstance(cfg["optim"]["lr"], float)
    assert cfg["aug"]["scale"] == [0.5, 1] and cfg["ema"]["enabled"] is False and cfg["model"]["kwargs"] == {"a": 1}
    assert parse_overrides(["a.b.c=x"]) == {"a": {"b": {"c": "x"}}}


@pytest.mark.parametrize(
    "override, message",
    [
        ("optim.lrr=1", "unknown config key optim.'lrr'"),
        ("optim.lr", "not of the form section.key=value"),
        ("optim.clip_mode=fast", "choose one of norm, agc, value"),
        ("train.epochs=0", "train.epochs must be positive, got 0"),
        ("optim.lr=fast", "optim.lr='fast' must be a number (got str)"),
        ("model.num_classes=0", "model.num_classes must be positive"),
        ("train.epochs=true", "train.epochs=True must be an integer"),
        ("aug.scale=[0.5,1", "override 'aug.scale=[0.5,1' is not valid YAML (line 1, column 7)"),
    ],
)
def test_bad_overrides_say_what_is_wrong(override, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config("shvit_s1", [override])


def test_batch_accumulation_and_lr_scaling():
    cfg = load_config(None, ["model.name=m", "train.global_batch_size=256", "train.batch_size=32", "optim.lr=1e-3",
                             "optim.lr_base_batch=512", "optim.lr_scaling=sqrt"])
    derived = derive(cfg, world_size=2)
    assert (derived["batch_size"], derived["accum_steps"]) == (32, 4)
    assert derived["lr"] == pytest.approx(1e-3 * (256 / 512) ** 0.5)
    with pytest.raises(ConfigError, match="not a multiple"):
        derive(cfg, world_size=3)


def test_unknown_recipe_lists_the_known_ones():
    with pytest.raises(ConfigError, match="shvit_s1"):
        find_config("vz_nothing")
    with pytest.raises(ConfigError, match="model.name is not set"):
        load_config(None)


def test_resolved_config_saves_and_reloads(tmp_path: Path):
    cfg = load_config("litv2_small", ["optim.lr=1e-4"])
    save_config(cfg, tmp_path / "config.yaml", header="derived: lr=2e-4")
    assert (tmp_path / "config.yaml").read_text().startswith("# derived: lr=2e-4\n")
    assert load_config(tmp_path / "config.yaml") == cfg


def test_base_files_merge_underneath(tmp_path: Path):
    (tmp_path / "base.yaml").write_text("optim: {lr: 1.0e-2, weight_decay: 0.1}\nmodel: {name: a}\n")
    (tmp_path / "child.yaml").write_text("_base_: base.yaml\noptim: {lr: 3e-3}\n")
    cfg = load_config(tmp_path / "child.yaml")
    assert (cfg["optim"]["lr"], cfg["optim"]["weight_decay"], cfg["model"]["name"]) == (3e-3, 0.1, "a")


def test_litv2_recipe_trains_the_deformable_offsets_at_one_percent_of_the_lr():
    from visionzoo.engine.train import build_optimizer

    cfg = load_config("litv2_small")
    model = timm.create_model("vz_litv2_small", device="meta")
    optimizer = build_optimizer(cfg, model, lr=1e-3)
    offsets = {id(p) for name, p in model.named_parameters() if "conv_offset" in name}
    scales = {g["lr_scale"] for g in optimizer.param_groups if any(id(p) in offsets for p in g["params"])}
    assert offsets and scales == {0.01}
    assert sum(len(g["params"]) for g in optimizer.param_groups) == len(list(model.parameters()))


def test_spectformer_recipes_follow_the_official_scripts():
    vanilla, hierarchical = load_config("vz_spectformer_s"), load_config("vz_spectformer_h_l")
    assert derive(vanilla, 8)["lr"] == pytest.approx(1e-3) and vanilla["train"]["epochs"] == 320
    assert (vanilla["aug"]["re_prob"], vanilla["optim"]["clip_grad"], vanilla["model"]["drop_path_rate"]) == (0, 1, 0.15)
    assert hierarchical["train"]["epochs"] == 310 and hierarchical["model"]["drop_path_rate"] == 0.3
    assert hierarchical["model"]["kwargs"] == {"aux_head": False}  # token labeling is not reproduced
    assert load_config("vz_spectformer_h_s")["optim"]["clip_grad"] is None
