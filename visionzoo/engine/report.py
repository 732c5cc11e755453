"""``python -m visionzoo.engine.report RUN_DIR [--markdown FILE]``: a finished run's figures as Markdown.

The documentation quotes runs through this tool rather than by hand: it reads ``summary.csv``, ``config.yaml``
and ``best.pth`` of a run folder and prints (or writes between ``<!-- run:NAME:start -->`` and
``<!-- run:NAME:end -->`` in FILE) the run's setting, its best checkpoint and one column per epoch.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import timm

from visionzoo._markers import MarkerError, replace_marked_block
from visionzoo.engine.config import ConfigError, load_config
from visionzoo.engine.logging import read_summary
from visionzoo.models import CheckpointError
from visionzoo.models._checkpoint import read_checkpoint


def _row(title: str, rows: list[dict], key: str, spec: str) -> str | None:
    if not any(row.get(key) for row in rows):
        return None
    return f"| {title} | " + " | ".join(format(float(row[key]), spec) if row.get(key) else "-" for row in rows) + " |"


def run_report(run_dir: Path) -> str:
    """Markdown for the run in ``run_dir``: one sentence of facts and a table of its epochs."""
    summary, config_path, best_path = run_dir / "summary.csv", run_dir / "config.yaml", run_dir / "best.pth"
    for path in (summary, config_path, best_path):
        if not path.is_file():
            raise ValueError(f"{run_dir} is not a finished run: {path.name} is missing")
    rows = read_summary(summary)
    cfg = load_config(config_path)
    best = read_checkpoint(best_path)["best"]
    model, ema = cfg["model"], cfg["ema"]
    params = sum(p.numel() for p in timm.create_model(model["name"], num_classes=model["num_classes"]).parameters())
    steps = int(rows[0]["global_step"])
    if ema["enabled"]:
        ema_text = f"EMA decay {ema['decay']}" + (" with warmup" if ema["warmup"] else "")
    else:
        ema_text = "no EMA"
    seconds = sum(float(row["epoch_seconds"]) for row in rows)
    facts = (
        f"{model['name']} ({params / 1e6:.1f} M parameters with a {model['num_classes']}-class head), "
        f"{len(rows)} epochs of {steps} optimizer steps at global batch {cfg['train']['global_batch_size']}, "
        f"{ema_text}: `best.pth` is epoch {best['epoch']} at {cfg['train']['best_metric']} "
        f"{best['metric']:.1f} %; training took {seconds:.0f} s (the epochs' train time, evaluation excluded)."
    )
    table = [
        "| epoch | " + " | ".join(row["epoch"] for row in rows) + " |",
        "|---|" + "---|" * len(rows),
        _row("train loss", rows, "train_loss", ".3f"),
        _row("val top-1 (%)", rows, "top1", ".1f"),
        _row("EMA val top-1 (%)", rows, "ema_top1", ".1f"),
    ]
    return facts + "\n\n" + "\n".join(line for line in table if line is not None) + "\n"


def write_report(run_dir: Path, markdown: Path, name: str) -> None:
    block = run_report(run_dir)
    source = (f"<sub>Written by <code>python -m visionzoo.engine.report {run_dir} --markdown {markdown} "
              f"--name {name}</code>; do not edit by hand.</sub>\n")
    start, end = f"<!-- run:{name}:start -->", f"<!-- run:{name}:end -->"
    markdown.write_text(replace_marked_block(markdown.read_text(), block + "\n" + source, str(markdown), start, end))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m visionzoo.engine.report", description=__doc__)
    parser.add_argument("run_dir", type=Path, help="a finished run folder (summary.csv, config.yaml, best.pth)")
    parser.add_argument("--markdown", type=Path, help="write into this file between the run's markers")
    parser.add_argument("--name", default="digits", help="marker name: <!-- run:NAME:start --> (default digits)")
    args = parser.parse_args(argv)
    try:
        if args.markdown:
            write_report(args.run_dir, args.markdown, args.name)
            print(f"rewrote the {args.name} run figures in {args.markdown}")
        else:
            print(run_report(args.run_dir), end="")
    except (ValueError, ConfigError, CheckpointError, MarkerError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
