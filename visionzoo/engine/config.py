"""Training configs: code defaults < recipe YAML (with ``_base_`` inheritance) < ``key=value`` overrides.

A recipe states the paper's numbers once: the global batch, the base learning rate and the batch it refers
to, and the scaling rule. Everything the run derives from them (per-device batch, accumulation steps,
effective learning rates) is computed by :func:`derive` and saved with the resolved config beside the run.
"""
from __future__ import annotations

import copy
import math
import re
from pathlib import Path
from typing import Any

import yaml

from visionzoo.engine.checkpoint import atomic_write_text

CONFIGS_DIR = Path(__file__).resolve().parents[2] / "configs" / "cls"
# Point-cloud recipes (a points family's models) live beside the image ones.
POINT_CONFIGS_DIR = CONFIGS_DIR.parent / "points"

DEFAULTS: dict[str, Any] = {
    "model": {
        "name": None,  # a registered timm / zoo name, e.g. vz_shvit_s1
        "num_classes": 1000,
        "drop_rate": 0.0,
        "drop_path_rate": 0.0,
        "kwargs": {},  # extra create_model arguments
        "checkpoint": None,  # initial weights (fine-tuning), loaded through the family's checkpoint_filter_fn
        "frozen": None,  # regex: parameters whose names match are not trained (e.g. mask_predictor)
    },
    "data": {
        "dir": None,  # ImageNet-style root holding train/ and val/ with a folder per class
        "train_split": "train",
        "val_split": "val",
        "input_size": None,  # side of the square training/eval crop; None = the model's pretrained_cfg
        "crop_pct": None,  # eval centre-crop fraction; None = the model's pretrained_cfg
        "interpolation": None,  # eval resize; None = the model's pretrained_cfg
        "mean": None,
        "std": None,
        "workers": 4,
        "pin_memory": True,
        "format": "folder",  # folder / modelnet40_h5 / scanobjectnn_h5 / shapenetpart_h5 (visionzoo/data/points.py)
        "num_points": None,  # point clouds: points per cloud (the first of each stored cloud); None = the model's
        "scanobjectnn_variant": "PB_T50_RS",  # PB_T50_RS / OBJ_BG / OBJ_ONLY
    },
    "aug": {
        "train_interpolation": "bicubic",
        "scale": [0.08, 1.0],
        "ratio": [0.75, 1.3333333333333333],
        "hflip": 0.5,
        "color_jitter": 0.4,
        "auto_augment": "rand-m9-mstd0.5-inc1",
        "re_prob": 0.25,
        "re_mode": "pixel",
        "re_count": 1,
        "repeated_aug": 0,  # repeats per sample per epoch (DeiT's repeated augmentation uses 3); 0 = off
        "mixup": 0.8,
        "cutmix": 1.0,
        "mixup_prob": 1.0,
        "mixup_switch_prob": 0.5,
        "mixup_mode": "batch",
        "label_smoothing": 0.1,
        "point_scale": [0.6666666666666666, 1.5],  # point clouds: per-axis scale range, then
        "point_shift": 0.2,  # a per-axis shift in [-point_shift, point_shift]
    },
    "loss": {
        # ce (soft-target cross-entropy under mixup) / bce (ResNet-strikes-back style) / ce_others (label smoothing
        # spread over the wrong classes only, as the point-cloud recipes do)
        "name": "ce",
        "bce_target_thresh": None,  # bce only: binarise mixed targets above this value
    },
    "train": {
        "epochs": 300,
        "global_batch_size": 1024,  # the recipe's total batch per optimizer step, over all devices
        "batch_size": None,  # per-device micro-batch; None = global / world size; smaller accumulates gradients
        "seed": 0,
        "deterministic": False,
        "eval_every": 1,  # epochs
        "checkpoint_every_steps": 0,  # also refresh last.pth every N optimizer steps; 0 = end of epoch only
        "best_metric": "top1",  # top1, ema_top1, or instance_miou (part segmentation)
        "log_every": 10,  # optimizer steps between per-step wandb logs
        "output": "runs",
    },
    "optim": {
        "name": "adamw",
        "lr": 1e-3,
        "lr_base_batch": 512,  # the global batch that ``lr`` refers to
        "lr_scaling": "linear",  # linear / sqrt / none: how lr follows global_batch_size / lr_base_batch
        "scale_warmup_min_lr": False,  # scale warmup_lr and min_lr by the same rule (LITv2 does)
        "weight_decay": 0.05,
        "eps": None,  # None = the optimizer's own default
        "betas": None,
        "momentum": 0.9,
        "lr_multipliers": {},  # parameter-name substring -> lr factor, e.g. {conv_offset: 0.01}
        "clip_grad": None,  # None = off; max norm for 'norm', clipping factor for 'agc'
        "clip_mode": "norm",  # norm / agc / value
    },
    "sched": {
        "name": "cosine",
        "warmup_epochs": 5,
        "warmup_lr": 1e-6,
        "min_lr": 1e-5,
    },
    "ema": {
        "enabled": False,
        "decay": 0.9998,
        "warmup": False,
        "eval": True,
    },
    "runtime": {
        "device": None,  # None = cuda:<local rank> when available, else cpu
        "amp": "auto",  # auto (CUDA: bf16 if supported else fp16; CPU: off) / bf16 / fp16 / none
        "channels_last": False,
        "compile": False,
        "grad_checkpointing": False,
    },
    "distill": {  # a frozen teacher's terms added to the loss (visionzoo/engine/distill.py)
        "teacher": None,  # None: no distillation; "student": a copy of the student's initial weights; or a model name
        "teacher_kwargs": {},  # create_model arguments of the teacher (e.g. keep_rate: 1.0 for a dense copy)
        "teacher_checkpoint": None,  # the weights of a teacher named by model name
        "task_weight": 1.0,
        "logits_weight": 0.0,
        "tokens_weight": 0.0,
        "attention_weight": 0.0,
    },
    "wandb": {
        "project": "visionzoo",
        "entity": None,
        "name": None,
        "mode": None,  # None = offline unless WANDB_API_KEY is set
    },
}

