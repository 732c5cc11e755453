"""Train and test mmdet / mmseg configs with zoo backbones: ``python -m visionzoo.mm {train,test} CONFIG``.

Every checkpoint the runner loads or resumes (``load_from``, ``--resume``, the checkpoint given to ``test``)
is read by :func:`visionzoo.mm.checkpoint.load_mmengine_checkpoint`, which rebuilds mmengine's message hub
from plain data; a file holding anything that could run code is refused with a one-line error.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

from mmengine.config import Config, DictAction
from mmengine.model import is_model_wrapper
from mmengine.runner import Runner
from mmengine.runner.checkpoint import _load_checkpoint_to_model

from visionzoo.mm.checkpoint import load_mmengine_checkpoint
from visionzoo.models._checkpoint import CheckpointError


class SafeCheckpointRunner(Runner):
    """mmengine's ``Runner`` with its checkpoint reading replaced by the data-only loader."""

    _resuming = False

    def resume(self, filename: str, *args, **kwargs) -> None:
        self._resuming = True
        try:
            super().resume(filename, *args, **kwargs)
        finally:
            self._resuming = False

    def load_checkpoint(self, filename: str, map_location="cpu", strict: bool = False,
                        revise_keys: Sequence = ((r"^module.", ""),)) -> dict:
        checkpoint = load_mmengine_checkpoint(filename, map_location)
        meta = checkpoint.get("meta")
        resumable = isinstance(meta, dict) and {"epoch", "iter"} <= meta.keys() and "message_hub" in checkpoint
        if self._resuming and not resumable:
            raise CheckpointError(
                f"{filename} is not an mmengine training checkpoint (no meta epoch/iter or message hub), so "
                f"training cannot resume from it; to start from its weights set load_from instead of --resume "
                f"(--cfg-options load_from={filename})"
            )
        self.call_hook("after_load_checkpoint", checkpoint=checkpoint)
        model = self.model.module if is_model_wrapper(self.model) else self.model
        checkpoint = _load_checkpoint_to_model(model, checkpoint, strict, revise_keys=list(revise_keys))
        self._has_loaded = True
        self.logger.info(f"Load checkpoint from {filename}")
        return checkpoint


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
    runner = SafeCheckpointRunner.from_cfg(cfg)
    runner.train()
    return runner


def test(argv: Sequence[str] | None = None) -> dict:
    args = _parser("test").parse_args(argv)
    cfg = load_config(args.config, args.work_dir, args.cfg_options, args.launcher)
    cfg.load_from = args.checkpoint
    return SafeCheckpointRunner.from_cfg(cfg).test()


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(argv if argv is not None else sys.argv[1:])
    commands = {"train": train, "test": test}
    if not argv or argv[0] not in commands:
        print("usage: python -m visionzoo.mm {train,test} CONFIG [options]  (add -h after the command for help)")
        return 2
    try:
        commands[argv[0]](argv[1:])
    except (CheckpointError, FileNotFoundError, ValueError) as error:
        print(f"python -m visionzoo.mm {argv[0]}: error: {error}", file=sys.stderr)
        return 2
    return 0
