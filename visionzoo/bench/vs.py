"""Side by side with another implementation: ``--vs timm`` (timm's model of the same architecture, with the same
weights) or ``--vs NAME`` (any registered model as a fixed baseline), timed alternately.

For a timm pair, timm's randomly initialised (and then perturbed) state dict is converted by the family module's
``checkpoint_filter_fn`` and loaded strictly into ours; the two must then agree on a random batch, or the pair is
abandoned with a message saying by how much they differ.
"""
from __future__ import annotations

import difflib
import dataclasses
from typing import Callable

import timm
import torch
from torch import nn

from visionzoo.bench.runner import BenchSettings, deploy_form, input_size_of, make_inputs
from visionzoo.bench.runtimes import get_runtime
from visionzoo.bench.timing import Schedule, Timer, measure_alternating, quantile, summarize
from visionzoo.models._registry import example_input, family_of

TIMM = "timm"
MATCH_RTOL = 1e-3
MATCH_ATOL = 1e-4
# A ratio of two medians from fewer timed pairs says little: --time-budget runs go on to this many pairs, and a
# --iters below it is refused with --vs.
MIN_PAIRS = 5


class PairMismatchError(RuntimeError):
    """The zoo model and its counterpart disagree after the weights were copied across."""


def check_baseline_name(name: str) -> str:
    """``name`` if timm (or the zoo) registers it, else an error with the closest registered names."""
    if name == TIMM or name in timm.list_models():
        return name
    close = difflib.get_close_matches(name, timm.list_models(), n=5, cutoff=0.6)
    hint = f" Did you mean: {', '.join(close)}?" if close else ""
    raise ValueError(f"--vs {name!r} is neither 'timm' nor a registered model.{hint}")


@torch.no_grad()
def perturb_parameters(model: nn.Module, scale: float = 0.02, seed: int = 0) -> None:
    """Add seeded noise to every parameter, so that parts initialised to zero or one (layer scales, heads, norm
    affines) take part in the agreement check instead of hiding a wrong conversion."""
    generator = torch.Generator().manual_seed(seed)
    for param in model.parameters():
        if param.is_floating_point():
            param.add_(torch.randn(param.shape, generator=generator).to(param) * scale)


def copy_timm_weights(zoo_model: nn.Module, timm_model: nn.Module) -> None:
    """Load ``timm_model``'s weights into ``zoo_model`` through the zoo family's ``checkpoint_filter_fn``."""
    family = family_of(zoo_model)
    try:
        zoo_model.load_state_dict(family.checkpoint_filter_fn(timm_model.state_dict(), zoo_model), strict=True)
    except (RuntimeError, KeyError, ValueError) as error:
        raise PairMismatchError(f"{family.module}.checkpoint_filter_fn did not turn timm's state dict into "
                                f"ours ({type(error).__name__}: {error}); the pair is skipped") from error


def check_outputs_agree(zoo_model: nn.Module, other: nn.Module, input_size: tuple[int, int, int],
                        zoo_name: str, other_name: str) -> float:
    """Max |difference| of eval-mode fp32 logits on a seeded random batch; raise if above tolerance."""
    images = example_input(zoo_model, 2, input_size[1:], torch.Generator().manual_seed(0))
    with torch.inference_mode():
        ours = zoo_model.eval()(images)
        theirs = other.eval()(images)
    if ours.shape != theirs.shape:
        raise PairMismatchError(f"{zoo_name} returns shape {tuple(ours.shape)} but timm's {other_name} returns "
                                f"{tuple(theirs.shape)}; the pair is skipped")
    max_diff = (ours - theirs).abs().max().item()
    tolerance = MATCH_ATOL + MATCH_RTOL * theirs.abs().max().item()
    if not max_diff <= tolerance:
        raise PairMismatchError(
            f"{zoo_name} and timm's {other_name} disagree after copying timm's weights into ours "
            f"(max |difference| {max_diff:.3g} > tolerance {tolerance:.3g}); the pair is skipped: check the family's "
            "checkpoint_filter_fn and that the card's timm_name is the same architecture")
    return max_diff


