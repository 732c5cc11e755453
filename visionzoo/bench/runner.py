"""Benchmark one model: size, MACs, inference throughput, batch-1 latency, peak memory, train-step throughput and
efficiency against the machine's measured matmul peak."""
from __future__ import annotations

import contextlib
import copy
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn

from visionzoo.bench.chunks import tune_stage_chunks
from visionzoo.bench.flops import count_fft_macs, count_macs, count_params, count_train_macs, surrogate_loss
from visionzoo.bench.memory import peak_memory_mb
from visionzoo.bench.runtimes import EXPORT_FORMAT, autocast_for, available_runtimes, get_runtime, missing_package
from visionzoo.bench.timing import Schedule, Timer, measure, summarize
from visionzoo.layers.batch_chunks import stage_chunks
from visionzoo.layers.fuse import fuse_model
from visionzoo.models._cards import CARDS_DIR, variant_card
from visionzoo.models._factory import create_model
from visionzoo.ops import AUTO, REFERENCE, check_backend_name, environment_backend, record_backends, use_backend

DEFAULT_BATCH_SIZE = {"cpu": 32, "cuda": 256}


class BenchArgumentError(ValueError):
    """The benchmark was asked for something it cannot do; the message says what to change."""


@dataclass(frozen=True)
class BenchSettings:
    device: str = "cpu"
    batch_size: int = 32
    img_size: int | None = None
    dtype: str = "fp32"
    channels_last: bool = False
    compile: bool = False
    deploy: bool = False
    runtime: str = "torch"
    schedule: Schedule = field(default_factory=Schedule)
    train: bool = True
    ops_backend: str | None = None  # forced on every op that has it (None: VZ_OPS_BACKEND, else auto)

    def validate(self) -> None:
        device_type = self.device.split(":")[0]
        if device_type not in ("cpu", "cuda"):
            raise BenchArgumentError(f"--device must be cpu or cuda (or cuda:N), got {self.device!r}")
        if device_type == "cuda" and not torch.cuda.is_available():
            raise BenchArgumentError("--device cuda was asked for but torch sees no CUDA GPU here "
                                     "(torch.cuda.is_available() is False); use --device cpu")
        if self.dtype not in ("fp32", "bf16", "fp16"):
            raise BenchArgumentError(f"--dtype must be fp32, bf16 or fp16, got {self.dtype!r}")
        if self.dtype == "fp16" and device_type == "cpu":
            raise BenchArgumentError("--dtype fp16 is a GPU precision (CPU kernels for fp16 are slow or missing); "
                                     "use --dtype bf16 or fp32 with --device cpu")
        if self.batch_size < 1:
            raise BenchArgumentError(f"--batch-size must be at least 1, got {self.batch_size}")
        if self.img_size is not None and self.img_size < 1:
            raise BenchArgumentError(f"--img-size must be a positive number of pixels, got {self.img_size}")
        schedule = self.schedule
        if schedule.warmup < 0 or schedule.iters < 1 or (schedule.time_budget is not None and schedule.time_budget <= 0):
            raise BenchArgumentError("--warmup must be >= 0, --iters >= 1 and --time-budget > 0 seconds")
        if self.compile and schedule.warmup < 1:
            raise BenchArgumentError("--compile needs --warmup of at least 1 (the first call compiles)")
        if self.runtime not in available_runtimes():
            raise BenchArgumentError(f"--runtime {self.runtime!r} is not available; "
                                     f"available: {', '.join(available_runtimes())}")
        if self.runtime in EXPORT_FORMAT:
            self._validate_exported_runtime(device_type)
        self.effective_ops_backend()

    def effective_ops_backend(self) -> str:
        if self.ops_backend is not None:
            return check_backend_name(self.ops_backend, "--ops-backend ")
        return environment_backend() or AUTO

    def _validate_exported_runtime(self, device_type: str) -> None:
        runtime = f"--runtime {self.runtime}"
        package = missing_package(self.runtime)
        if package:
            raise BenchArgumentError(f"{runtime} needs the {package} package: pip install 'visionzoo[export]'")
        if device_type != "cpu":
            raise BenchArgumentError(f"{runtime} runs exported programs on the CPU; use --device cpu")
        if self.dtype != "fp32":
            raise BenchArgumentError(f"{runtime} times fp32 exports; --dtype {self.dtype} applies to --runtime torch")
        for flag, value in (("--compile", self.compile), ("--channels-last", self.channels_last)):
            if value:
                raise BenchArgumentError(f"{flag} applies to --runtime torch; {runtime} times the exported program")
        if self.train:
            raise BenchArgumentError(f"{runtime} times inference only; the training step is a --runtime torch "
                                     "measurement (pass --no-train)")

    def as_dict(self) -> dict:
        return {
            "device": self.device, "batch_size": self.batch_size, "img_size": self.img_size, "dtype": self.dtype,
            "channels_last": self.channels_last, "compile": self.compile, "deploy": self.deploy,
            "runtime": self.runtime, "warmup": self.schedule.warmup,
            "iters": None if self.schedule.time_budget is not None else self.schedule.iters,
            "time_budget_s": self.schedule.time_budget, "train": self.train,
            "ops_backend": self.effective_ops_backend(),
        }


