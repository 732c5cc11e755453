"""``visionzoo train RECIPE [section.key=value ...]``: ImageNet-style training with the papers' recipes.

timm provides the pieces (transforms, RandAugment, mixup/cutmix, optimizers, schedulers, EMA, gradient
clipping); this module wires them into one loop with gradient accumulation towards the recipe's global batch,
DistributedDataParallel under torchrun, AMP, and checkpoints from which a killed run resumes bit-exactly.
"""
from __future__ import annotations

import argparse
import contextlib
import math
import os
import random
import re
import sys
import time
from pathlib import Path

import numpy as np
import timm
import torch
from timm.data import Mixup
from timm.loss import BinaryCrossEntropy, LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
from timm.optim import create_optimizer_v2
from timm.scheduler import create_scheduler_v2
from timm.models import model_parameters
from timm.utils import ModelEmaV3, dispatch_clip_grad
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from visionzoo.data.loader import (
    DatasetError,
    create_eval_loader,
    create_folder_dataset,
    create_train_loader,
    eval_transform,
    train_transform,
)
from visionzoo.data.points import point_count, point_splits
from visionzoo.engine.checkpoint import (
    OutputLock,
    atomic_save,
    load_training_checkpoint,
    remove_stale_temporaries,
    rng_state,
    set_rng_state,
)
from visionzoo.engine.config import DEFAULTS, ConfigError, derive, load_config, save_config
from visionzoo.engine.cpu_bf16 import conv_guard
from visionzoo.engine.distill import DistillationStudent, build_distillation
from visionzoo.engine.distributed import (
    DistInfo,
    all_gather_objects,
    all_reduce_sum,
    barrier,
    init_distributed,
    shutdown,
)
from visionzoo.engine.evaluate import autocast_for, evaluate, evaluate_parts, resolve_eval_data_config
from visionzoo.engine.logging import WandbRun, write_summary
from visionzoo.models import CheckpointError, check_model_name, create_model, list_models
from visionzoo.models._checkpoint import read_checkpoint

LAST = "last.pth"
BEST = "best.pth"
SUMMARY = "summary.csv"

# A resumed run continues the optimizer state and step count of the checkpoint; these settings would make
# that state meaningless (another architecture or head, optimizer, parameter grouping, step size per epoch,
# or best-checkpoint criterion), so a resume refuses to change them. Every other change is applied.
FIXED_ON_RESUME = (
    ("model", "name"), ("model", "num_classes"), ("model", "kwargs"), ("optim", "name"), ("optim", "lr_multipliers"),
    ("train", "global_batch_size"), ("train", "best_metric"),
)
# Where the run lives and which weights it started from say nothing about how it continues.
IGNORED_ON_RESUME = (("train", "output"), ("model", "checkpoint"))


class DivergenceError(ValueError):
    """The loss or the weights stopped being finite; nothing from that point on was saved."""


def warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr, flush=True)


def config_changes(saved: dict, current: dict) -> dict[str, tuple]:
    """``{"section.key": (saved value, current value)}`` for every setting that differs."""
    changes = {}
    for section, keys in DEFAULTS.items():
        for key in keys:
            if (section, key) in IGNORED_ON_RESUME:
                continue
            before, after = saved.get(section, {}).get(key), current[section][key]
            if before != after:
                changes[f"{section}.{key}"] = (before, after)
    return changes


def check_resume_changes(changes: dict[str, tuple], path: Path) -> None:
    fixed = [f"{key}: {before!r} -> {after!r}" for key, (before, after) in changes.items()
             if tuple(key.split(".", 1)) in FIXED_ON_RESUME]
    if fixed:
        raise ConfigError(
            f"cannot resume {path} with {'; '.join(fixed)}: a resumed run keeps the checkpoint's model, optimizer "
            f"and batch. Resume with the settings it was trained with (see config.yaml beside it), or start a new "
            f"run in another --output (model.checkpoint={path} starts from its weights)"
        )


def infer_num_classes(cfg: dict, class_names: list[str], split_root: Path, report: bool) -> None:
    """Sets ``model.num_classes`` from the folder when the recipe leaves ImageNet's default; refuses a mismatch."""
    configured, found = cfg["model"]["num_classes"], len(class_names)
    if configured == found:
        return
    if configured == DEFAULTS["model"]["num_classes"]:
        cfg["model"]["num_classes"] = found
        if report:
            print(f"model.num_classes: {found}, the class folders of {split_root} (the recipe's {configured} is "
                  f"ImageNet's)", flush=True)
        return
    raise ConfigError(
        f"model.num_classes={configured} but {split_root} holds {found} class folders; set model.num_classes="
        f"{found} (or leave the recipe's default to take the folder count)"
    )


