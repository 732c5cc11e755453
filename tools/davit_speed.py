"""CPU throughput of vz_davit_tiny vs timm's davit_tiny with the same weights (eval, fp32, inference_mode).

Runs alternate between the two models so that load from other processes hits both alike; we report the
best and the median round, in wall-clock time and in process CPU time (which other processes on a shared
machine disturb less). Usage: python -m tools.davit_speed [--batch 16] [--threads 2] [--rounds 7]
"""
from __future__ import annotations

import argparse
import statistics
import time

import timm
import torch

import visionzoo  # noqa: F401  (registers vz_* models)
from visionzoo.models.davit import checkpoint_filter_fn


def _seconds_per_batch(model: torch.nn.Module, images: torch.Tensor, iterations: int) -> tuple[float, float]:
    """(wall, CPU) seconds per batch."""
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(iterations):
        model(images)
    return (time.perf_counter() - wall) / iterations, (time.process_time() - cpu) / iterations


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--iterations", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    reference = timm.create_model("davit_tiny").eval()
    ours = timm.create_model("vz_davit_tiny").eval()
    ours.load_state_dict(checkpoint_filter_fn(reference.state_dict(), ours))
    images = torch.randn(args.batch, 3, args.size, args.size)
    times: dict[str, list[tuple[float, float]]] = {"timm davit_tiny": [], "vz_davit_tiny": []}
    with torch.inference_mode():
        max_diff = (reference(images) - ours(images)).abs().max().item()
        for _ in range(args.rounds):
            times["timm davit_tiny"].append(_seconds_per_batch(reference, images, args.iterations))
            times["vz_davit_tiny"].append(_seconds_per_batch(ours, images, args.iterations))
    print(f"batch {args.batch}, {args.size}x{args.size}, fp32, {args.threads} threads, max |logit diff| {max_diff:.2e}")
    for clock, column in (("wall", 0), ("CPU", 1)):
        samples = {name: [sample[column] for sample in rounds] for name, rounds in times.items()}
        for name, seconds in samples.items():
            print(
                f"{clock:4s} {name:16s} best {args.batch / min(seconds):7.2f} img/s   "
                f"median {args.batch / statistics.median(seconds):7.2f} img/s"
            )
        best = min(samples["timm davit_tiny"]) / min(samples["vz_davit_tiny"])
        median = statistics.median(samples["timm davit_tiny"]) / statistics.median(samples["vz_davit_tiny"])
        print(f"{clock:4s} speed-up vz/timm: best {best:.2f}x, median {median:.2f}x")

if __name__ == "__main__":
    main()
