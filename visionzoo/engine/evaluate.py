"""Top-1 / top-5 / loss over a data set, and ``visionzoo eval NAME --checkpoint PATH --data-dir DIR``."""
from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from pathlib import Path

import timm
import torch
from timm.data import resolve_data_config
from torch import nn

from visionzoo.data.loader import create_eval_loader, create_folder_dataset, eval_transform
from visionzoo.engine.distributed import DistInfo, all_reduce_sum, init_distributed, shutdown
from visionzoo.models import check_model_name, create_model, list_models, load_checkpoint, load_state_dict
from visionzoo.models._checkpoint import read_checkpoint, state_dict_from


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
    model: nn.Module, loader, info: DistInfo, amp: str = "auto", channels_last: bool = False,
    votes: torch.Tensor | None = None,
) -> dict[str, float]:
    """Exact top-1/top-5 (%), mean per-class accuracy ``macc`` (%, classes present in the data) and mean
    cross-entropy over every sample of ``loader`` summed across ranks.

    ``unreadable`` counts the images whose pixels failed to decode here (dropped, not scored); the images the
    data set's scan left out are in its ``skipped``. ``votes`` (V, 3) averages the softmax of V passes over point
    clouds whose xyz are scaled per axis by each row (see ``visionzoo.data.points.vote_scales``).
    """
    was_training = model.training
    model.eval()
    # correct@1, correct@5, loss sum, images, unreadable
    totals = torch.zeros(5, dtype=torch.float64, device=info.device)
    per_class = None  # (2, classes): correct, seen
    loss_fn = nn.CrossEntropyLoss(reduction="sum")
    start = time.perf_counter()
    for images, targets, unreadable in loader:
        totals[4] += unreadable
        if not len(targets):
            continue
        images = images.to(info.device, non_blocking=True)
        targets = targets.to(info.device, non_blocking=True)
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        with autocast_for(info.device, amp):
            if votes is None:
                logits = model(images)
            else:
                logits = _voted_logits(model, images, votes.to(info.device))
        logits = logits.float()
        top = logits.topk(min(5, logits.shape[1]), dim=1).indices
        hits = top.eq(targets[:, None])
        totals[:4] += torch.stack(
            [hits[:, :1].sum(), hits.sum(), loss_fn(logits, targets), torch.tensor(len(targets), device=info.device)]
        ).double()
        if per_class is None:
            per_class = torch.zeros(2, logits.shape[1], dtype=torch.float64, device=info.device)
        per_class[0].index_add_(0, targets, hits[:, 0].double())
        per_class[1].index_add_(0, targets, torch.ones_like(targets, dtype=torch.float64))
    all_reduce_sum(totals, info)
    seconds = time.perf_counter() - start
    model.train(was_training)
    correct1, correct5, loss_sum, count, unreadable = totals.tolist()
    if count == 0:
        raise ValueError("the evaluation set holds no readable image")
    all_reduce_sum(per_class, info)
    seen = per_class[1] > 0
    return {
        "top1": 100.0 * correct1 / count,
        "top5": 100.0 * correct5 / count,
        "macc": 100.0 * (per_class[0][seen] / per_class[1][seen]).mean().item(),
        "loss": loss_sum / count,
        "images": int(count),
        "unreadable": int(unreadable),
        "img_per_s": count / seconds,
    }


