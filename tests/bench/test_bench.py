"""`visionzoo bench` behaviour: fields, schema, arithmetic from injected timings, side-by-side pairing, outputs and
argument errors. Nothing here asserts a speed; models are tiny and every measurement runs once or twice."""
from __future__ import annotations

import argparse
import csv
import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest
import timm
import torch
import torch.nn.functional as F
from timm.models import _registry as timm_registry
from torch import nn

from visionzoo.bench import report
from visionzoo.bench.cli import add_bench_parser, default_model_set
from visionzoo.bench.flops import count_macs, count_params, count_train_macs
from visionzoo.bench.machine import _gemm_calls, measure_matmul_peak
from visionzoo.bench.memory import peak_memory_mb
from visionzoo.bench.runner import BenchArgumentError, BenchSettings, benchmark_model, deploy_form, train_step_fn
from visionzoo.bench.runtimes import torch_runtime
from visionzoo.bench.suite import run_suite
from visionzoo.bench.timing import Schedule, WallTimer, measure, measure_alternating, summarize
from visionzoo.bench.vs import MIN_PAIRS, check_vs_schedule, perturb_parameters, speed_ratio, summarize_pair
from visionzoo.layers.fuse import fuse_model
from visionzoo.models import Family, register_family, unregister_family
from visionzoo.ops import REFERENCE, use_backend

HAVE_MATPLOTLIB = importlib.util.find_spec("matplotlib") is not None
ZOO_NAME = "vz_benchtest_tiny"
TIMM_NAME = "benchtest_tiny_timmlayout"
WIDTH = 8


def _attend(stem: nn.Module, qkv: nn.Module, head: nn.Module, x: torch.Tensor) -> torch.Tensor:
    tokens = stem(x).flatten(2).transpose(1, 2)
    q, k, v = qkv(tokens).unsqueeze(1).chunk(3, dim=-1)
    return head(F.scaled_dot_product_attention(q, k, v).squeeze(1).mean(1))