def check_same_classes(train_set, val_set) -> None:
    train_names, val_names = set(train_set.class_to_idx), set(val_set.class_to_idx)
    if train_names == val_names:
        return
    parts = []
    for split_set, names, others in ((train_set, train_names, val_names), (val_set, val_names, train_names)):
        only = sorted(names - others)
        if only:
            shown = ", ".join(only[:10]) + (f", ... ({len(only) - 10} more)" if len(only) > 10 else "")
            parts.append(f"only {split_set.root} has images of {shown}")
    raise DatasetError(
        f"the train and val splits hold different classes ({'; '.join(parts)}), so a class index would mean "
        f"different things in each; give both splits a non-empty folder for every class"
    )


def weights_finite(*modules: nn.Module) -> bool:
    return all(
        bool(torch.isfinite(tensor).all())
        for module in modules for tensor in module.state_dict().values() if tensor.is_floating_point()
    )


def ema_start_share(cfg: dict, total_steps: int) -> float:
    """How much of the EMA at the end of the run is still the weights of its first step (0 = none)."""
    ema = cfg["ema"]
    return 0.0 if ema["warmup"] else ema["decay"] ** max(total_steps - 1, 0)


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's global generators (for the rest of the process, as any seeding is)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@contextlib.contextmanager
def deterministic_algorithms(enabled: bool = True):
    """Inside the block, torch's deterministic algorithms (and cuBLAS's deterministic workspace, cuDNN autotuning
    off) when ``enabled``; on leaving it, also on an error, every one of those settings is as before. A training
    run uses it around itself, so that ``train.deterministic=true`` does not outlive the run in the process that
    called it (a notebook, a test session)."""
    saved = (
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
        torch.backends.cudnn.benchmark,
        os.environ.get("CUBLAS_WORKSPACE_CONFIG"),
    )
    if enabled:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False
    try:
        yield
    finally:
        was_enabled, warn_only, benchmark, workspace = saved
        torch.use_deterministic_algorithms(was_enabled, warn_only=warn_only)
        torch.backends.cudnn.benchmark = benchmark
        if workspace is None:
            os.environ.pop("CUBLAS_WORKSPACE_CONFIG", None)
        else:
            os.environ["CUBLAS_WORKSPACE_CONFIG"] = workspace


def build_model(cfg: dict) -> nn.Module:
    spec = cfg["model"]
    if not timm.is_model(spec["name"]):
        check_model_name(spec["name"])  # raises, suggesting the closest zoo names
    kwargs = dict(
        num_classes=spec["num_classes"], drop_rate=spec["drop_rate"], drop_path_rate=spec["drop_path_rate"],
        **spec["kwargs"],
    )
    if spec["name"] in list_models() or spec["checkpoint"]:
        return create_model(spec["name"], checkpoint_path=spec["checkpoint"], **kwargs)
    return timm.create_model(spec["name"], **kwargs)


def freeze_parameters(model: nn.Module, pattern: str | None) -> None:
    """Stop training the parameters whose names match ``pattern`` (a regex searched in each name)."""
    if not pattern:
        return
    matched = [name for name, param in model.named_parameters() if re.search(pattern, name)]
    if not matched:
        raise ConfigError(f"model.frozen={pattern!r} matches no parameter of {type(model).__name__}")
    if len(matched) == len(list(model.parameters())):
        raise ConfigError(f"model.frozen={pattern!r} matches every parameter: nothing would train")
    for name, param in model.named_parameters():
        if name in matched:
            param.requires_grad_(False)


def param_groups_with_lr_multipliers(model: nn.Module, weight_decay: float, multipliers: dict[str, float]) -> list:
    """Weight-decay groups (none on 1-D tensors, biases and ``no_weight_decay()``) split by lr factor.

    A parameter whose name contains a key of ``multipliers`` trains at that fraction of the scheduled lr
    (timm's schedulers honour a group's ``lr_scale``), e.g. LITv2's deformable offsets at 0.01.
    """
    skip = set(getattr(model, "no_weight_decay", lambda: ())())
    groups: dict[tuple[float, float], list] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        decay = 0.0 if param.ndim <= 1 or name.endswith(".bias") or name in skip else weight_decay
        scale = next((factor for key, factor in multipliers.items() if key in name), 1.0)
        groups.setdefault((decay, scale), []).append(param)
    return [{"params": params, "weight_decay": decay, "lr_scale": scale} for (decay, scale), params in groups.items()]


