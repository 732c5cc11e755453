"""``visionzoo validate NAME --data DIR``: a published checkpoint on an ImageNet-style folder, beside its paper.

The model is built with ``pretrained=True`` (a tag, ``vz_model.tag``, or the default tag) and evaluated with the
tag's own eval transform (input size, crop, interpolation, mean/std from its pretrained cfg, which comes from the
card). Top-1/top-5 and throughput are printed next to the top-1 the card records for that checkpoint, and
written as JSON.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import timm
from timm.data import resolve_data_config

from visionzoo.data.loader import ImageFolder, create_eval_loader, eval_transform
from visionzoo.engine.distributed import init_distributed, shutdown
from visionzoo.engine.evaluate import check_writable, evaluate
from visionzoo.models._factory import check_model_name
from visionzoo.models._pretrained import weight_source


def tag_data_config(name: str) -> dict[str, Any]:
    """The eval data config of a pretrained tag, from its pretrained cfg alone (no model is built)."""
    cfg = timm.models.get_pretrained_cfg(name)
    if cfg is None:
        raise ValueError(f"{name!r} has no pretrained cfg; `visionzoo weights list` shows every tag")
    return resolve_data_config(pretrained_cfg=cfg.to_dict())


def data_root(data: str | Path) -> Path:
    """``DIR/val`` when an ImageNet root is given, else ``DIR`` itself (a folder per class)."""
    data = Path(data)
    if not data.is_dir():
        raise ValueError(f"--data {data} is not a folder; give an ImageNet-style folder (one sub-folder per class)")
    return data / "val" if (data / "val").is_dir() else data


def validate(
    name: str, data: str | Path, batch_size: int = 64, workers: int = 4, device: str | None = None,
    amp: str = "auto",
) -> dict[str, Any]:
    """Evaluate the published checkpoint ``name`` on ``data``; the result dict is what the CLI writes as JSON."""
    source = weight_source(name)
    check_model_name(source.name.split(".")[0])
    if source.top1 is None:
        raise ValueError(f"{source.name} is a pre-training checkpoint without an ImageNet-1k head; validate a tag "
                         "fine-tuned on ImageNet-1k (`visionzoo weights list` shows them)")
    data_config = tag_data_config(source.name)
    dataset = ImageFolder(data_root(data), eval_transform(data_config), substitute=False)
    info = init_distributed(device)
    model = timm.create_model(source.name, pretrained=True).to(info.device)
    loader = create_eval_loader(dataset, batch_size, info.rank, info.world_size, workers, info.device.type == "cuda")
    metrics = evaluate(model, loader, info, amp=amp)
    shutdown(info)
    return {
        "model": source.name,
        "source": source.location,
        "license": source.license,
        "data": str(dataset.root),
        **metrics,
        "skipped": len(dataset.skipped) + metrics["unreadable"],
        "paper_top1": source.top1,
        "top1_vs_paper": metrics["top1"] - source.top1,
        "input_size": list(data_config["input_size"]),
        "crop_pct": data_config["crop_pct"],
        "crop_mode": data_config.get("crop_mode"),
        "interpolation": data_config["interpolation"],
        "mean": list(data_config["mean"]),
        "std": list(data_config["std"]),
        "device": str(info.device),
    }


def add_validate_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "validate", help="evaluate a published checkpoint with its own eval transform, beside the paper's top-1"
    )
    parser.add_argument("name", help="a pretrained tag (vz_model.tag) or a model (its default tag)")
    parser.add_argument("--data", required=True, help="ImageNet-style folder: DIR/val/<class>/... or DIR/<class>/...")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--amp", default="auto", choices=("auto", "bf16", "fp16", "none"))
    parser.add_argument("--device", help="default: cuda when available, else cpu")
    parser.add_argument("--output", help="JSON results file (default: validate_<tag>_<time>.json here)")
    return parser


def run_validate(args: argparse.Namespace) -> int:
    source = weight_source(args.name)
    output = Path(args.output or f"validate_{source.name}_{time.strftime('%Y%m%d-%H%M%S')}.json")
    check_writable(output)
    results = validate(args.name, args.data, args.batch_size, args.workers, args.device, args.amp)
    if results["skipped"]:
        print(f"warning: {results['skipped']} unreadable images were skipped", file=sys.stderr)
    print(
        f"{results['model']} on {results['images']} images of {results['data']}: top-1 {results['top1']:.3f}  "
        f"top-5 {results['top5']:.3f}  (paper top-1 {results['paper_top1']}, diff {results['top1_vs_paper']:+.3f})  "
        f"{results['img_per_s']:.1f} img/s (data loading included)\n"
        f"  transform: {results['input_size'][1]}x{results['input_size'][2]} crop_pct {results['crop_pct']} "
        f"({results['crop_mode']}), {results['interpolation']}, mean {results['mean']} std {results['std']}"
    )
    output.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {output}")
    return 0
