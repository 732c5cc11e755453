"""Run records: the per-epoch CSV summary and the optional Weights & Biases run (imported only when asked)."""
from __future__ import annotations

import csv
import io
import os
from pathlib import Path

from visionzoo.engine.checkpoint import atomic_write_text

SUMMARY_COLUMNS = (
    "epoch", "global_step", "lr", "train_loss",
    "top1", "top5", "macc", "instance_miou", "class_miou", "val_loss", "ema_top1", "ema_top5", "ema_val_loss",
    "epoch_seconds", "train_img_per_s",
)
TIMING_COLUMNS = ("epoch_seconds", "train_img_per_s")


def write_summary(rows: list[dict], path: str | Path) -> None:
    """Rewrite the whole CSV from the run history (kept in the checkpoint), so a resume never duplicates rows."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=SUMMARY_COLUMNS)
    writer.writeheader()
    for row in rows:
        writer.writerow({key: row.get(key, "") for key in SUMMARY_COLUMNS})
    atomic_write_text(buffer.getvalue(), path)


def read_summary(path: str | Path) -> list[dict[str, str]]:
    with Path(path).open(newline="") as handle:
        return list(csv.DictReader(handle))


def wandb_mode(configured: str | None) -> str:
    """The configured mode, else WANDB_MODE, else online only when credentials are present."""
    if configured:
        return configured
    if os.environ.get("WANDB_MODE"):
        return os.environ["WANDB_MODE"]
    return "online" if os.environ.get("WANDB_API_KEY") else "offline"


class WandbRun:
    """A wandb run in the output folder; ``run_id`` resumes the same run after a restart."""

    def __init__(self, cfg: dict, output_dir: Path, run_id: str | None = None):
        try:
            import wandb
        except ImportError as error:
            raise ImportError("--wandb needs the wandb package: pip install 'visionzoo[wandb]'") from error
        settings = cfg["wandb"]
        self.run = wandb.init(
            project=settings["project"],
            entity=settings["entity"],
            name=settings["name"] or output_dir.name,
            dir=str(output_dir),
            config=cfg,
            mode=wandb_mode(settings["mode"]),
            id=run_id,
            resume="allow" if run_id else None,
        )

    @property
    def run_id(self) -> str:
        return self.run.id

    def log(self, values: dict, step: int) -> None:
        self.run.log(values, step=step)

    def finish(self) -> None:
        self.run.finish()