def build_optimizer(cfg: dict, model: nn.Module, lr: float) -> torch.optim.Optimizer:
    optim = cfg["optim"]
    extra = {key: optim[key] for key in ("eps", "betas") if optim[key] is not None}
    if optim["name"] in ("sgd", "momentum", "nesterov"):
        extra["momentum"] = optim["momentum"]
    group_fn = None
    if optim["lr_multipliers"]:
        def group_fn(module):
            return param_groups_with_lr_multipliers(module, optim["weight_decay"], optim["lr_multipliers"])
    return create_optimizer_v2(
        model, opt=optim["name"], lr=lr, weight_decay=optim["weight_decay"], param_group_fn=group_fn, **extra
    )


def build_losses(cfg: dict, num_classes: int) -> tuple[Mixup | None, nn.Module]:
    aug, loss = cfg["aug"], cfg["loss"]
    mixup = None
    if aug["mixup"] > 0 or aug["cutmix"] > 0:
        mixup = Mixup(
            mixup_alpha=aug["mixup"], cutmix_alpha=aug["cutmix"], prob=aug["mixup_prob"],
            switch_prob=aug["mixup_switch_prob"], mode=aug["mixup_mode"],
            label_smoothing=aug["label_smoothing"], num_classes=num_classes,
        )
    if loss["name"] == "ce_others":
        return None, OtherClassSmoothingCrossEntropy(aug["label_smoothing"])
    if loss["name"] == "bce":
        # Mixup already smoothed the targets it produced; without mixup the loss applies the smoothing.
        smoothing = 0.0 if mixup is not None else aug["label_smoothing"]
        return mixup, BinaryCrossEntropy(smoothing=smoothing, target_threshold=loss["bce_target_thresh"])
    if mixup is not None:
        return mixup, SoftTargetCrossEntropy()
    if aug["label_smoothing"] > 0:
        return None, LabelSmoothingCrossEntropy(smoothing=aug["label_smoothing"])
    return None, nn.CrossEntropyLoss()


class OtherClassSmoothingCrossEntropy(nn.Module):
    """Cross-entropy against a target of 1 − ε on the true class and ε/(C − 1) on each other class (PointMLP's
    smoothing; timm's gives ε/C to every class, the true one included)."""

    def __init__(self, smoothing: float):
        super().__init__()
        self.smoothing = smoothing

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        classes = logits.shape[-1]
        soft = torch.full_like(logits, self.smoothing / (classes - 1)).scatter_(-1, target[:, None], 1 - self.smoothing)
        return -(soft * logits.log_softmax(-1)).sum(-1).mean()


def train_data_config(cfg: dict, model: nn.Module) -> dict:
    data = cfg["data"]
    return resolve_eval_data_config(
        model, data["input_size"], data["crop_pct"], data["interpolation"], data["mean"], data["std"]
    )