class TinyAttentionNet(nn.Module):
    """Conv-BN stem, one single-head SDPA over the tokens, linear head: every counted op kind, in a few kFLOPs."""

    def __init__(self, num_classes: int = 5):
        super().__init__()
        self.num_classes = num_classes
        self.pretrained_cfg = {"input_size": (3, 16, 16)}
        self.stem = nn.Sequential(nn.Conv2d(3, WIDTH, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(WIDTH))
        self.qkv = nn.Linear(WIDTH, 3 * WIDTH)
        self.head = nn.Linear(WIDTH, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _attend(self.stem, self.qkv, self.head, x)


class TinyTimmLayout(nn.Module):
    """The same network under other parameter names, standing in for timm's implementation."""

    def __init__(self, num_classes: int = 5):
        super().__init__()
        self.pretrained_cfg = {"input_size": (3, 16, 16)}
        self.patch_embed = nn.Sequential(nn.Conv2d(3, WIDTH, 3, stride=2, padding=1, bias=False),
                                         nn.BatchNorm2d(WIDTH))
        self.attn_qkv = nn.Linear(WIDTH, 3 * WIDTH)
        self.head = nn.Linear(WIDTH, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _attend(self.patch_embed, self.attn_qkv, self.head, x)


PERTURB_FILTER = {"enabled": False}


def checkpoint_filter_fn(state_dict: dict, model: nn.Module) -> dict:
    """timm layout -> ours, as a family's converter does (the bench finds it through the family record)."""
    converted = {}
    for key, value in state_dict.items():
        key = key.replace("patch_embed.", "stem.").replace("attn_qkv.", "qkv.")
        converted[key] = value + 1.0 if PERTURB_FILTER["enabled"] and key == "head.weight" else value
    return converted


def _entrypoint(cls):
    def create(pretrained=False, pretrained_cfg=None, pretrained_cfg_overlay=None, cache_dir=None, **kwargs):
        return cls(**kwargs)

    return create


@pytest.fixture(scope="module", autouse=True)
def tiny_models_registered():
    """Register the two tiny models for this module only, so no other test sees them in timm's registry."""
    for name, cls in ((ZOO_NAME, TinyAttentionNet), (TIMM_NAME, TinyTimmLayout)):
        entrypoint = _entrypoint(cls)
        entrypoint.__name__ = name
        entrypoint.__module__ = __name__
        timm.models.register_model(entrypoint)
    # Late-bound so that tests may monkeypatch this module's converter.
    register_family(Family("benchtest", (TinyAttentionNet,), lambda state, model: checkpoint_filter_fn(state, model)))
    yield
    unregister_family("benchtest")
    for name in (ZOO_NAME, TIMM_NAME):
        timm_registry._clear_model_entries(name)
        timm_registry._model_entrypoints.pop(name, None)


@pytest.fixture
def tiny_card(monkeypatch):
    card = {"family": "benchtest", "top1": 71.5, "paper_gmacs": None, "timm_name": TIMM_NAME}
    monkeypatch.setattr("visionzoo.bench.runner.card_of", lambda name: dict(card) if name == ZOO_NAME else None)
    monkeypatch.setattr("visionzoo.bench.suite.card_of", lambda name: dict(card) if name == ZOO_NAME else None)
    return card


class ScriptedTimer:
    """Calls the function and reports a scripted duration: fixed, or chosen by the label the call appended."""

    def __init__(self, seconds: float = 0.5, by_label: dict[str, float] | None = None):
        self.seconds = seconds
        self.by_label = by_label or {}
        self.calls: list[str] = []

    def time_call(self, fn) -> float:
        fn()
        if self.by_label:
            return self.by_label[self.calls[-1]]
        return self.seconds

    def synchronize(self) -> None:
        self.calls.append("sync")


def main(argv: list[str]) -> int:
    """``visionzoo bench ...`` through the subcommand's own parser, as the ``visionzoo`` command wires it."""
    parser = argparse.ArgumentParser(prog="visionzoo")
    add_bench_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


TINY = BenchSettings(batch_size=2, schedule=Schedule(warmup=0, iters=1))
TINY_VS = BenchSettings(batch_size=2, schedule=Schedule(warmup=0, iters=MIN_PAIRS))  # the fewest pairs --vs times


def test_summarize_median_percentiles_and_spread():
    stats = summarize([4.0, 1.0, 3.0, 2.0, 5.0])
    assert stats["n"] == 5 and stats["median_s"] == 3.0
    assert stats["min_s"] == 1.0 and stats["max_s"] == 5.0
    assert math.isclose(stats["p10_s"], 1.4) and math.isclose(stats["p90_s"], 4.6)
    assert math.isclose(stats["spread"], (4.6 - 1.4) / 3.0)
    with pytest.raises(ValueError, match="no timings"):
        summarize([])


def test_measure_warms_up_then_times_iters_or_budget():
    calls = []
    timer = ScriptedTimer(seconds=0.25)
    times = measure(lambda: calls.append(1), timer, Schedule(warmup=2, iters=3))
    assert times == [0.25] * 3 and len(calls) == 5
    budgeted = measure(lambda: None, timer, Schedule(warmup=0, iters=100, time_budget=1.0, min_iters=2))
    assert budgeted == [0.25] * 4  # stops once the timed total reaches the budget, ignoring iters
    assert measure(lambda: None, ScriptedTimer(5.0), Schedule(warmup=0, time_budget=1.0, min_iters=2)) == [5.0] * 2


def test_alternating_timing_interleaves_and_ratio_comes_from_the_timings():
    timer = ScriptedTimer(by_label={"zoo": 0.1, "other": 0.3})
    zoo_times, other_times = measure_alternating(lambda: timer.calls.append("zoo"),
                                                 lambda: timer.calls.append("other"), timer,
                                                 Schedule(warmup=1, iters=3))
    assert timer.calls == ["zoo", "other", "sync"] + ["zoo", "other"] * 3
    assert zoo_times == [0.1] * 3 and other_times == [0.3] * 3
    assert math.isclose(speed_ratio(zoo_times, other_times), 3.0)
    pair = summarize_pair([0.2, 0.1, 0.3], [0.4, 0.5, 0.6], batch_size=8)
    assert math.isclose(pair["zoo_img_per_s"], 8 / 0.2) and math.isclose(pair["other_img_per_s"], 8 / 0.5)
    assert math.isclose(pair["speed_ratio"], 0.5 / 0.2)


def test_matmul_peak_is_a_positive_figure():
    peak = measure_matmul_peak(torch.device("cpu"), torch.float32, WallTimer(), Schedule(warmup=1, iters=2), size=64)
    assert peak["gflops"] > 0 and peak["gflops_best"] >= peak["gflops"]
    assert peak["matmul_size"] == 64 and peak["dtype"] == "float32"
    assert peak["gflops"] == max(peak["kernels_gflops"].values())


@pytest.mark.parametrize("size", [64, 96, 2 * 7])
def test_each_peak_kernel_computes_the_same_gemm(size):
    results = {name: call().reshape(size, size) if name == "matmul" else call().permute(0, 2, 3, 1).reshape(size, size)
               for name, call in _gemm_calls(size, torch.device("cpu"), torch.float64).items()}
    assert set(results) == {"matmul", "conv1x1"}
    torch.testing.assert_close(results["conv1x1"], results["matmul"])


class SlowMatmulTimer(ScriptedTimer):
    """The BLAS matmul takes twice as long as the oneDNN conv, as MKL's sgemm does on AMD CPUs."""

    def time_call(self, fn) -> float:
        return super().time_call(fn) * (2 if "mm" in fn.__code__.co_names else 1)


def test_peak_is_the_faster_gemm_library_and_the_header_names_both():
    peak = measure_matmul_peak(torch.device("cpu"), torch.float32, SlowMatmulTimer(seconds=1e-9),
                               Schedule(warmup=0, iters=3), size=32)
    assert peak["kernel"] == "conv1x1" and peak["gflops"] == pytest.approx(2 * 32**3 / 1e-9 / 1e9)
    assert peak["kernels_gflops"]["matmul"] == pytest.approx(peak["gflops"] / 2)
    doc = run_suite([ZOO_NAME], TINY, timer=ScriptedTimer(), matmul_size=16, progress=False)
    doc["peak"].update(kernel=peak["kernel"], kernels_gflops=peak["kernels_gflops"])
    line = report.header_lines(doc)[2]
    assert "GEMM as a 1x1 convolution over a channels-last map (oneDNN)" in line and "torch.mm 32768.0" in line


def test_macs_count_conv_linear_and_cpu_sdpa():
    model = TinyAttentionNet()
    tokens = 8 * 8
    expected = (tokens * WIDTH * 27) + tokens * WIDTH * 3 * WIDTH + 2 * tokens * tokens * WIDTH + WIDTH * 5
    assert count_macs(model, (3, 16, 16)) == expected
    assert count_train_macs(model, (3, 16, 16)) > 2 * expected  # backward costs about twice the forward
    assert count_params(fuse_model(model)) == count_params(model) - 2 * WIDTH + WIDTH  # BN folded into a bias


def test_macs_count_in_place_batched_matmuls():
    class AccumulateInPlace(nn.Module):
        pretrained_cfg: dict = {}

        def forward(self, x):
            logits = torch.zeros(x.shape[0], 6, 7)
            return logits.baddbmm_(x, torch.ones(x.shape[0], 5, 7))

    assert count_macs(AccumulateInPlace(), (6, 5), batch_size=3) == 3 * 6 * 5 * 7


@pytest.mark.parametrize("groups", [1, 4, 16])
def test_train_macs_price_each_conv_gradient_like_the_forward(groups):
    conv = nn.Conv2d(16, 16, 3, padding=1, groups=groups, bias=False)
    conv.pretrained_cfg = {}
    forward = count_macs(conv, (16, 8, 8))
    assert forward == 8 * 8 * 16 * (16 // groups) * 9
    # The first layer's input needs no gradient, so backward is the weight gradient only: one more forward's worth.
    assert count_train_macs(conv, (16, 8, 8)) == 2 * forward


def test_cpu_peak_memory_sees_a_64_mib_buffer_and_reports_its_method():
    measured = peak_memory_mb(lambda: torch.ones(2**24).sum(), torch.device("cpu"))
    assert measured["method"] in ("rss_peak_growth", "unavailable (needs Linux /proc/self/clear_refs)")
    if measured["method"] == "rss_peak_growth":
        assert 48 < measured["mb"] < 128  # the float32 buffer is 64 MiB, far above malloc's reuse of freed pages


def test_suite_record_fields_schema_and_arithmetic(tiny_card):
    timer = ScriptedTimer(seconds=0.5)
    doc = run_suite([ZOO_NAME], TINY, timer=timer, matmul_size=32, progress=False, command="visionzoo bench x")
    report.validate_results(json.loads(json.dumps(doc)))
    assert doc["machine"]["torch_threads"] >= 1 and doc["machine"]["cpu_model"]
    assert doc["peak"]["gflops"] == pytest.approx(2 * 32**3 / 0.5 / 1e9)
    (record,) = doc["results"]
    assert record["error"] is None and record["family"] == "benchtest" and record["top1"] == 71.5
    assert record["input_size"] == [3, 16, 16]
    assert record["infer"]["img_per_s"] == pytest.approx(2 / 0.5)
    assert record["latency"]["median_ms"] == pytest.approx(500.0) and record["latency"]["p90_ms"] == pytest.approx(500.0)
    assert record["train"]["img_per_s"] == pytest.approx(2 / 0.5)
    assert {"infer", "train"} <= set(record["memory"])
    infer_gflops = 2 * record["gmacs"] * record["infer"]["img_per_s"]
    assert record["efficiency"]["infer"]["fraction_of_peak"] == pytest.approx(infer_gflops / doc["peak"]["gflops"])
    train_gflops = 2 * record["train_gmacs"] * record["train"]["img_per_s"]
    assert record["efficiency"]["train"]["fraction_of_peak"] == pytest.approx(train_gflops / doc["peak"]["gflops"])


class LoadedAtStartTimer(ScriptedTimer):
    """The first ``slow_calls`` timed calls take twice as long, as if other work shared the machine then."""

    def __init__(self, slow_calls: int):
        super().__init__(seconds=0.5e-6)
        self.slow_calls = slow_calls
        self.timed = 0

    def time_call(self, fn) -> float:
        self.timed += 1
        return super().time_call(fn) * (2 if self.timed <= self.slow_calls else 1)


def test_efficiency_divides_by_the_higher_of_the_peaks_measured_before_and_after_the_models(tiny_card):
    timer = LoadedAtStartTimer(slow_calls=20)  # the whole first peak measurement (matmul and 1x1 conv), nothing else
    doc = run_suite([ZOO_NAME], TINY, timer=timer, matmul_size=32, progress=False)
    quiet_gflops = 2 * 32**3 / 0.5e-6 / 1e9
    assert doc["peak"]["at_start_gflops"] == pytest.approx(quiet_gflops / 2)
    assert doc["peak"]["at_end_gflops"] == doc["peak"]["gflops"] == pytest.approx(quiet_gflops)
    infer = doc["results"][0]["efficiency"]["infer"]
    assert infer["fraction_of_peak"] == pytest.approx(infer["gflops"] / quiet_gflops)
    assert "the higher of the run's start 65.5, end 131.1" in report.header_lines(doc)[2]


def test_deploy_measures_the_bn_folded_model(tiny_card):
    settings = BenchSettings(batch_size=1, deploy=True, train=False, schedule=Schedule(warmup=0, iters=1))
    doc = run_suite([ZOO_NAME], settings, timer=ScriptedTimer(), matmul_size=16, progress=False)
    (record,) = doc["results"]
    assert record["params"] == count_params(fuse_model(TinyAttentionNet())) and record["train"] is None


def test_deploy_chunks_stages_for_eager_cpu_inference_only(monkeypatch):
    tuned = []
    monkeypatch.setattr("visionzoo.bench.runner.tune_stage_chunks", lambda model, images: tuned.append(images.shape))
    for settings in (BenchSettings(batch_size=4, deploy=True), BenchSettings(batch_size=4, deploy=True, compile=True),
                     BenchSettings(batch_size=4, deploy=False)):
        deploy_form(TinyAttentionNet(), settings)
    assert tuned == [(4, 3, 16, 16)]


def test_bf16_autocast_and_channels_last_run_on_the_cpu(tiny_card):
    settings = BenchSettings(batch_size=2, dtype="bf16", channels_last=True, schedule=Schedule(warmup=1, iters=1))
    doc = run_suite([ZOO_NAME], settings, timer=ScriptedTimer(), matmul_size=16, progress=False)
    assert doc["peak"]["dtype"] == "bfloat16" and doc["settings"]["channels_last"] is True
    assert doc["results"][0]["error"] is None and doc["results"][0]["train"]["img_per_s"] > 0


@pytest.mark.slow
@pytest.mark.parametrize("deploy", [False, True])
def test_compile_runs_on_the_cpu(tiny_card, deploy):
    settings = BenchSettings(batch_size=2, compile=True, deploy=deploy, train=False,
                             schedule=Schedule(warmup=1, iters=1))
    doc = run_suite([ZOO_NAME], settings, timer=ScriptedTimer(), matmul_size=16, progress=False)
    assert doc["results"][0]["error"] is None and doc["settings"]["compile"] is True
    assert ("weights frozen" in report.header_lines(doc)[1]) is deploy


def test_macs_and_efficiency_count_the_models_math_not_a_fast_paths_extra_work():
    # ConViT's split GPSA backend adds a positional matmul that the reference (one mixed map) does not need.
    settings = BenchSettings(batch_size=1, img_size=64, deploy=True, schedule=Schedule(warmup=0, iters=1))
    record = benchmark_model("vz_convit_tiny", settings, ScriptedTimer(seconds=0.5))
    model = timm.create_model("vz_convit_tiny").eval()
    with use_backend(REFERENCE):
        reference = count_macs(model, (3, 64, 64)), count_train_macs(model, (3, 64, 64))
    fast = count_macs(model, (3, 64, 64))
    assert fast > reference[0]
    assert (record["gmacs"], record["train_gmacs"]) == (reference[0] / 1e9, reference[1] / 1e9)
    assert record["efficiency"]["infer"]["gflops"] == pytest.approx(2 * reference[0] * 2.0 / 1e9)


def test_compile_freezes_the_weights_of_the_deploy_form_only(monkeypatch):
    # Freezing lets inductor treat weights as constants (prepacked, with bias and activation fused), which is
    # only valid for a model whose weights never change: the --deploy form, never the trained one.
    freezing_at_call, dynamic_at_compile = [], []

    def record_compile(model, dynamic=None):
        dynamic_at_compile.append(dynamic)

        def compiled(*args):
            freezing_at_call.append(torch._inductor.config.freezing)
            return model(*args)
        return compiled

    monkeypatch.setattr(torch, "compile", record_compile)
    images = torch.randn(2, 3, 8, 8)
    for deploy in (True, False):
        torch_runtime(TinyAttentionNet(), BenchSettings(compile=True, deploy=deploy), [])(images)
    train_step_fn(TinyAttentionNet(), BenchSettings(compile=True, deploy=True), images)()
    assert freezing_at_call == [True, False, False]
    assert dynamic_at_compile[:2] == [False, False]  # each timed shape gets its own static graph
    assert torch._inductor.config.freezing is False


def test_vs_timm_copies_weights_checks_outputs_and_reports_the_ratio(tiny_card):
    timer = ScriptedTimer(seconds=0.5)
    doc = run_suite([ZOO_NAME], TINY_VS, vs="timm", timer=timer, matmul_size=16, progress=False)
    vs = doc["results"][0]["vs"]
    assert vs["status"] == "ok" and vs["against"] == TIMM_NAME and vs["kind"] == "timm_pair"
    assert vs["max_abs_diff"] <= 1e-6 and vs["speed_ratio"] == pytest.approx(1.0)
    assert "model" not in vs  # the reference module is not part of the record
    # timm's efficiency by the same measure: its own MAC count at its img/s in the alternating run.
    timm_macs = count_macs(TinyTimmLayout(), tuple(doc["results"][0]["input_size"]))
    assert vs["other_gmacs"] == timm_macs / 1e9
    expected_gflops = 2 * timm_macs * vs["other_img_per_s"] / 1e9
    assert vs["other_efficiency"]["gflops"] == pytest.approx(expected_gflops)
    assert vs["other_efficiency"]["fraction_of_peak"] == pytest.approx(expected_gflops / doc["peak"]["gflops"])
    assert report.format_markdown(doc).splitlines()[0].endswith("| vs | vs eff. |")
    json.dumps(doc)


def test_tables_leave_out_the_comparison_columns_when_nothing_was_compared(tiny_card):
    doc = run_suite([ZOO_NAME], TINY, timer=ScriptedTimer(), matmul_size=16, progress=False)
    header, _, row = report.format_markdown(doc).splitlines()[:3]
    assert header.endswith("| eff. | train eff. |") and "vs" not in header
    assert header.count("|") == row.count("|")


def test_vs_timm_mismatch_aborts_the_pair_with_a_clear_message(tiny_card, monkeypatch):
    monkeypatch.setitem(PERTURB_FILTER, "enabled", True)
    doc = run_suite([ZOO_NAME], TINY, vs="timm", timer=ScriptedTimer(), matmul_size=16, progress=False)
    record = doc["results"][0]
    assert record["error"] is None and record["infer"]["img_per_s"] > 0  # the zoo model is still measured
    assert record["vs"]["status"] == "mismatch" and "speed_ratio" not in record["vs"]
    assert "disagree" in record["vs"]["message"] and "checkpoint_filter_fn" in record["vs"]["message"]
    assert "mismatch" in report.format_console(doc)
    report.validate_results(doc)


def test_vs_timm_with_unconvertible_keys_aborts_the_pair(tiny_card, monkeypatch):
    monkeypatch.setattr(sys.modules[__name__], "checkpoint_filter_fn", lambda state_dict, model: state_dict)
    doc = run_suite([ZOO_NAME], TINY, vs="timm", timer=ScriptedTimer(), matmul_size=16, progress=False)
    vs = doc["results"][0]["vs"]
    assert vs["status"] == "mismatch" and "did not turn timm's state dict into ours" in vs["message"]


def test_a_failing_comparison_model_keeps_the_zoo_figures(tiny_card):
    def fixed_size_baseline(name: str, **kwargs) -> nn.Module:
        return nn.Sequential(nn.Flatten(), nn.Linear(3 * 384 * 384, 5))  # timed at its default 224 px: fails

    doc = run_suite([ZOO_NAME], TINY_VS, vs="resnet18", build_other=fixed_size_baseline, timer=ScriptedTimer(),
                    matmul_size=16, progress=False)
    record = doc["results"][0]
    assert record["error"] is None and record["infer"]["img_per_s"] > 0
    assert record["vs"]["status"] == "error" and "timing resnet18 failed: RuntimeError" in record["vs"]["message"]


def test_perturbation_wakes_zero_initialised_parameters_before_the_check():
    model = TinyTimmLayout()
    nn.init.zeros_(model.head.weight)
    before = {name: param.clone() for name, param in model.named_parameters()}
    perturb_parameters(model)
    assert all(not torch.equal(param, before[name]) for name, param in model.named_parameters())
    assert model.head.weight.abs().min() > 0


def test_vs_timm_without_counterpart_is_noted(tiny_card):
    tiny_card["timm_name"] = None
    doc = run_suite([ZOO_NAME], TINY, vs="timm", timer=ScriptedTimer(), matmul_size=16, progress=False)
    assert doc["results"][0]["vs"]["status"] == "no_counterpart"


def test_outputs_files_and_readme_rendering(tiny_card, tmp_path):
    doc = run_suite([ZOO_NAME], TINY_VS, vs=TIMM_NAME, timer=ScriptedTimer(), matmul_size=16, progress=False,
                    command="visionzoo bench vz_benchtest_tiny")
    doc["results"].append({"model": "vz_broken_x", "family": None, "top1": None, "vs": None, "error": "boom"})
    paths = report.write_outputs(doc, tmp_path / "out")
    plotted = {"plot"} if HAVE_MATPLOTLIB else set()
    assert set(paths) == {"json", "csv", "markdown"} | plotted and all(p.stat().st_size > 0 for p in paths.values())
    rows = list(csv.DictReader(paths["csv"].open()))
    assert [row["model"] for row in rows] == [ZOO_NAME, "vz_broken_x"] and rows[1]["error"] == "boom"
    assert rows[0]["vs_against"] == TIMM_NAME and float(rows[0]["vs_speed_ratio"]) == pytest.approx(1.0)
    console = report.format_console(doc)
    assert ZOO_NAME in console and "FAILED vz_broken_x: boom" in console and "GFLOP/s" in console

    readme = tmp_path / "README.md"
    readme.write_text(f"# title\n\nbefore\n{report.README_START}\nold table\n{report.README_END}\nafter\n")
    plot = tmp_path / "docs" / "plot.png"
    skipped = report.render_readme(paths["json"], readme, plot)
    text = readme.read_text()
    assert "old table" not in text and text.startswith("# title\n\nbefore\n") and text.endswith("after\n")
    assert f"| {ZOO_NAME} | benchtest | 71.5 |" in text
    if HAVE_MATPLOTLIB:
        assert skipped is None and "(docs/plot.png)" in text and plot.exists()
    else:
        assert "visionzoo[bench]" in skipped and not plot.exists()
    report.render_readme(paths["json"], readme, plot)
    assert readme.read_text() == text  # regenerating from the same file changes nothing

    readme.write_text("no markers here\n")
    with pytest.raises(report.ResultsFormatError, match="bench:start"):
        report.render_readme(paths["json"], readme, plot)


def test_validation_names_the_missing_field():
    with pytest.raises(report.ResultsFormatError, match="lacks the field 'peak'"):
        report.validate_results({"schema": "visionzoo.bench/1", "machine": {}, "settings": {}, "notes": {},
                                 "results": []})
    with pytest.raises(report.ResultsFormatError, match="schema"):
        report.validate_results({"schema": "other/9", "machine": {}, "settings": {}, "peak": {}, "notes": {},
                                 "results": []})


def test_default_set_takes_the_smallest_registered_variant_per_family():
    cards = {
        "alpha": {"variants": {"vz_alpha_big": {"params": 90}, "vz_alpha_small": {"params": 10},
                               "vz_alpha_unregistered": {"params": 1}}},
        "beta": {"variants": {"vz_beta_only": {"params": 50}}},
        "gamma": {"variants": {"vz_gamma_x": {"params": 5}}},
    }
    registered = {"vz_alpha_big", "vz_alpha_small", "vz_beta_only"}
    assert default_model_set(cards, registered) == ["vz_alpha_small", "vz_beta_only"]
    with pytest.raises(BenchArgumentError, match="no registered zoo model"):
        default_model_set({"gamma": cards["gamma"]}, registered)


def test_cli_end_to_end_writes_results(tmp_path, capsys):
    code = main(["bench", ZOO_NAME, "--batch-size", "2", "--warmup", "0", "--iters", "1", "--no-train",
                 "--matmul-size", "32", "--no-progress", "--output-dir", str(tmp_path)])
    assert code == 0
    out = capsys.readouterr().out
    assert ZOO_NAME in out and "Peak:" in out
    doc = report.load_results(tmp_path / "bench.json")
    assert doc["settings"]["batch_size"] == 2 and doc["results"][0]["model"] == ZOO_NAME


@pytest.mark.parametrize("argv, message", [
    (["vz_benchtest_tiy"], "Did you mean: vz_benchtest_tiny"),
    (["vz_nothing_here_*"], "matches no zoo model"),
    ([ZOO_NAME, "--dtype", "fp16"], "fp16 is a GPU precision"),
    ([ZOO_NAME, "--device", "tpu"], "--device must be cpu or cuda"),
    ([ZOO_NAME, "--dtype", "fp8"], "--dtype must be fp32, bf16 or fp16"),
    ([ZOO_NAME, "--runtime", "onnxruntime", "--dtype", "bf16"], "--dtype bf16 applies to --runtime torch"),
    ([ZOO_NAME, "--runtime", "executorch", "--compile"], "--compile applies to --runtime torch"),
    ([ZOO_NAME, "--runtime", "onnxruntime", "--channels-last"], "--channels-last applies to --runtime torch"),
    ([ZOO_NAME, "--runtime", "tvm"], "not available; available: executorch, onnxruntime, torch"),
    ([ZOO_NAME, "--vs", "resnet5O"], "Did you mean: resnet50"),
    ([ZOO_NAME, "--batch-size", "0"], "--batch-size must be at least 1"),
    ([ZOO_NAME, "--threads", "0"], "--threads must be at least 1"),
    ([ZOO_NAME, "--compile", "--warmup", "0"], "first call compiles"),
    ([ZOO_NAME, "--default-set"], "not both"),
    ([], "name the models to measure"),
    (["--render-readme", "missing.json"], "does not exist"),
])
def test_bad_arguments_exit_2_with_a_clear_message(argv, message, capsys):
    assert main(["bench", *argv]) == 2
    assert message in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message given when no GPU is present")
def test_cuda_without_gpu_is_a_clear_error(capsys):
    assert main(["bench", ZOO_NAME, "--device", "cuda"]) == 2
    assert "torch sees no CUDA GPU" in capsys.readouterr().err


def test_committed_results_file_renders():
    """The README's results come from results/*.json: each must still follow the schema this version reads."""
    committed = sorted((Path(__file__).resolve().parents[2] / "results").glob("bench_*.json"))
    assert committed, "results/ holds no bench_*.json for the README's results table"
    for path in committed:
        doc = report.load_results(path)
        assert doc["results"] and all(record.get("model") for record in doc["results"])
        assert report.format_markdown(doc).startswith("| model |")


@pytest.mark.parametrize("runtime", ["onnxruntime", "executorch"])
def test_exported_runtime_checks_each_program_then_times_it(runtime, tiny_card):
    pytest.importorskip(runtime)
    settings = BenchSettings(batch_size=2, runtime=runtime, train=False,
                             schedule=Schedule(warmup=1, iters=MIN_PAIRS))
    doc = run_suite([ZOO_NAME], settings, vs="timm", timer=ScriptedTimer(seconds=0.25), matmul_size=16,
                    progress=False)
    report.validate_results(json.loads(json.dumps(doc)))
    (record,) = doc["results"]
    assert record["error"] is None and record["train"] is None
    assert record["infer"]["img_per_s"] == pytest.approx(2 / 0.25)
    programs = record["runtime"]["programs"]
    assert [program["input_shape"] for program in programs] == [[2, 3, 16, 16], [1, 3, 16, 16]]
    assert all(program["max_rel_error"] < 1e-4 and program["file_bytes"] > 0 for program in programs)
    assert record["runtime"]["threads"] == torch.get_num_threads()
    assert record["vs"]["status"] == "ok" and record["vs"]["speed_ratio"] == pytest.approx(1.0)
    assert any(line.startswith(f"Runtime: {runtime}") for line in report.header_lines(doc))


def test_exported_runtime_refuses_to_time_a_program_that_disagrees(tiny_card, monkeypatch):
    pytest.importorskip("onnxruntime")
    from visionzoo.export.formats import OnnxFormat

    monkeypatch.setattr(OnnxFormat, "runner", lambda self, path, threads=None: lambda x: torch.zeros(x.shape[0], 5))
    settings = BenchSettings(batch_size=2, runtime="onnxruntime", train=False, schedule=Schedule(warmup=0, iters=1))
    (record,) = run_suite([ZOO_NAME], settings, timer=ScriptedTimer(), matmul_size=16, progress=False)["results"]
    assert "differs from the PyTorch model by max relative error 1" in record["error"]
    assert "infer" not in record


def test_exported_runtime_names_the_shapes_it_was_prepared_for():
    pytest.importorskip("onnxruntime")
    from visionzoo.bench.runtimes import get_runtime

    infer = get_runtime("onnxruntime")(TinyAttentionNet(), BenchSettings(train=False), [(1, 3, 16, 16)])
    assert infer(torch.randn(1, 3, 16, 16)).shape == (1, 5)
    with pytest.raises(ValueError, match=r"no exported program for input shape \[2, 3, 16, 16\]"):
        infer(torch.randn(2, 3, 16, 16))


def test_exported_runtime_measures_inference_only():
    with pytest.raises(BenchArgumentError, match="pass --no-train"):
        BenchSettings(runtime="onnxruntime", train=True).validate()


def test_markers_quoted_in_prose_are_left_alone_and_two_sections_refused():
    quoted = f"Run it to rewrite `{report.README_START}` ... `{report.README_END}`.\n"
    text = f"{quoted}{report.README_START}\nold\n{report.README_END}\n"
    assert report.replace_between_markers(text, "new\n", "doc.md") == f"{quoted}{report.README_START}\nnew\n{report.README_END}\n"
    with pytest.raises(report.ResultsFormatError, match="has 2 .* sections; it needs exactly one"):
        report.replace_between_markers(text + text, "new\n", "doc.md")


class CountingTimer(ScriptedTimer):
    """Each call takes longer than the one before: a figure taken from one run cannot pass for another's."""

    def time_call(self, fn) -> float:
        fn()
        self.calls.append("call")
        return 0.01 * self.calls.count("call")


def test_vs_ratio_comes_with_the_range_of_its_pairs():
    zoo = [0.10, 0.10, 0.20, 0.10, 0.10]
    other = [0.20, 0.15, 0.20, 0.30, 0.20]  # per-pair ratios 2, 1.5, 1, 3, 2
    pair = summarize_pair(zoo, other, batch_size=4)
    assert pair["speed_ratio"] == pytest.approx(0.20 / 0.10) and pair["pairs"] == 5
    assert pair["speed_ratio_p10"] == pytest.approx(1.2) and pair["speed_ratio_p90"] == pytest.approx(2.6)
    record = {"vs": {"status": "ok", "against": "timm_x", **pair}}
    assert report.COLUMNS[-2][1](record) == "2.00× timm_x (1.20–2.60, 5 pairs)"
    old_record = {"vs": {"status": "ok", "against": "timm_x", "speed_ratio": 2.0}}  # results from before the range
    assert report.COLUMNS[-2][1](old_record) == "2.00× timm_x"


def test_vs_times_at_least_the_minimum_pairs_and_refuses_fewer_iters(capsys):
    schedule = check_vs_schedule(Schedule(warmup=0, time_budget=1.0, min_iters=2))
    zoo_times, other_times = measure_alternating(lambda: None, lambda: None, ScriptedTimer(5.0), schedule)
    assert len(zoo_times) == len(other_times) == MIN_PAIRS  # the budget alone would stop after 2
    with pytest.raises(ValueError, match=f"at least {MIN_PAIRS} alternating pairs to compare medians"):
        check_vs_schedule(Schedule(iters=MIN_PAIRS - 1))
    assert main(["bench", ZOO_NAME, "--vs", "timm", "--iters", "2"]) == 2
    assert "--iters 2 times only 2: raise --iters or use --time-budget" in capsys.readouterr().err


def test_vs_efficiency_of_both_sides_comes_from_the_alternating_run(tiny_card):
    doc = run_suite([ZOO_NAME], TINY_VS, vs="timm", timer=CountingTimer(), matmul_size=16, progress=False)
    record = doc["results"][0]
    vs, peak = record["vs"], doc["peak"]["gflops"]
    ours = 2 * record["gmacs"] * vs["zoo_img_per_s"]
    theirs = 2 * vs["other_gmacs"] * vs["other_img_per_s"]
    assert vs["zoo_efficiency"]["fraction_of_peak"] == pytest.approx(ours / peak)
    assert vs["other_efficiency"]["fraction_of_peak"] == pytest.approx(theirs / peak)
    assert vs["zoo_img_per_s"] != pytest.approx(record["infer"]["img_per_s"])  # not the separate throughput run
    cell = report.COLUMNS[-1][1](record)
    assert cell == f"{100 * ours / peak:.1f}% / {100 * theirs / peak:.1f}%"
    assert "ours / the other's efficiency, both from their img/s in that alternating run" in report.format_console(doc)
    rows = report.table_rows(doc)
    assert rows[0][-1] == cell


def test_unwritable_output_dir_is_refused_before_any_measurement(tmp_path, capsys, monkeypatch):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    monkeypatch.setattr("visionzoo.bench.cli.run_suite", lambda *args, **kwargs: pytest.fail("measured anyway"))
    assert main(["bench", ZOO_NAME, "--output-dir", str(blocker / "out")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cannot create the output folder" in err and "--output-dir" in err
    (tmp_path / "out" / "bench.json").mkdir(parents=True)
    assert main(["bench", ZOO_NAME, "--output-dir", str(tmp_path / "out")]) == 2
    assert "bench.json is a folder" in capsys.readouterr().err


def test_results_are_printed_before_a_write_that_fails(tmp_path, capsys, monkeypatch):
    def disk_full(doc, output_dir):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("visionzoo.bench.cli.write_outputs", disk_full)
    code = main(["bench", ZOO_NAME, "--batch-size", "2", "--warmup", "0", "--iters", "1", "--no-train",
                 "--matmul-size", "32", "--no-progress", "--output-dir", str(tmp_path)])
    captured = capsys.readouterr()
    assert code == 1 and f"\n{ZOO_NAME}" in captured.out and "Peak:" in captured.out
    assert "the results above could not be written" in captured.err and "No space left on device" in captured.err


def test_a_failed_write_keeps_the_earlier_results_file(tiny_card, tmp_path, monkeypatch):
    doc = run_suite([ZOO_NAME], TINY, timer=ScriptedTimer(), matmul_size=16, progress=False)
    (tmp_path / "bench.json").write_text("earlier results\n")

    def broken_dumps(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(report.json, "dumps", broken_dumps)
    with pytest.raises(OSError):
        report.write_outputs(doc, tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == ["bench.json"]
    assert (tmp_path / "bench.json").read_text() == "earlier results\n"


def _bench_json(tmp_path, *argv) -> dict:
    code = main(["bench", *argv, "--batch-size", "2", "--warmup", "0", "--iters", "1", "--no-train",
                 "--matmul-size", "32", "--no-progress", "--output-dir", str(tmp_path / "out")])
    assert code == 0
    return report.load_results(tmp_path / "out" / "bench.json")


def test_checkpoint_gives_the_trained_class_count_and_input_size(tmp_path):
    trained = TinyAttentionNet(num_classes=3)
    checkpoint = tmp_path / "best.pth"
    torch.save({"model": trained.state_dict(), "epoch": 4,
                "config": {"model": {"name": ZOO_NAME, "num_classes": 3, "kwargs": {}}, "data": {"input_size": 24}}},
               checkpoint)
    record = _bench_json(tmp_path, "--checkpoint", str(checkpoint))["results"][0]
    assert record["model"] == ZOO_NAME and record["input_size"] == [3, 24, 24]
    assert record["params"] == count_params(trained)
    record = _bench_json(tmp_path, ZOO_NAME, "--num-classes", "3")["results"][0]
    assert record["params"] == count_params(trained) and record["input_size"] == [3, 16, 16]


def test_checkpoint_of_a_plain_state_dict_needs_the_class_count(tmp_path, capsys):
    checkpoint = tmp_path / "weights.pth"
    torch.save(TinyAttentionNet(num_classes=3).state_dict(), checkpoint)
    assert main(["bench", ZOO_NAME, "--checkpoint", str(checkpoint)]) == 2
    err = capsys.readouterr().err
    assert "head.weight: checkpoint (3, 8) vs model (5, 8)" in err and "pass --num-classes N" in err
    assert main(["bench", ZOO_NAME, "vz_other", "--checkpoint", str(checkpoint)]) == 2
    assert "--checkpoint holds one model" in capsys.readouterr().err


class TinyPointNet(nn.Module):
    """A point-cloud classifier standing in for a ``points`` family: (batch, points, xyz) in, logits out."""

    def __init__(self, num_classes: int = 4):
        super().__init__()
        self.pretrained_cfg = {"input_size": (64, 3)}
        self.mlp = nn.Linear(3, WIDTH)
        self.head = nn.Linear(WIDTH, num_classes)

    seen_shapes: list[tuple[int, ...]] = []  # on the class: the bench runs copies (deploy form, training copy)

    def forward(self, points: torch.Tensor) -> torch.Tensor:
        if points.dim() != 3 or points.shape[-1] != 3:
            raise ValueError(f"expected (batch, points, 3), got {tuple(points.shape)}")
        self.seen_shapes.append(tuple(points.shape))
        return self.head(self.mlp(points).amax(dim=1))


@pytest.mark.parametrize("img_size, points", [(None, 64), (96, 96)])
def test_a_points_family_is_measured_on_point_clouds(img_size, points):
    model = TinyPointNet()
    TinyPointNet.seen_shapes.clear()
    register_family(Family("benchpoints", (TinyPointNet,), lambda state, m: state, input_kind="points"))
    try:
        settings = BenchSettings(batch_size=3, img_size=img_size, channels_last=True, deploy=True,
                                 schedule=Schedule(warmup=0, iters=1))
        record = benchmark_model("vz_benchpoints", settings, ScriptedTimer(), build=lambda name: model)
    finally:
        unregister_family("benchpoints")
    assert set(TinyPointNet.seen_shapes) >= {(3, points, 3), (1, points, 3)}
    assert record["gmacs"] == pytest.approx(points * 3 * WIDTH / 1e9 + WIDTH * 4 / 1e9)