def pair_with_timm(zoo_name: str, timm_name: str, build_timm: Callable[..., nn.Module] = timm.create_model
                   ) -> tuple[Callable[[nn.Module], None], dict]:
    """A ``prepare`` hook for :func:`benchmark_model` that copies timm's weights into the zoo model and checks that
    the outputs agree, and the pair's record it fills: ``model`` (timm's module) and ``max_abs_diff`` when they
    agree, else ``status: mismatch`` and a ``message``; the zoo model is measured either way."""
    pair: dict = {"against": timm_name, "kind": "timm_pair"}

    def prepare(zoo_model: nn.Module) -> None:
        reference = build_timm(timm_name, num_classes=zoo_model.num_classes)
        perturb_parameters(reference)
        try:
            copy_timm_weights(zoo_model, reference)
            input_size = input_size_of(zoo_model, None)
            pair["max_abs_diff"] = check_outputs_agree(zoo_model, reference, input_size, zoo_name, timm_name)
        except PairMismatchError as error:
            pair.update(status="mismatch", message=str(error))
            return
        pair["model"] = reference

    return prepare, pair


def speed_ratio(zoo_times: list[float], other_times: list[float]) -> float:
    """How many times faster the zoo model is (> 1: ours is faster): the other's median over ours."""
    return summarize(other_times)["median_s"] / summarize(zoo_times)["median_s"]


def pair_ratio_range(zoo_times: list[float], other_times: list[float]) -> tuple[float, float]:
    """p10 and p90 of the ratio within each alternating pair (other's time over ours): how far the ratio of
    medians could move on another run. Pairs share the moment they ran at, so load and clock drifts cancel."""
    ratios = sorted(other / zoo for zoo, other in zip(zoo_times, other_times))
    return quantile(ratios, 0.1), quantile(ratios, 0.9)


def check_vs_schedule(schedule: Schedule) -> Schedule:
    """The schedule the side-by-side timing runs: at least :data:`MIN_PAIRS` pairs, or an error for --iters."""
    if schedule.time_budget is None:
        if schedule.iters < MIN_PAIRS:
            raise ValueError(f"--vs needs at least {MIN_PAIRS} alternating pairs to compare medians; --iters "
                             f"{schedule.iters} times only {schedule.iters}: raise --iters or use --time-budget")
        return schedule
    return dataclasses.replace(schedule, min_iters=max(schedule.min_iters, MIN_PAIRS))


def time_side_by_side(zoo_model: nn.Module, other_model: nn.Module, settings: BenchSettings, timer: Timer,
                      zoo_input_size: tuple[int, int, int], other_input_size: tuple[int, int, int]) -> dict:
    """Throughput of both in the same runtime and settings at the run's batch size, timed A B A B ..."""
    runtime = get_runtime(settings.runtime)
    infer_zoo = runtime(deploy_form(zoo_model, settings), settings, [(settings.batch_size, *zoo_input_size)])
    infer_other = runtime(deploy_form(other_model, settings), settings, [(settings.batch_size, *other_input_size)])
    zoo_batch = make_inputs(settings.batch_size, zoo_input_size, settings)
    other_batch = make_inputs(settings.batch_size, other_input_size, settings)
    zoo_times, other_times = measure_alternating(lambda: infer_zoo(zoo_batch), lambda: infer_other(other_batch),
                                                 timer, check_vs_schedule(settings.schedule))
    return summarize_pair(zoo_times, other_times, settings.batch_size)


def summarize_pair(zoo_times: list[float], other_times: list[float], batch_size: int) -> dict:
    zoo_stats, other_stats = summarize(zoo_times), summarize(other_times)
    low, high = pair_ratio_range(zoo_times, other_times)
    return {
        "status": "ok",
        "zoo_img_per_s": batch_size / zoo_stats["median_s"],
        "other_img_per_s": batch_size / other_stats["median_s"],
        "speed_ratio": speed_ratio(zoo_times, other_times),
        "speed_ratio_p10": low,
        "speed_ratio_p90": high,
        "pairs": min(len(zoo_times), len(other_times)),
        "zoo_timing": zoo_stats,
        "other_timing": other_stats,
    }