class Trainer:
    """One training run: state that a checkpoint captures, plus the loop over it."""

    def __init__(self, cfg: dict, output_dir: Path, info: DistInfo, resume: Path | None, use_wandb: bool):
        self.cfg, self.output_dir, self.info = cfg, output_dir, info
        self.derived = derive(cfg, info.world_size)
        train, runtime = cfg["train"], cfg["runtime"]
        seed_everything(train["seed"] + info.rank)

        data_dir = cfg["data"]["dir"]
        if not data_dir:
            raise ConfigError("data.dir is not set; pass --data-dir DIR (a folder with train/ and val/)")
        points = cfg["data"]["format"] != "folder"
        self.segmentation = cfg["data"]["format"] == "shapenetpart_h5"
        if self.segmentation and cfg["distill"]["teacher"]:
            raise ConfigError("distillation targets image logits; part segmentation trains without distill.teacher")
        if self.segmentation and (cfg["aug"]["mixup"] > 0 or cfg["aug"]["cutmix"] > 0):
            raise ConfigError("mixup/cutmix mix one label per sample; part segmentation has one per point: set "
                              "aug.mixup=0 aug.cutmix=0")
        if cfg["train"]["best_metric"] == "instance_miou" and not self.segmentation:
            raise ConfigError("train.best_metric=instance_miou scores part segmentation (data.format=shapenetpart_h5);"
                              " use top1 here")
        if points:
            train_set, val_set = point_splits(cfg, point_count(cfg))
        else:
            train_set = create_folder_dataset(data_dir, cfg["data"]["train_split"], None)
            val_set = create_folder_dataset(data_dir, cfg["data"]["val_split"], None, substitute=False)
        if info.is_main:
            for notice in filter(None, (train_set.notice(), val_set.notice())):
                warn(notice)
        check_same_classes(train_set, val_set)
        infer_num_classes(cfg, list(train_set.class_to_idx), train_set.root, info.is_main)

        resume_state = load_training_checkpoint(resume) if resume is not None else None
        self.changes: dict[str, tuple] = {}
        if resume_state is not None:
            self.changes = config_changes(resume_state["config"], cfg)
            check_resume_changes(self.changes, resume)
        mixing = cfg["aug"]["mixup"] > 0 or cfg["aug"]["cutmix"] > 0
        if mixing and self.derived["batch_size"] % 2:
            raise ConfigError(
                f"mixup/cutmix pairs the images of a batch, but the per-device batch is {self.derived['batch_size']} "
                f"(odd); choose an even train.batch_size or train.global_batch_size, or set aug.mixup=0 aug.cutmix=0"
            )

        model = build_model(cfg)
        freeze_parameters(model, cfg["model"]["frozen"])
        if runtime["grad_checkpointing"]:
            model.set_grad_checkpointing(True)
        model.to(info.device)
        if runtime["channels_last"]:
            model.to(memory_format=torch.channels_last)
        self.model = model
        if points:
            self.data_config = {"num_points": len(train_set.points[0])}
        else:
            self.data_config = train_data_config(cfg, model)
            train_set.transform = train_transform(cfg, self.data_config)
            val_set.transform = eval_transform(self.data_config)

        pin = info.device.type == "cuda" and cfg["data"]["pin_memory"]
        self.train_loader = create_train_loader(
            train_set, self.derived["batch_size"], train["seed"], info.rank, info.world_size,
            cfg["aug"]["repeated_aug"], cfg["data"]["workers"], pin,
        )
        self.val_loader = create_eval_loader(
            val_set, self.derived["batch_size"], info.rank, info.world_size, cfg["data"]["workers"], pin
        )
        micro_batches = len(self.train_loader.sampler.sampler) // self.derived["batch_size"]
        self.updates_per_epoch = micro_batches // self.derived["accum_steps"]
        if self.updates_per_epoch < 1:
            raise ConfigError(
                f"an epoch holds fewer than the {self.derived['accum_steps']} micro-batches of one optimizer step; "
                f"lower train.global_batch_size"
            )
        if cfg["ema"]["enabled"]:
            self.check_ema_length(train["epochs"] * self.updates_per_epoch)

        self.optimizer = build_optimizer(cfg, model, self.derived["lr"])
        sched = cfg["sched"]
        self.scheduler, _ = create_scheduler_v2(
            self.optimizer, sched=sched["name"], num_epochs=train["epochs"], warmup_epochs=sched["warmup_epochs"],
            warmup_lr=self.derived["warmup_lr"], min_lr=self.derived["min_lr"],
            step_on_epochs=False, updates_per_epoch=self.updates_per_epoch,
        )
        self.scheduler.step_update(0)
        amp = runtime["amp"]
        if amp == "auto" and info.device.type == "cuda":
            amp = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        self.amp = amp
        self.scaler = torch.amp.GradScaler("cuda", enabled=amp == "fp16")
        self.ema = None
        if cfg["ema"]["enabled"]:
            self.ema = ModelEmaV3(model, decay=cfg["ema"]["decay"], use_warmup=cfg["ema"]["warmup"])
        self.mixup, self.train_loss_fn = build_losses(cfg, cfg["model"]["num_classes"])
        self.distill = None
        trained: nn.Module = model
        if cfg["distill"]["teacher"]:
            self.distill = build_distillation(cfg["distill"], model, cfg["model"]["name"], cfg["model"]["num_classes"],
                                              self.train_loss_fn, create_model)
            trained = DistillationStudent(model, self.distill.student_record)

        self.ddp = None
        if info.world_size > 1:
            device_ids = [info.device.index] if info.device.type == "cuda" else None
            self.ddp = DistributedDataParallel(trained, device_ids=device_ids)
        wrapped = trained if self.ddp is None else self.ddp
        self.train_model = torch.compile(wrapped) if runtime["compile"] else wrapped

        self.epoch = 0
        self.step_in_epoch = 0
        self.global_step = 0
        self.loss_sum = torch.zeros((), dtype=torch.float64, device=info.device)
        self.loss_count = 0
        self.best = {"metric": None, "epoch": None}
        self.history: list[dict] = []
        self.resumes: list[dict] = []  # where each resume changed the config, for config.yaml
        self.wandb_id = None
        if resume_state is not None:
            self.load(resume_state, resume)
        self.wandb = None
        if use_wandb and info.is_main:
            self.wandb = WandbRun(cfg, output_dir, self.wandb_id)
            self.wandb_id = self.wandb.run_id

    def check_ema_length(self, total_steps: int) -> None:
        share = ema_start_share(self.cfg, total_steps)
        if share <= 0.1:
            return
        decay = self.cfg["ema"]["decay"]
        advice = ("set ema.warmup=true (the decay ramps up with the step count), a smaller ema.decay, "
                  "or ema.enabled=false")
        message = (f"ema.decay={decay} averages over ~{round(1 / (1 - decay))} optimizer steps but this run makes "
                   f"{total_steps}: the EMA weights would end {share:.0%} made of the first step's weights")
        if self.cfg["train"]["best_metric"] == "ema_top1" and share > 0.5:
            raise ConfigError(f"{message}, and best.pth is chosen by their accuracy (train.best_metric=ema_top1); "
                              f"{advice}, or train.best_metric=top1")
        if self.info.is_main:
            warn(f"{message}; {advice}")

    # --- checkpoints -------------------------------------------------------------------------------------
    def state(self) -> dict | None:
        """The checkpoint (on rank 0; None elsewhere). Every rank must call it: it gathers per-rank RNG/loss."""
        per_rank = all_gather_objects({"rng": rng_state(), "loss": [self.loss_sum.item(), self.loss_count]}, self.info)
        if not self.info.is_main:
            return None
        state = {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "epoch": self.epoch,
            "step_in_epoch": self.step_in_epoch,
            "global_step": self.global_step,
            "per_rank": per_rank,
            "world_size": self.info.world_size,
            "batch_size": self.derived["batch_size"],
            "best": dict(self.best),
            "history": list(self.history),
            "resumes": list(self.resumes),
            "config": self.cfg,
            "wandb_id": self.wandb_id,
        }
        if self.ema is not None:
            state["model_ema"] = self.ema.module.state_dict()
        return state

    def save(self, name: str, state: dict | None = None) -> None:
        state = self.state() if state is None else state
        if state is not None:
            atomic_save(state, self.output_dir / name)

    def load(self, state: dict, path: Path) -> None:
        """Continue from a training checkpoint under the current config (its lr, schedule, decay and the like)."""
        mid_epoch = state["step_in_epoch"] > 0
        same_layout = state["world_size"] == self.info.world_size and state["batch_size"] == self.derived["batch_size"]
        if mid_epoch and not same_layout:
            raise ConfigError(
                f"{path} was saved mid-epoch by {state['world_size']} process(es) with batch {state['batch_size']}; "
                f"resume it with the same process count and train.batch_size, or from an end-of-epoch checkpoint"
            )
        try:
            self.model.load_state_dict(state["model"])
        except RuntimeError as error:
            raise CheckpointError(f"the weights in {path} do not fit {self.cfg['model']['name']}: "
                                  f"{str(error).splitlines()[0]}") from None
        # The optimizer keeps its moments from the checkpoint and takes its hyper-parameters from the config; the
        # scheduler is a function of the config and the step count, so a changed lr or schedule applies from here.
        configured = [{key: value for key, value in group.items() if key != "params"}
                      for group in self.optimizer.param_groups]
        try:
            self.optimizer.load_state_dict(state["optimizer"])
        except ValueError as error:
            raise ConfigError(
                f"the optimizer state in {path} does not fit the optimizer configured now ({error}); a change of "
                f"optim.weight_decay to or from 0 regroups the parameters: resume with the checkpoint's value"
            ) from None
        for group, settings in zip(self.optimizer.param_groups, configured):
            group.update(settings)
        self.scaler.load_state_dict(state["scaler"])
        if self.ema is not None:
            if "model_ema" not in state:
                raise ConfigError(f"{path} has no EMA weights but ema.enabled is true; resume with ema.enabled=false")
            self.ema.module.load_state_dict(state["model_ema"])
        self.epoch, self.step_in_epoch, self.global_step = state["epoch"], state["step_in_epoch"], state["global_step"]
        self.best, self.history, self.wandb_id = state["best"], state["history"], state["wandb_id"]
        self.resumes = list(state.get("resumes", []))
        if self.changes:
            self.resumes.append({
                "epoch": self.epoch, "step_in_epoch": self.step_in_epoch,
                "changes": {key: list(values) for key, values in self.changes.items()},
            })
        if same_layout:
            mine = state["per_rank"][self.info.rank]
            set_rng_state(mine["rng"])
            self.loss_sum.fill_(mine["loss"][0])
            self.loss_count = mine["loss"][1]
        else:
            seed_everything(self.cfg["train"]["seed"] + self.info.rank + self.global_step)
        self.scheduler.step_update(self.global_step)
        if self.info.is_main:
            where = f"epoch {self.epoch}, step {self.step_in_epoch} of {self.updates_per_epoch}"
            print(f"resumed from {path}: {where}", flush=True)
            for key, (before, after) in self.changes.items():
                print(f"  {key}: {before!r} -> {after!r} (applied from here on)", flush=True)
            self.restore_epoch_records(state)

    def restore_epoch_records(self, state: dict) -> None:
        """Redo the epoch-end writes that a kill after ``last.pth`` may have cut short (best.pth, summary.csv)."""
        write_summary(self.history, self.output_dir / SUMMARY)
        best_epoch = self.best["epoch"]
        if best_epoch is None:
            return
        best_path = self.output_dir / BEST
        recorded = None
        if best_path.is_file():
            try:
                recorded = read_checkpoint(best_path).get("best", {}).get("epoch")
            except CheckpointError:
                recorded = None
        if recorded == best_epoch:
            return
        if best_epoch == state["epoch"] and state["step_in_epoch"] == 0:
            # The run stopped between writing last.pth and best.pth at the end of the best epoch: that state is it.
            atomic_save(state, best_path)
            print(f"rewrote {best_path} (epoch {best_epoch}) from the end-of-epoch checkpoint", flush=True)
        else:
            warn(f"{best_path} does not hold the best epoch ({best_epoch}) that the checkpoint records; it will be "
                 f"written again when an epoch beats {self.best['metric']:.3f}")

    def last_good(self) -> str:
        last = self.output_dir / LAST
        return f"{last} still holds the last good state" if last.is_file() else "no checkpoint was written"

    def check_finite(self, what: str, value: float | None = None) -> None:
        modules = [self.model] + ([self.ema.module] if self.ema is not None else [])
        if (value is None or math.isfinite(value)) and weights_finite(*modules):
            return
        found = f"{what} is {value}" if value is not None and not math.isfinite(value) else f"the weights hold nan/inf"
        raise DivergenceError(
            f"training diverged in epoch {self.epoch + 1} (step {self.global_step}): {found}. Stopped without saving "
            f"or marking anything best; {self.last_good()}. Lower optim.lr (now {self.cfg['optim']['lr']}) or set "
            f"optim.clip_grad, then resume with --resume auto or start again"
        )

    # --- the loop ----------------------------------------------------------------------------------------
    def optimizer_step(self) -> None:
        optim = self.cfg["optim"]
        if optim["clip_grad"] is not None:
            self.scaler.unscale_(self.optimizer)
            params = model_parameters(self.model, exclude_head=optim["clip_mode"] == "agc")
            dispatch_clip_grad(params, optim["clip_grad"], mode=optim["clip_mode"])
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.global_step += 1
        self.step_in_epoch += 1
        self.scheduler.step_update(self.global_step)
        if self.ema is not None:
            self.ema.update(self.model, step=self.global_step)

    def train_epoch(self) -> dict:
        info, derived = self.info, self.derived
        accum, batch = derived["accum_steps"], derived["batch_size"]
        self.train_loader.sampler.set_epoch(self.epoch, start=self.step_in_epoch * accum * batch)
        self.train_model.train()
        every = self.cfg["train"]["checkpoint_every_steps"]
        start_step, start_time = self.step_in_epoch, time.perf_counter()
        bar = tqdm(
            total=self.updates_per_epoch, initial=self.step_in_epoch, disable=not info.is_main,
            desc=f"epoch {self.epoch + 1}/{self.cfg['train']['epochs']}", unit="step", dynamic_ncols=True,
            mininterval=1.0,
        )
        batches = iter(self.train_loader)
        while self.step_in_epoch < self.updates_per_epoch:
            for micro in range(accum):
                images, targets = next(batches)
                # Part segmentation batches carry (points, categories) as the model's two inputs.
                inputs = [images] if isinstance(images, torch.Tensor) else list(images)
                images, *extra = [tensor.to(info.device, non_blocking=True) for tensor in inputs]
                targets = targets.to(info.device, non_blocking=True)
                if self.mixup is not None:
                    images, targets = self.mixup(images, targets)
                if self.cfg["runtime"]["channels_last"]:
                    images = images.contiguous(memory_format=torch.channels_last)
                # Only the last micro-batch of a step all-reduces gradients across ranks.
                sync = micro == accum - 1 or self.ddp is None
                with (contextlib.nullcontext() if sync else self.ddp.no_sync()), conv_guard(info.device, self.amp):
                    with autocast_for(info.device, self.amp):
                        outputs = self.train_model(images, *extra)
                        if self.distill is None and self.segmentation:
                            loss = self.train_loss_fn(outputs.flatten(0, 1), targets.flatten())
                        elif self.distill is None:
                            loss = self.train_loss_fn(outputs, targets)
                        else:
                            loss = self.distill(outputs, images, targets)
                    self.scaler.scale(loss / accum).backward()
                self.loss_sum += loss.detach().double() * len(targets)
                self.loss_count += len(targets)
            if not math.isfinite(loss.item()):
                self.check_finite("the training loss", loss.item())
            self.optimizer_step()
            seconds = time.perf_counter() - start_time
            img_per_s = (self.step_in_epoch - start_step) * accum * batch * info.world_size / seconds
            lr = self.optimizer.param_groups[0]["lr"]
            bar.set_postfix(loss=f"{loss.item():.4f}", lr=f"{lr:.2e}", img_s=f"{img_per_s:.1f}", refresh=False)
            bar.update()
            if self.wandb is not None and self.global_step % self.cfg["train"]["log_every"] == 0:
                self.wandb.log({"train/loss": loss.item(), "train/lr": lr}, step=self.global_step)
            if every and self.step_in_epoch % every == 0 and self.step_in_epoch < self.updates_per_epoch:
                self.check_finite("the training loss", loss.item())
                self.save(LAST)
                if info.is_main:
                    bar.write(f"saved {self.output_dir / LAST} (epoch {self.epoch}, step {self.step_in_epoch})")
        bar.close()
        count = torch.tensor(float(self.loss_count), device=info.device, dtype=torch.float64)
        totals = all_reduce_sum(torch.stack([self.loss_sum, count]), info)
        seconds = time.perf_counter() - start_time
        return {
            "train_loss": (totals[0] / totals[1]).item(),
            "lr": self.optimizer.param_groups[0]["lr"],
            "epoch_seconds": seconds,
            "train_img_per_s": (self.step_in_epoch - start_step) * accum * batch * info.world_size / seconds,
        }

    def run(self) -> dict:
        cfg, info = self.cfg, self.info
        epochs = cfg["train"]["epochs"]
        while self.epoch < epochs:
            row = {"epoch": self.epoch + 1, **self.train_epoch(), "global_step": self.global_step}
            if (self.epoch + 1) % cfg["train"]["eval_every"] == 0 or self.epoch + 1 == epochs:
                amp, channels_last = self.amp, cfg["runtime"]["channels_last"]
                if self.segmentation:
                    metrics = evaluate_parts(self.model, self.val_loader, info, amp)
                    row.update(top1=metrics["top1"], instance_miou=metrics["instance_miou"],
                               class_miou=metrics["class_miou"], val_loss=metrics["loss"])
                else:
                    metrics = evaluate(self.model, self.val_loader, info, amp, channels_last)
                    row.update(top1=metrics["top1"], top5=metrics["top5"], macc=metrics["macc"],
                               val_loss=metrics["loss"])
                if self.ema is not None and cfg["ema"]["eval"]:
                    if self.segmentation:
                        ema = evaluate_parts(self.ema.module, self.val_loader, info, amp)
                        row.update(ema_top1=ema["top1"], ema_val_loss=ema["loss"])
                    else:
                        ema = evaluate(self.ema.module, self.val_loader, info, amp, channels_last)
                        row.update(ema_top1=ema["top1"], ema_top5=ema["top5"], ema_val_loss=ema["loss"])
            for name in ("train_loss", "val_loss", "ema_val_loss"):
                if name in row:
                    self.check_finite(name, row[name])
            self.history.append(row)
            self.epoch += 1
            self.step_in_epoch = 0
            self.loss_sum.zero_()
            self.loss_count = 0
            key = cfg["train"]["best_metric"]
            improved = row.get(key) is not None and (self.best["metric"] is None or row[key] > self.best["metric"])
            if improved:
                self.best = {"metric": row[key], "epoch": row["epoch"]}
            state = self.state()
            if info.is_main:
                # In this order, a kill between the writes leaves last.pth ahead; resuming redoes the rest from it.
                atomic_save(state, self.output_dir / LAST)
                if improved:
                    atomic_save(state, self.output_dir / BEST)
                write_summary(self.history, self.output_dir / SUMMARY)
                print(format_row(row, self.best, key), flush=True)
                if self.wandb is not None:
                    self.wandb.log({f"epoch/{k}": v for k, v in row.items()}, step=self.global_step)
        if self.wandb is not None:
            self.wandb.finish()
        return self.history[-1] if self.history else {}