def card_of(name: str) -> dict | None:
    """The model's card entry, or None when it has none (or the package runs without its cards folder)."""
    return variant_card(name) if CARDS_DIR.is_dir() else None


def input_size_of(model: nn.Module, img_size: int | None) -> tuple[int, ...]:
    """One sample's shape from the model's ``pretrained_cfg``: (C, H, W) for an image model, (points, dims) for a
    point-cloud family; ``img_size`` replaces H and W, or the number of points."""
    input_size = tuple(getattr(model, "pretrained_cfg", {}).get("input_size", (3, 224, 224)))
    if not img_size:
        return input_size
    return (input_size[0], img_size, img_size) if len(input_size) == 3 else (img_size, *input_size[1:])


def make_inputs(batch_size: int, input_size: tuple[int, ...], settings: BenchSettings) -> torch.Tensor:
    """A random batch of ``input_size`` samples; image batches are NHWC under ``--channels-last``."""
    inputs = torch.randn(batch_size, *input_size, device=settings.device)
    if settings.channels_last and inputs.dim() == 4:
        return inputs.contiguous(memory_format=torch.channels_last)
    return inputs


def deploy_form(model: nn.Module, settings: BenchSettings) -> nn.Module:
    """``--deploy``: BatchNorms folded, and for eager CPU inference the stages that run measurably faster on a few
    images at a time run in batch chunks (any model with a ``stages`` sequence, timm's included)."""
    if not settings.deploy:
        return model.eval()
    deployed = fuse_model(model)
    if settings.device == "cpu" and settings.runtime == "torch" and not settings.compile:
        if settings.channels_last:  # tuned in the layout it will be timed in
            deployed = deployed.to(memory_format=torch.channels_last)
        images = make_inputs(settings.batch_size, input_size_of(deployed, settings.img_size), settings)
        with autocast_for(settings.device, settings.dtype):
            tune_stage_chunks(deployed, images)
    return deployed


def train_step_fn(model: nn.Module, settings: BenchSettings, images: torch.Tensor) -> Callable[[], None]:
    """One AdamW training step (forward, backward, update) under the run's precision, on a copy of ``model``."""
    trainee = copy.deepcopy(model).to(settings.device).train()
    if settings.channels_last:
        trainee = trainee.to(memory_format=torch.channels_last)
    runnable = torch.compile(trainee) if settings.compile else trainee
    optimizer = torch.optim.AdamW(trainee.parameters(), lr=1e-4)
    scaler = torch.amp.GradScaler(torch.device(settings.device).type, enabled=settings.dtype == "fp16")

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with autocast_for(settings.device, settings.dtype):
            loss = surrogate_loss(runnable(images))
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()

    return step


def _throughput(batch_size: int, times: list[float]) -> dict:
    stats = summarize(times)
    return {"batch_size": batch_size, "img_per_s": batch_size / stats["median_s"], "timing": stats}


def _measure_peak_memory(fn: Callable[[], object], settings: BenchSettings) -> dict:
    # Allocators keep freed memory, so on the CPU a warm call's RSS growth reads low: measure a cold call, except
    # with torch.compile, whose first call would count the compiler's memory.
    if settings.compile:
        fn()
    return peak_memory_mb(fn, torch.device(settings.device))


