"""CPU throughput of vz_convit_tiny vs timm's convit_tiny with the same weights (eval, fp32, inference_mode).

Not a test: run by hand, e.g. `python -m tools.bench.convit_cpu_speed --threads 2 --batch 16`.
"""
from __future__ import annotations

import argparse
import time

import timm
import torch

import visionzoo  # noqa: F401  (registers vz_* models)
from visionzoo.models.convit import checkpoint_filter_fn


def images_per_second(model: torch.nn.Module, images: torch.Tensor, warmup: int, runs: int) -> float:
    with torch.inference_mode():
        for _ in range(warmup):
            model(images)
        best = float("inf")
        for _ in range(runs):
            start = time.perf_counter()
            model(images)
            best = min(best, time.perf_counter() - start)
    return images.shape[0] / best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--variant", default="tiny", choices=["tiny", "small", "base"])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    reference = timm.create_model(f"convit_{args.variant}").eval()
    ours = timm.create_model(f"vz_convit_{args.variant}").eval()
    ours.load_state_dict(checkpoint_filter_fn(reference.state_dict(), ours))
    images = torch.randn(args.batch, 3, 224, 224)
    with torch.inference_mode():
        difference = (ours(images) - reference(images)).abs().max().item()
    # Alternate the two so that drift in machine load hits both alike.
    timm_rate = images_per_second(reference, images, args.warmup, args.runs)
    ours_rate = images_per_second(ours, images, args.warmup, args.runs)
    timm_rate = max(timm_rate, images_per_second(reference, images, 0, args.runs))
    ours_rate = max(ours_rate, images_per_second(ours, images, 0, args.runs))
    print(f"convit_{args.variant} batch {args.batch}, {args.threads} threads, fp32, eval, inference_mode")
    print(f"max |logit difference| {difference:.2e}")
    print(f"timm convit_{args.variant}: {timm_rate:.1f} img/s")
    print(f"vz_convit_{args.variant}:  {ours_rate:.1f} img/s  ({ours_rate / timm_rate:.2f}x)")


if __name__ == "__main__":
    main()