def format_row(row: dict, best: dict, key: str) -> str:
    parts = [f"epoch {row['epoch']}", f"train_loss {row['train_loss']:.4f}", f"lr {row['lr']:.3e}"]
    for name in ("top1", "top5", "macc", "instance_miou", "class_miou", "val_loss", "ema_top1", "ema_top5"):
        if name in row:
            parts.append(f"{name} {row[name]:.3f}")
    parts.append(f"{row['train_img_per_s']:.1f} img/s")
    if best["metric"] is not None:
        parts.append(f"best {key} {best['metric']:.3f} (epoch {best['epoch']})")
    return "  ".join(parts)


def prepare_output(output_dir: Path, resume: str | None, info: DistInfo) -> tuple[Path | None, OutputLock | None]:
    """The checkpoint to resume from (``auto`` = ``OUTPUT/last.pth`` if present) and the folder's lock.

    Only one run may use a folder at a time (the lock, held by rank 0); a new run refuses a folder that
    already holds one, and the temporaries of a killed run's unfinished writes are removed.
    """
    lock = None
    if info.is_main:
        try:
            output_dir.mkdir(parents=True, exist_ok=True)
            lock = OutputLock(output_dir)
        except OSError as error:
            raise ConfigError(
                f"cannot write the run folder {output_dir}: {error.strerror or error}; choose another --output"
            ) from None
    try:
        last = output_dir / LAST
        if resume == "auto":
            resume_path = last if last.is_file() else None
        elif resume:
            resume_path = Path(resume)
            if not resume_path.is_file():
                raise ConfigError(f"cannot resume: {resume_path} does not exist")
        else:
            resume_path = None
            if last.is_file():
                raise ConfigError(
                    f"{output_dir} already holds a run ({last}); "
                    f"pass --resume auto to continue it or choose another --output"
                )
        if info.is_main:
            for path in remove_stale_temporaries(output_dir):
                print(f"removed {path}, left by an interrupted write", flush=True)
    except BaseException:
        if lock is not None:
            lock.release()
        raise
    barrier(info)
    return resume_path, lock


