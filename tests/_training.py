"""Shared set-up of the training tests: a small digits data set, a small model and a command line to run."""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import timm

import visionzoo  # noqa: F401  (registers the zoo)

ROOT = Path(__file__).resolve().parents[1]

# The smallest zoo model once SHViT is registered, else timm's tiny test ResNet (the engine is model-agnostic).
TEST_MODEL = "vz_shvit_s1" if timm.is_model("vz_shvit_s1") else "test_resnet"

# A recipe small enough for two CPU cores: 32 px digits, every augmentation path exercised.
TINY_OVERRIDES = [
    f"model.name={TEST_MODEL}",
    "model.num_classes=10",
    "data.input_size=32",
    "data.workers=0",
    "aug.hflip=0.0",  # a mirrored digit is another symbol
    "aug.scale=[0.6,1.0]",
    "aug.auto_augment=rand-m6-mstd0.5",
    "aug.re_prob=0.1",
    "aug.mixup=0.2",
    "aug.cutmix=0.5",
    "aug.mixup_prob=0.5",
    "aug.repeated_aug=0",
    "ema.enabled=false",
    "train.best_metric=top1",
    "train.global_batch_size=32",
    "optim.lr=2e-3",
    "optim.lr_base_batch=32",
    "optim.weight_decay=0.01",
    "sched.warmup_epochs=0",
]

ENTRY_SCRIPT = ROOT / "tests" / "_train_entry.py"


def entry_command(*args: str) -> list[str]:
    return [sys.executable, "-u", str(ENTRY_SCRIPT), *args]


def subprocess_env() -> dict[str, str]:
    # One thread per process: the test machine's cores are shared, and oversubscribed threads crawl.
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", WANDB_MODE="offline", WANDB_SILENT="true")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return env


def parse_train_cli(*argv: str) -> argparse.Namespace:
    """``visionzoo train|eval ARGS`` parsed as the CLI does, for tests that call run_train/run_eval in-process."""
    from visionzoo.engine.evaluate import add_eval_parser
    from visionzoo.engine.train import add_train_parser

    parser = argparse.ArgumentParser()
    commands = parser.add_subparsers(dest="command")
    add_train_parser(commands)
    add_eval_parser(commands)
    return parser.parse_args(list(argv))
