"""CPU throughput of vz_convit_* vs timm's convit_* with the same weights (eval, fp32, inference_mode).

Not a test: run by hand, e.g. `python -m tools.bench.convit_cpu_speed --threads 2 --batch 16`.
The two models run alternately, so that changes in machine load hit both alike; both wall-clock and
process CPU time are reported (CPU time is the steadier figure on a shared machine).
"""
from __future__ import annotations

import argparse
import statistics
import time

import timm
import torch

import visionzoo  # noqa: F401  (registers vz_* models)
from visionzoo.models.convit import checkpoint_filter_fn


def timed_forward(model: torch.nn.Module, images: torch.Tensor) -> tuple[float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    model(images)
    return time.perf_counter() - wall, time.process_time() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--variant", default="tiny", choices=["tiny", "small", "base"])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--runs", type=int, default=6)
    args = parser.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    models = {f"timm convit_{args.variant}": timm.create_model(f"convit_{args.variant}").eval()}
    ours = timm.create_model(f"vz_convit_{args.variant}").eval()
    ours.load_state_dict(checkpoint_filter_fn(models[f"timm convit_{args.variant}"].state_dict(), ours))
    models[f"vz_convit_{args.variant}"] = ours
    images = torch.randn(args.batch, 3, 224, 224)
    timings: dict[str, list[tuple[float, float]]] = {name: [] for name in models}
    with torch.inference_mode():
        reference_logits, our_logits = (model(images) for model in models.values())
        for _ in range(args.warmup):
            for model in models.values():
                model(images)
        for _ in range(args.runs):
            for name, model in models.items():
                timings[name].append(timed_forward(model, images))
    print(f"convit_{args.variant}: batch {args.batch}, {args.threads} threads, fp32, eval, inference_mode, "
          f"{args.runs} alternating runs; max |logit difference| {(our_logits - reference_logits).abs().max():.2e}")
    rates = {}
    for name, runs in timings.items():
        walls, cpus = zip(*runs)
        rates[name] = (args.batch / min(walls), args.batch / statistics.median(walls), args.batch / min(cpus))
        print(f"{name:>18}: {rates[name][0]:7.1f} img/s best wall, {rates[name][1]:7.1f} median wall, "
              f"{rates[name][2]:7.1f} img/CPU-s best")
    timm_rates, our_rates = rates.values()
    print("speed-up (ours / timm): " + ", ".join(
        f"{label} {ours_rate / timm_rate:.2f}x"
        for label, ours_rate, timm_rate in zip(("best wall", "median wall", "CPU time"), our_rates, timm_rates)
    ))


if __name__ == "__main__":
    main()