class _TrainArgumentParser(argparse.ArgumentParser):
    """Takes ``section.key=value`` overrides wherever they stand, after ``--data-dir`` and the like too."""

    def parse_known_args(self, args=None, namespace=None):
        namespace, extras = super().parse_known_args(args, namespace)
        late = [item for item in extras if "=" in item and not item.startswith("-")]
        if late:
            namespace.overrides = [*namespace.overrides, *late]
            extras = [item for item in extras if item not in late]
        return namespace, extras


def add_train_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "train", help="train a model with a recipe from configs/cls (torchrun for several processes)"
    )
    # argparse fills one positional list only before the first option; this class collects the later ones.
    parser.__class__ = _TrainArgumentParser
    parser.add_argument("config", help="recipe YAML, or a model name whose recipe is configs/cls/<name>.yaml")
    parser.add_argument("overrides", nargs="*", help="config overrides section.key=value, e.g. optim.lr=2e-3")
    parser.add_argument("--data-dir", help="ImageNet-style folder with train/ and val/ (sets data.dir)")
    parser.add_argument("--output", help="run folder (sets train.output; default runs/<model>)")
    parser.add_argument("--resume", help="checkpoint to resume, or 'auto' for OUTPUT/last.pth when it exists")
    parser.add_argument(
        "--wandb", action="store_true", help="log to Weights & Biases (offline unless credentials are set)"
    )
    return parser