def efficiency_of(macs_per_image: int | None, img_per_s: float | None) -> dict | None:
    """Achieved GFLOP/s; the run adds ``fraction_of_peak`` once its peak is known (measured after the models too)."""
    if not macs_per_image or not img_per_s:
        return None
    return {"gflops": 2.0 * macs_per_image * img_per_s / 1e9}


def ops_backends_of(model: nn.Module, settings: BenchSettings, input_size: tuple[int, int, int]) -> dict:
    """Which backend each op ran, per op name, from one eager batch-1 forward under the run's settings (compiled
    code and exported programs run the choices that eager mode, or the export, makes)."""
    from visionzoo.export.core import ops_backends_for
    from visionzoo.export.formats import FORMATS

    backends = ops_backends_for(FORMATS[EXPORT_FORMAT[settings.runtime]]) if settings.runtime in EXPORT_FORMAT \
        else contextlib.nullcontext()
    inputs = make_inputs(1, input_size, settings)
    with record_backends() as ran, backends, torch.inference_mode(), autocast_for(settings.device, settings.dtype):
        model(inputs)
    return ran


def benchmark_model(name: str, settings: BenchSettings, timer: Timer,
                    build: Callable[[str], nn.Module] = create_model,
                    on_phase: Callable[[str], None] = lambda phase: None,
                    prepare: Callable[[nn.Module], None] | None = None) -> dict:
    """Measure one model; ``prepare`` may change its weights first (``--vs timm`` copies timm's weights in)."""
    card = card_of(name) or {}
    on_phase("build")
    model = build(name).eval()
    if prepare is not None:
        prepare(model)
    input_size = input_size_of(model, settings.img_size)
    inference_model = deploy_form(model, settings)
    on_phase("count")
    # The model's math, as its ops' reference implementations compute it: a fast backend that spends extra
    # multiplies to run faster (ConViT's split GPSA, HaloNet's full offset tables) must not count them as work.
    with use_backend(REFERENCE):
        macs = count_macs(inference_model, input_size)
        # Spectral filters' FFTs, which the flop counter leaves out: reported apart, and part of the work the
        # inference efficiency divides by (matmul backends of the same filter are not counted as extra work).
        fft_macs = count_fft_macs(inference_model, input_size)
        train_macs = count_train_macs(model, input_size) if settings.train else None
    batch_shape, single_shape = (settings.batch_size, *input_size), (1, *input_size)
    on_phase("runtime")
    infer = get_runtime(settings.runtime)(inference_model, settings, [batch_shape, single_shape])

    on_phase("memory")
    batch = make_inputs(settings.batch_size, input_size, settings)
    memory = {"infer": _measure_peak_memory(lambda: infer(batch), settings)}
    on_phase("throughput")
    infer_result = _throughput(settings.batch_size, measure(lambda: infer(batch), timer, settings.schedule))
    on_phase("latency")
    single = make_inputs(1, input_size, settings)
    latency_stats = summarize(measure(lambda: infer(single), timer, settings.schedule))
    latency = {"median_ms": latency_stats["median_s"] * 1e3, "p90_ms": latency_stats["p90_s"] * 1e3,
               "timing": latency_stats}

    train_result = None
    if settings.train:
        on_phase("train")
        step = train_step_fn(model, settings, batch)
        memory["train"] = _measure_peak_memory(step, settings)
        train_result = _throughput(settings.batch_size, measure(step, timer, settings.schedule))

    return {
        "model": name,
        "family": card.get("family"),
        "top1": card.get("top1"),
        "paper_gmacs": card.get("paper_gmacs"),
        "timm_name": card.get("timm_name"),
        "input_size": list(input_size),
        "params": count_params(inference_model),
        "gmacs": macs / 1e9,
        "fft_gmacs": fft_macs / 1e9,
        "train_gmacs": train_macs / 1e9 if train_macs is not None else None,
        "infer": infer_result,
        "latency": latency,
        "train": train_result,
        "memory": memory,
        "efficiency": {
            "infer": efficiency_of(macs + fft_macs, infer_result["img_per_s"]),
            "train": efficiency_of(train_macs, train_result["img_per_s"] if train_result else None),
        },
        "runtime": getattr(infer, "details", {"name": settings.runtime}),
        "stage_chunks": stage_chunks(inference_model),
        "ops_backends": ops_backends_of(inference_model, settings, input_size),
        "vs": None,
        "error": None,
    }