def _voted_logits(model: nn.Module, points: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """log of the mean softmax over one pass per row of ``scales`` (per-axis xyz scales, row 0 usually ones)."""
    probabilities = 0
    for scale in scales:
        scaled = points.clone()
        scaled[..., :3] = scaled[..., :3] * scale
        probabilities = probabilities + model(scaled).float().softmax(-1)
    return (probabilities / len(scales)).log()


def resolve_eval_data_config(model: nn.Module, input_size=None, crop_pct=None, interpolation=None, mean=None, std=None):
    """The model's pretrained_cfg (crop, interpolation, mean/std) with any given value taking its place."""
    config = resolve_data_config(model=model)
    if input_size is not None:
        config["input_size"] = (3, input_size, input_size)
    for key, value in (("crop_pct", crop_pct), ("interpolation", interpolation), ("mean", mean), ("std", std)):
        if value is not None:
            config[key] = tuple(value) if isinstance(value, (list, tuple)) else value
    return config


def read_weights(path: Path, ema: bool) -> tuple[dict, dict | None]:
    """The state dict (EMA weights when ``ema``) and, for a visionzoo training checkpoint, its config; one read."""
    if path.suffix == ".safetensors":
        return load_state_dict(path, require_ema=ema), None
    obj = read_checkpoint(path)
    config = obj.get("config") if isinstance(obj, dict) and isinstance(obj.get("config"), dict) else None
    return state_dict_from(obj, path, require_ema=ema), config


def default_output(checkpoint: Path, model: str, split: str, ema: bool) -> Path:
    """A result file of its own beside the checkpoint, e.g. ``eval_best_val_ema_20260101-120000.json``."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    stem = f"eval_{model}_{checkpoint.stem}_{split}{'_ema' if ema else ''}_{stamp}"
    output, count = checkpoint.parent / f"{stem}.json", 1
    while output.exists():
        count += 1
        output = checkpoint.parent / f"{stem}_{count}.json"
    return output


def check_writable(output: Path) -> None:
    """Refuses a results path that cannot be written before any work is done (by creating and removing it)."""
    existed = output.exists()
    try:
        with output.open("a"):
            pass
    except OSError as error:
        raise ValueError(
            f"cannot write the results file {output}: {error.strerror or error}; pass --output with a writable path"
        ) from None
    if not existed:
        output.unlink()


def add_eval_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("eval", help="top-1/top-5/loss of a model on an ImageNet-style folder")
    parser.add_argument("model", help="registered model name, e.g. vz_shvit_s1")
    parser.add_argument(
        "--checkpoint", required=True, help="weights: a training checkpoint, a state dict or safetensors"
    )
    parser.add_argument("--data-dir", required=True, help="folder holding the split folder (a sub-folder per class)")
    parser.add_argument("--split", default="val")
    parser.add_argument(
        "--ema", action="store_true", help="evaluate the EMA weights of a training checkpoint (an error without them)"
    )
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
    parser.add_argument("--data-format", default="folder",
                        choices=("folder", "modelnet40_h5", "scanobjectnn_h5", "shapenetpart_h5"),
                        help="point clouds: the HDF5 layout of --data-dir (see visionzoo/data/points.py)")
    parser.add_argument("--num-points", type=int, help="point clouds: points per cloud (default: the model's)")
    parser.add_argument("--scanobjectnn-variant", default="PB_T50_RS", choices=("PB_T50_RS", "OBJ_BG", "OBJ_ONLY"))
    parser.add_argument("--votes", type=int, default=1,
                        help="point clouds: also report the vote of this many passes (pass 1 unscaled, then per-axis "
                        "scales U[0.85, 1.15], seed 0); the single pass is reported first")
    parser.add_argument(
        "--output",
        help="JSON results file (default: a new eval_<model>_<checkpoint>_<split>[_ema]_<time>.json beside the "
        "checkpoint)",
    )
    return parser


def run_eval(args: argparse.Namespace) -> int:
    if not timm.is_model(args.model):
        check_model_name(args.model)  # raises, suggesting the closest zoo names
    checkpoint = Path(args.checkpoint)
    if not checkpoint.is_file():
        raise ValueError(f"checkpoint {checkpoint} does not exist")
    info = init_distributed(args.device)
    output = Path(args.output) if args.output else default_output(checkpoint, args.model, args.split, args.ema)
    if info.is_main:
        check_writable(output)
    state_dict, training_config = read_weights(checkpoint, args.ema)
    if args.data_format != "folder":
        return _run_point_eval(args, checkpoint, output, info, state_dict, training_config)
    dataset = create_folder_dataset(args.data_dir, args.split, None, substitute=False)
    num_classes = args.num_classes or (training_config or {}).get("model", {}).get("num_classes")
    num_classes = num_classes or len(dataset.class_to_idx)
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
    dataset.transform = eval_transform(data_config)
    if info.is_main:
        if dataset.notice():
            print(f"warning: {dataset.notice()}", file=sys.stderr, flush=True)
        chosen_by = (training_config or {}).get("train", {}).get("best_metric")
        if chosen_by == "ema_top1" and not args.ema and checkpoint.name == "best.pth":
            print(f"note: {checkpoint} was chosen by its EMA weights' accuracy (ema_top1); --ema evaluates those",
                  file=sys.stderr, flush=True)
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
        "skipped": len(dataset.skipped) + metrics["unreadable"],
        "params": sum(p.numel() for p in model.parameters()),
        "input_size": list(data_config["input_size"]),
        "crop_pct": data_config["crop_pct"],
        "interpolation": data_config["interpolation"],
        "mean": list(data_config["mean"]),
        "std": list(data_config["std"]),
        "device": str(info.device),
    }
    if info.is_main:
        skipped = f" ({results['skipped']} unreadable images skipped)" if results["skipped"] else ""
        print(
            f"{args.model} on {results['images']} {args.split} images{skipped}: top-1 {metrics['top1']:.3f}  "
            f"top-5 {metrics['top5']:.3f}  loss {metrics['loss']:.4f}  params {results['params']:,}  "
            f"{metrics['img_per_s']:.1f} img/s (data loading included)", flush=True
        )
        try:
            output.write_text(json.dumps(results, indent=2) + "\n")
        except OSError as error:
            raise ValueError(f"could not write {output} ({error.strerror or error}); the results are printed above")
        print(f"wrote {output}")
    shutdown(info)
    return 0


def _run_point_eval(args, checkpoint: Path, output: Path, info, state_dict: dict, training_config: dict | None) -> int:
    """``visionzoo eval`` on a point-cloud HDF5 split: OA (top-1) and mAcc, single pass first, then the vote; for
    ShapeNetPart, instance and class mIoU (no vote: the sheet defines voting for classification only)."""
    from visionzoo.data.points import point_count, point_dataset, vote_scales

    cfg = {"data": {"num_points": args.num_points, "format": args.data_format}, "model": {"name": args.model}}
    num_points = point_count(cfg)
    dataset = point_dataset(args.data_format, args.data_dir, args.split, num_points,
                            variant=args.scanobjectnn_variant)
    num_classes = args.num_classes or (training_config or {}).get("model", {}).get("num_classes") or len(dataset.classes)
    model = create_model(args.model, checkpoint_path=state_dict, num_classes=num_classes).to(info.device)
    loader = create_eval_loader(dataset, args.batch_size, info.rank, info.world_size, args.workers, False)
    results = {"model": args.model, "checkpoint": str(checkpoint), "ema": args.ema, "split": args.split,
               "data_format": args.data_format, "num_points": num_points}
    if args.data_format == "shapenetpart_h5":
        if args.votes > 1:
            raise ValueError("--votes applies to classification; part segmentation is evaluated in a single pass")
        results["single_pass"] = metrics = evaluate_parts(model, loader, info, amp=args.amp)
        if info.is_main:
            print(f"{args.model} on {metrics['images']} {args.split} shapes: instance mIoU "
                  f"{metrics['instance_miou']:.3f}  class mIoU {metrics['class_miou']:.3f}  point accuracy "
                  f"{metrics['top1']:.3f}  loss {metrics['loss']:.4f}", flush=True)
            output.write_text(json.dumps(results, indent=2) + "\n")
            print(f"wrote {output}")
        shutdown(info)
        return 0
    results["single_pass"] = evaluate(model, loader, info, amp=args.amp)
    if args.votes > 1:
        results["vote"] = {"votes": args.votes, **evaluate(model, loader, info, amp=args.amp,
                                                             votes=vote_scales(args.votes))}
    if info.is_main:
        for name in ("single_pass", "vote"):
            if name in results:
                metrics = results[name]
                print(f"{args.model} on {metrics['images']} {args.split} clouds ({name.replace('_', ' ')}): "
                      f"OA {metrics['top1']:.3f}  mAcc {metrics['macc']:.3f}  loss {metrics['loss']:.4f}", flush=True)
        output.write_text(json.dumps(results, indent=2) + "\n")
        print(f"wrote {output}")
    shutdown(info)
    return 0


def _shape_ious(logits: torch.Tensor, categories: torch.Tensor, parts: torch.Tensor,
                part_ranges: list[range]) -> torch.Tensor:
    """Each shape's mean IoU over its category's parts (B,), the argmax restricted to those parts."""
    ious = []
    for shape_logits, category, labels in zip(logits, categories.tolist(), parts):
        allowed = part_ranges[category]
        predicted = shape_logits[:, allowed.start:allowed.stop].argmax(-1) + allowed.start
        per_part = []
        for part in allowed:
            truth, guess = labels == part, predicted == part
            union = (truth | guess).sum().item()
            per_part.append(1.0 if union == 0 else (truth & guess).sum().item() / union)
        ious.append(sum(per_part) / len(per_part))
    return torch.tensor(ious, dtype=torch.float64)


def part_segmentation_miou(
    logits: torch.Tensor, categories: torch.Tensor, parts: torch.Tensor, part_ranges: list[range]
) -> dict[str, float]:
    """ShapeNetPart's instance and class mIoU (%) of per-point ``logits`` (B, N, parts) against ``parts`` (B, N).

    The argmax is restricted to the parts of each shape's category (PointNet++'s convention); a shape's IoU is the
    mean over its category's parts, a part absent from both prediction and label scoring 1. Instance mIoU averages
    shapes, class mIoU averages the categories' mean shape IoU (categories present only)."""
    sums = torch.zeros(2, len(part_ranges), dtype=torch.float64)
    sums[0].index_add_(0, categories.long().cpu(), _shape_ious(logits, categories, parts, part_ranges))
    sums[1].index_add_(0, categories.long().cpu(), torch.ones(len(categories), dtype=torch.float64))
    return _miou_from_sums(sums)