CHOICES = {
    ("optim", "lr_scaling"): ("linear", "sqrt", "none"),
    ("loss", "name"): ("ce", "bce", "ce_others"),
    ("optim", "clip_mode"): ("norm", "agc", "value"),
    ("runtime", "amp"): ("auto", "bf16", "fp16", "none"),
    ("train", "best_metric"): ("top1", "ema_top1", "instance_miou"),
    ("data", "format"): ("folder", "modelnet40_h5", "scanobjectnn_h5", "shapenetpart_h5"),
    ("data", "scanobjectnn_variant"): ("PB_T50_RS", "OBJ_BG", "OBJ_ONLY"),
}


class _Loader(yaml.SafeLoader):
    """YAML 1.1 reads ``1e-3`` (no dot) as a string; recipes write learning rates that way, so read it as a float."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:\d[\d_]*)?(?:\.[\d_]*)?[eE][-+]?\d+$|^[-+]?(?:\d[\d_]*)?\.[\d_]+$|^[-+]?\d[\d_]*\.$"),
    list("-+0123456789."),
)


class ConfigError(ValueError):
    """A config file or override is malformed or names an unknown key."""


def _parse_yaml(text, source: str):
    try:
        return yaml.load(text, Loader=_Loader)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        problem = getattr(error, "problem", None) or str(error).splitlines()[0]
        raise ConfigError(f"{source} is not valid YAML{where}: {problem}") from None


def _merge(base: dict, update: dict, where: str) -> dict:
    merged = copy.deepcopy(base)
    for key, value in update.items():
        if key not in merged:
            raise ConfigError(f"unknown config key {where}{key!r}; known keys here: {', '.join(sorted(merged))}")
        # Free-form mappings (model kwargs, lr multipliers) are replaced whole rather than checked key by key.
        if isinstance(merged[key], dict) and merged[key] and isinstance(value, dict):
            merged[key] = _merge(merged[key], value, f"{where}{key}.")
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def find_config(name_or_path: str | Path) -> Path:
    """A config path, or a model name (``vz_shvit_s1`` / ``shvit_s1``) looked up in ``configs/cls`` (then
    ``configs/points``)."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml"):
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        return path
    stem = str(name_or_path).removeprefix("vz_")
    candidate = CONFIGS_DIR / f"{stem}.yaml"
    if not candidate.is_file() and (POINT_CONFIGS_DIR / f"{stem}.yaml").is_file():
        candidate = POINT_CONFIGS_DIR / f"{stem}.yaml"
    if not candidate.is_file():
        known = sorted(p.stem for folder in (CONFIGS_DIR, POINT_CONFIGS_DIR) for p in folder.glob("*.yaml"))
        raise ConfigError(f"no recipe {candidate} for {name_or_path!r}; pass a YAML path or one of: {', '.join(known)}")
    return candidate


