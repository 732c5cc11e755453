"""Train and test mmdet / mmseg configs with zoo backbones: ``python -m visionzoo.mm {train,test} CONFIG``.

torch ≥ 2.6 loads checkpoints with ``weights_only=True``, and mmengine's own checkpoints (which carry
its message hub: ``HistoryBuffer`` objects and numpy scalars) fail to load that way, so ``--resume``
breaks. Rather than turning the safety off, the few plain-data types those checkpoints hold are
allow-listed while mmengine loads; a checkpoint holding anything else is still refused.
"""
from __future__ import annotations

import argparse
import codecs
import collections
import contextlib
import os
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch
from mmengine.config import Config, DictAction
from mmengine.logging.history_buffer import HistoryBuffer
from mmengine.runner import Runner
from numpy._core.multiarray import _reconstruct, scalar

# What mmengine's checkpoints pickle besides tensors: the message hub's HistoryBuffers (numpy arrays and
# scalars inside, and their statistics methods, stored as getattr(buffer, 'mean') and the like), a Counter
# and byte strings. weights_only unpickling still calls only allow-listed callables, so getattr can fetch
# an attribute but never call one.
MMENGINE_CHECKPOINT_TYPES = [
    HistoryBuffer,
    np.ndarray,
    np.dtype,
    np.dtypes.Float64DType,
    np.dtypes.Float32DType,
    np.dtypes.Int64DType,
    np.dtypes.Int32DType,
    _reconstruct,
    scalar,
    collections.Counter,
    codecs.encode,
    getattr,
]


@contextlib.contextmanager
def mmengine_checkpoint_types() -> Iterator[None]:
    """Let ``weights_only`` loading accept the plain-data types mmengine writes, and nothing more."""
    with torch.serialization.safe_globals(MMENGINE_CHECKPOINT_TYPES):
        yield


def _parser(command: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=f"python -m visionzoo.mm {command}")
    parser.add_argument("config", help="an mmdet 3 / mmseg 1 config, e.g. configs/det/shvit/...")
    if command == "test":
        parser.add_argument("checkpoint", help="the trained detector/segmentor checkpoint")
    parser.add_argument("--work-dir", help="where logs and checkpoints go (default: work_dirs/<config name>)")
    if command == "train":
        parser.add_argument(
            "--resume", nargs="?", const="auto", default=None,
            help="resume from the latest checkpoint in the work dir, or from the given path",
        )
        parser.add_argument("--amp", action="store_true", help="mixed precision (AmpOptimWrapper)")
    parser.add_argument("--cfg-options", nargs="+", action=DictAction, default={}, help="override config keys")
    parser.add_argument("--launcher", choices=["none", "pytorch", "slurm", "mpi"], default="none")
    return parser


def load_config(config: str, work_dir: str | None, options: dict, launcher: str) -> Config:
    if not Path(config).is_file():
        raise FileNotFoundError(f"config {config} does not exist; the zoo's configs are under configs/det and configs/seg")
    cfg = Config.fromfile(config)
    cfg.merge_from_dict(options)
    cfg.launcher = launcher
    cfg.work_dir = work_dir or cfg.get("work_dir") or str(Path("work_dirs") / Path(config).stem)
    return cfg


def train(argv: Sequence[str] | None = None) -> Runner:
    args = _parser("train").parse_args(argv)
    cfg = load_config(args.config, args.work_dir, args.cfg_options, args.launcher)
    if args.amp:
        cfg.optim_wrapper.type = "AmpOptimWrapper"
        cfg.optim_wrapper.setdefault("loss_scale", "dynamic")
    if args.resume == "auto":
        cfg.resume, cfg.load_from = True, None
    elif args.resume is not None:
        cfg.resume, cfg.load_from = True, args.resume
    runner = Runner.from_cfg(cfg)
    with mmengine_checkpoint_types():
        runner.train()
    return runner


def test(argv: Sequence[str] | None = None) -> dict:
    args = _parser("test").parse_args(argv)
    cfg = load_config(args.config, args.work_dir, args.cfg_options, args.launcher)
    cfg.load_from = args.checkpoint
    runner = Runner.from_cfg(cfg)
    with mmengine_checkpoint_types():
        return runner.test()


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(argv if argv is not None else os.sys.argv[1:])
    commands = {"train": train, "test": test}
    if not argv or argv[0] not in commands:
        print("usage: python -m visionzoo.mm {train,test} CONFIG [options]  (add -h after the command for help)")
        return 2
    commands[argv[0]](argv[1:])
    return 0
