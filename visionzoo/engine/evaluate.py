"""Top-1 / top-5 / loss over a data set, and ``visionzoo eval NAME --checkpoint PATH --data-dir DIR``."""
from __future__ import annotations

import argparse
import contextlib
import json
import time
from pathlib import Path

import timm
import torch
from timm.data import resolve_data_config
from torch import nn

from visionzoo.data.loader import create_eval_loader, create_folder_dataset, eval_transform
from visionzoo.engine.distributed import DistInfo, all_reduce_sum, init_distributed, shutdown
from visionzoo.models import check_model_name, create_model, list_models, load_checkpoint, load_state_dict


def autocast_for(device: torch.device, amp: str) -> contextlib.AbstractContextManager:
    """Autocast for ``amp`` in bf16/fp16/none/auto (auto: bf16 or fp16 on CUDA, full precision on the CPU)."""
    if amp == "auto":
        if device.type != "cuda":
            return contextlib.nullcontext()
        amp = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if amp == "none":
        return contextlib.nullcontext()
    if amp == "fp16" and device.type != "cuda":
        raise ValueError("fp16 autocast needs CUDA; use amp=bf16 on the CPU")
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16 if amp == "bf16" else torch.float16)


@torch.no_grad()
def evaluate(
    model: nn.Module, loader, info: DistInfo, amp: str = "auto", channels_last: bool = False
) -> dict[str, float]:
    """Exact top-1/top-5 (%) and mean cross-entropy over every image of ``loader`` summed across ranks."""
    was_training = model.training
    model.eval()
    totals = torch.zeros(4, dtype=torch.float64, device=info.device)  # correct@1, correct@5, loss sum, images
    loss_fn = nn.CrossEntropyLoss(reduction="sum")
    start = time.perf_counter()
    for images, targets in loader:
        images = images.to(info.device, non_blocking=True)
        targets = targets.to(info.device, non_blocking=True)
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        with autocast_for(info.device, amp):
            logits = model(images)
        logits = logits.float()
        top = logits.topk(min(5, logits.shape[1]), dim=1).indices
        hits = top.eq(targets[:, None])
        totals += torch.stack(
            [hits[:, :1].sum(), hits.sum(), loss_fn(logits, targets), torch.tensor(len(targets), device=info.device)]
        ).double()
    all_reduce_sum(totals, info)
    seconds = time.perf_counter() - start
    model.train(was_training)
    correct1, correct5, loss_sum, count = totals.tolist()
    if count == 0:
        raise ValueError("the evaluation set is empty")
    return {
        "top1": 100.0 * correct1 / count,
        "top5": 100.0 * correct5 / count,
        "loss": loss_sum / count,
        "images": int(count),
        "img_per_s": count / seconds,
    }


def resolve_eval_data_config(model: nn.Module, input_size=None, crop_pct=None, interpolation=None, mean=None, std=None):
    """The model's pretrained_cfg (crop, interpolation, mean/std) with any given value taking its place."""
    config = resolve_data_config(model=model)
    if input_size is not None:
        config["input_size"] = (3, input_size, input_size)
    for key, value in (("crop_pct", crop_pct), ("interpolation", interpolation), ("mean", mean), ("std", std)):
        if value is not None:
            config[key] = tuple(value) if isinstance(value, (list, tuple)) else value
    return config


def _checkpoint_num_classes(path: Path) -> int | None:
    """The class count a visionzoo training checkpoint was trained with, if the file records it."""
    if path.suffix == ".safetensors":
        return None
    obj = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(obj, dict) and isinstance(obj.get("config"), dict):
        return obj["config"]["model"]["num_classes"]
    return None


def add_eval_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("eval", help="top-1/top-5/loss of a model on an ImageNet-style folder")
    parser.add_argument("model", help="registered model name, e.g. vz_shvit_s1")
    parser.add_argument(
        "--checkpoint", required=True, help="weights: a training checkpoint, a state dict or safetensors"
    )
    parser.add_argument("--data-dir", required=True, help="folder holding the split folder (a sub-folder per class)")
    parser.add_argument("--split", default="val")
    parser.add_argument("--ema", action="store_true", help="evaluate the EMA weights of a training checkpoint")
    parser.add_argument("--num-classes", type=int, help="default: from the checkpoint's config, else the class folders")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--input-size", type=int, help="square eval size (default: the model's)")
    parser.add_argument("--crop-pct", type=float)
    parser.add_argument("--interpolation", choices=("bilinear", "bicubic", "nearest"))
    parser.add_argument("--mean", type=float, nargs=3)
    parser.add_argument("--std", type=float, nargs=3)
    parser.add_argument("--amp", default="auto", choices=("auto", "bf16", "fp16", "none"))
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--device", help="default: cuda when available, else cpu")
    parser.add_argument("--output", help="JSON results file (default: eval_<model>_<split>.json beside the checkpoint)")
    return parser


def run_eval(args: argparse.Namespace) -> int:
    if not timm.is_model(args.model):
        check_model_name(args.model)  # raises, suggesting the closest zoo names
    info = init_distributed(args.device)
    checkpoint = Path(args.checkpoint)
    if not checkpoint.is_file():
        raise ValueError(f"checkpoint {checkpoint} does not exist")
    split_dir = Path(args.data_dir) / args.split
    num_classes = args.num_classes or _checkpoint_num_classes(checkpoint)
    if num_classes is None:
        num_classes = sum(1 for child in split_dir.iterdir() if child.is_dir()) if split_dir.is_dir() else 1000
    state_dict = load_state_dict(checkpoint, prefer_ema=args.ema)
    if args.model in list_models():
        model = create_model(args.model, checkpoint_path=state_dict, num_classes=num_classes)
    else:
        model = load_checkpoint(timm.create_model(args.model, num_classes=num_classes), state_dict)
    model.to(info.device)
    if args.channels_last:
        model.to(memory_format=torch.channels_last)
    data_config = resolve_eval_data_config(
        model, args.input_size, args.crop_pct, args.interpolation, args.mean, args.std
    )
    dataset = create_folder_dataset(args.data_dir, args.split, eval_transform(data_config))
    loader = create_eval_loader(
        dataset, args.batch_size, info.rank, info.world_size, args.workers, info.device.type == "cuda"
    )
    metrics = evaluate(model, loader, info, amp=args.amp, channels_last=args.channels_last)
    results = {
        "model": args.model,
        "checkpoint": str(checkpoint),
        "ema": args.ema,
        "split": args.split,
        **metrics,
        "params": sum(p.numel() for p in model.parameters()),
        "input_size": list(data_config["input_size"]),
        "crop_pct": data_config["crop_pct"],
        "interpolation": data_config["interpolation"],
        "mean": list(data_config["mean"]),
        "std": list(data_config["std"]),
        "device": str(info.device),
    }
    if info.is_main:
        output = Path(args.output) if args.output else checkpoint.parent / f"eval_{args.model}_{args.split}.json"
        output.write_text(json.dumps(results, indent=2) + "\n")
        print(
            f"{args.model} on {results['images']} {args.split} images: top-1 {metrics['top1']:.3f}  "
            f"top-5 {metrics['top5']:.3f}  loss {metrics['loss']:.4f}  params {results['params']:,}  "
            f"{metrics['img_per_s']:.1f} img/s (data loading included)\nwrote {output}"
        )
    shutdown(info)
    return 0