def _read_yaml(path: Path, seen: tuple[Path, ...] = ()) -> dict:
    """A config file with its ``_base_`` files (paths relative to it) merged underneath."""
    path = path.resolve()
    if path in seen:
        raise ConfigError(f"config {path} includes itself through _base_")
    with path.open() as handle:
        raw = _parse_yaml(handle, f"config {path}") or {}
    if not isinstance(raw, dict):
        raise ConfigError(f"config {path} must be a mapping of sections, not {type(raw).__name__}")
    bases = raw.pop("_base_", [])
    merged: dict = {}
    for base in [bases] if isinstance(bases, str) else bases:
        merged = _deep_update(merged, _read_yaml(path.parent / base, seen + (path,)))
    return _deep_update(merged, raw)


def _deep_update(base: dict, update: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_update(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def parse_overrides(overrides: list[str]) -> dict:
    """``["optim.lr=1e-3", "aug.scale=[0.5,1]"]`` -> nested dict; values are parsed as YAML."""
    nested: dict = {}
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key or any(not part for part in key.split(".")):
            raise ConfigError(f"override {item!r} is not of the form section.key=value (e.g. optim.lr=2e-3)")
        node = nested
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r} conflicts with an earlier override of {part!r}")
        node[leaf] = _parse_yaml(text, f"override {item!r}")
    return nested


NUMBER = (int, float)
# Types of the keys whose default is None (the others take their default's type); None is always allowed there.
OPTIONAL_TYPES = {
    ("model", "name"): str,
    ("model", "checkpoint"): str,
    ("data", "dir"): str,
    ("data", "input_size"): int,
    ("data", "crop_pct"): NUMBER,
    ("data", "interpolation"): str,
    ("data", "mean"): list,
    ("data", "std"): list,
    ("data", "num_points"): int,
    ("aug", "auto_augment"): str,  # null turns RandAugment off
    ("aug", "color_jitter"): NUMBER,
    ("loss", "bce_target_thresh"): NUMBER,
    ("train", "batch_size"): int,
    ("optim", "eps"): NUMBER,
    ("optim", "betas"): list,
    ("optim", "clip_grad"): NUMBER,
    ("runtime", "device"): str,
    ("wandb", "entity"): str,
    ("wandb", "name"): str,
    ("wandb", "mode"): str,
    ("model", "frozen"): str,
    ("distill", "teacher"): str,
    ("distill", "teacher_checkpoint"): str,
}
POSITIVE = {
    ("model", "num_classes"), ("train", "epochs"), ("train", "global_batch_size"), ("train", "eval_every"),
    ("train", "batch_size"), ("train", "log_every"), ("data", "input_size"), ("data", "num_points"), ("optim", "lr"),
    ("optim", "lr_base_batch"),
}
NON_NEGATIVE = {
    ("data", "workers"), ("train", "checkpoint_every_steps"), ("optim", "weight_decay"), ("sched", "warmup_epochs"),
    ("sched", "warmup_lr"), ("sched", "min_lr"), ("model", "drop_rate"), ("model", "drop_path_rate"),
}
_TYPE_NAMES = {int: "an integer", float: "a number", NUMBER: "a number", bool: "true or false", str: "a string",
               list: "a list", dict: "a mapping"}


def _expected_type(section: str, key: str):
    if (section, key) in OPTIONAL_TYPES:
        return OPTIONAL_TYPES[(section, key)]
    default = DEFAULTS[section][key]
    return NUMBER if isinstance(default, float) else type(default)


def _check_types(cfg: dict) -> None:
    for section, values in DEFAULTS.items():
        for key in values:
            value, expected = cfg[section][key], _expected_type(section, key)
            if value is None and ((section, key) in OPTIONAL_TYPES or DEFAULTS[section][key] is None):
                continue
            # bool is an int in Python, but `epochs: true` is a mistake rather than 1.
            wrong_bool = isinstance(value, bool) and expected is not bool
            if wrong_bool or not isinstance(value, expected):
                raise ConfigError(
                    f"{section}.{key}={value!r} must be {_TYPE_NAMES[expected]} (got {type(value).__name__})"
                )
            if (section, key) in POSITIVE and value <= 0:
                raise ConfigError(f"{section}.{key} must be positive, got {value!r}")
            if (section, key) in NON_NEGATIVE and value < 0:
                raise ConfigError(f"{section}.{key} must not be negative, got {value!r}")


def _validate(cfg: dict) -> None:
    _check_types(cfg)
    for (section, key), allowed in CHOICES.items():
        if cfg[section][key] not in allowed:
            raise ConfigError(f"{section}.{key}={cfg[section][key]!r}; choose one of {', '.join(allowed)}")
    if not cfg["model"]["name"]:
        raise ConfigError("model.name is not set; name a model in the config or pass model.name=<name>")


def load_config(name_or_path: str | Path | None, overrides: list[str] = ()) -> dict:
    """Defaults, then the recipe (if any), then overrides; unknown keys and bad choices raise ConfigError."""
    cfg = copy.deepcopy(DEFAULTS)
    if name_or_path is not None:
        cfg = _merge(cfg, _read_yaml(find_config(name_or_path)), "")
    cfg = _merge(cfg, parse_overrides(list(overrides)), "")
    _validate(cfg)
    return cfg


def derive(cfg: dict, world_size: int) -> dict:
    """Per-device batch, accumulation steps and effective learning rates for ``world_size`` devices."""
    train, optim, sched = cfg["train"], cfg["optim"], cfg["sched"]
    global_batch = train["global_batch_size"]
    batch = train["batch_size"] or global_batch // world_size
    if batch < 1 or global_batch % (batch * world_size):
        raise ConfigError(
            f"train.global_batch_size={global_batch} is not a multiple of train.batch_size={batch} x "
            f"{world_size} device(s); pick a per-device batch that divides {global_batch // world_size or 1}"
        )
    ratio = global_batch / optim["lr_base_batch"]
    factor = {"linear": ratio, "sqrt": math.sqrt(ratio), "none": 1.0}[optim["lr_scaling"]]
    bound_factor = factor if optim["scale_warmup_min_lr"] else 1.0
    return {
        "world_size": world_size,
        "batch_size": batch,
        "accum_steps": global_batch // (batch * world_size),
        "lr": optim["lr"] * factor,
        "warmup_lr": sched["warmup_lr"] * bound_factor,
        "min_lr": sched["min_lr"] * bound_factor,
    }


def save_config(cfg: dict, path: Path, header: str = "") -> None:
    """Write the resolved config (loadable again by :func:`load_config`), ``header`` as a comment on top."""
    text = "".join(f"# {line}\n" for line in header.splitlines()) + yaml.safe_dump(cfg, sort_keys=False)
    atomic_write_text(text, path)
