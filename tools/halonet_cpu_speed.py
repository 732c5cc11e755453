"""CPU throughput of vz_halonet26t against timm's halonet26t with the same weights.

Eval mode, fp32, torch.inference_mode, batch 16 at 256 px, 2 threads. The two models run alternately so that
load from other processes hits both alike; the best of the rounds is reported, as wall time and as
process CPU time (steadier on a shared machine).

    python tools/halonet_cpu_speed.py [--rounds 5] [--batch 16] [--threads 2]
"""
from __future__ import annotations

import argparse
import time

import timm
import torch

import visionzoo  # noqa: F401  (registers vz_* models)
from visionzoo.models.halonet import checkpoint_filter_fn


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    theirs = timm.create_model("halonet26t").eval()
    with torch.no_grad():  # trained-like BatchNorms, so that no residual branch is zero as at init
        for module in theirs.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.weight.uniform_(0.5, 1.0)
                module.bias.normal_(0.0, 0.1)
                module.running_mean.normal_(0.0, 0.1)
                module.running_var.uniform_(0.5, 1.5)
    ours = timm.create_model("vz_halonet26t").eval()
    ours.load_state_dict(checkpoint_filter_fn(theirs.state_dict(), ours))
    x = torch.randn(args.batch, 3, args.size, args.size)
    models = {"timm halonet26t": theirs, "vz_halonet26t": ours}
    best = {name: float("inf") for name in models}
    best_cpu = {name: float("inf") for name in models}
    with torch.inference_mode():
        for model in models.values():
            model(x)  # warm-up: allocator and oneDNN primitive caches
        for _ in range(args.rounds):
            for name, model in models.items():
                start, start_cpu = time.perf_counter(), time.process_time()
                model(x)
                best[name] = min(best[name], time.perf_counter() - start)
                best_cpu[name] = min(best_cpu[name], time.process_time() - start_cpu)
        error = (ours(x) - theirs(x)).abs().max() / theirs(x).abs().max()
    for name, seconds in best.items():
        print(
            f"{name:16s} {seconds * 1000:8.1f} ms/batch wall ({args.batch / seconds:6.2f} img/s), "
            f"{best_cpu[name] * 1000:8.1f} ms/batch CPU time"
        )
    wall = best["timm halonet26t"] / best["vz_halonet26t"]
    cpu = best_cpu["timm halonet26t"] / best_cpu["vz_halonet26t"]
    print(f"speed-up {wall:.2f}x wall, {cpu:.2f}x CPU time; max relative logit difference {error:.1e}")


if __name__ == "__main__":
    main()