def config_header(derived: dict, resumes: list[dict]) -> str:
    lines = ["derived: " + ", ".join(f"{key}={value}" for key, value in derived.items())]
    for resume in resumes:
        changed = ", ".join(f"{key} {before!r} -> {after!r}" for key, (before, after) in resume["changes"].items())
        lines.append(f"resumed at epoch {resume['epoch']} step {resume['step_in_epoch']} with {changed} "
                     f"(the values above apply from there on)")
    return "\n".join(lines)


def run_train(args: argparse.Namespace) -> int:
    overrides = list(args.overrides)
    if args.data_dir:
        overrides.append(f"data.dir={args.data_dir}")
    cfg = load_config(args.config, overrides)
    output_dir = Path(args.output or Path(cfg["train"]["output"]) / cfg["model"]["name"])
    cfg["train"]["output"] = str(output_dir)
    info = init_distributed(cfg["runtime"]["device"])
    lock = None
    try:
        resume, lock = prepare_output(output_dir, args.resume, info)
        with deterministic_algorithms(cfg["train"]["deterministic"]):
            trainer = Trainer(cfg, output_dir, info, resume, args.wandb)
            if info.is_main:
                save_config(cfg, output_dir / "config.yaml", header=config_header(trainer.derived, trainer.resumes))
            trainer.run()
    finally:
        if lock is not None:
            lock.release()
        shutdown(info)
    return 0