def _miou_from_sums(sums: torch.Tensor) -> dict[str, float]:
    """Instance and class mIoU (%) from per-category sums of shape IoUs (row 0) and shape counts (row 1)."""
    seen = sums[1] > 0
    return {"instance_miou": 100.0 * (sums[0].sum() / sums[1].sum()).item(),
            "class_miou": 100.0 * (sums[0][seen] / sums[1][seen]).mean().item()}


@torch.no_grad()
def evaluate_parts(model: nn.Module, loader, info: DistInfo, amp: str = "auto") -> dict[str, float]:
    """Part segmentation over every shape of ``loader`` (batches ``((points, categories), parts, unreadable)``),
    summed across ranks: instance and class mIoU (%), per-point accuracy ``top1`` (%) and mean per-point
    cross-entropy ``loss``."""
    from visionzoo.data.points import shapenetpart_part_ranges

    ranges = shapenetpart_part_ranges()
    was_training = model.training
    model.eval()
    iou_sums = torch.zeros(2, len(ranges), dtype=torch.float64)
    totals = torch.zeros(4, dtype=torch.float64, device=info.device)  # correct points, loss sum, points, shapes
    start = time.perf_counter()
    for (points, categories), parts, _ in loader:
        points, categories = points.to(info.device), categories.to(info.device)
        parts = parts.to(info.device)
        with autocast_for(info.device, amp):
            logits = model(points, categories)
        logits = logits.float()
        totals += torch.stack([
            logits.argmax(-1).eq(parts).sum(),
            nn.functional.cross_entropy(logits.flatten(0, 1), parts.flatten(), reduction="sum"),
            torch.tensor(parts.numel(), device=info.device), torch.tensor(len(parts), device=info.device),
        ]).double()
        iou_sums[0].index_add_(0, categories.cpu(), _shape_ious(logits.cpu(), categories, parts.cpu(), ranges))
        iou_sums[1].index_add_(0, categories.cpu(), torch.ones(len(categories), dtype=torch.float64))
    all_reduce_sum(totals, info)
    iou_sums = all_reduce_sum(iou_sums.to(info.device), info).cpu()
    model.train(was_training)
    correct, loss_sum, count, shapes = totals.tolist()
    if shapes == 0:
        raise ValueError("the evaluation set holds no shape")
    return {**_miou_from_sums(iou_sums), "top1": 100.0 * correct / count, "loss": loss_sum / count,
            "images": int(shapes), "img_per_s": shapes / (time.perf_counter() - start)}
