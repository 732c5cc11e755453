"""The tools and the op registry: bench runs and records the ops' backends, export asks for portable ones."""
import pytest
import torch

from visionzoo.bench import report
from visionzoo.bench.runner import BenchSettings, benchmark_model
from visionzoo.bench.suite import run_suite
from visionzoo.bench.timing import Schedule, WallTimer
from visionzoo.cli import main
from visionzoo.export.core import ops_backends_for
from visionzoo.export.formats import FORMATS
from visionzoo.layers.deform_conv import DeformConv2d

MODEL = "vz_convit_tiny"  # GPSA and plain attention: two ops with a fast CPU backend each
QUICK = dict(batch_size=1, img_size=48, train=False, schedule=Schedule(warmup=0, iters=1))


def test_bench_records_the_backend_each_op_ran():
    record = benchmark_model(MODEL, BenchSettings(**QUICK), WallTimer())
    assert record["ops_backends"] == {"gated_positional_attention": ["sdpa_split"],
                                      "scaled_dot_product_attention": ["sdpa"]}


def test_bench_ops_backend_is_applied_recorded_and_in_the_header():
    doc = run_suite([MODEL], BenchSettings(**QUICK, ops_backend="reference"), matmul_size=16, progress=False)
    (record,) = doc["results"]
    assert record["error"] is None and doc["settings"]["ops_backend"] == "reference"
    assert record["ops_backends"] == {"gated_positional_attention": ["reference"],
                                      "scaled_dot_product_attention": ["reference"]}
    assert ("Ops backends (forced: reference): gated_positional_attention reference; "
            "scaled_dot_product_attention reference.") in report.header_lines(doc)
    assert "Ops backends (forced: reference)" in report.format_markdown(doc)


@pytest.mark.parametrize("argv, environment", [(["--ops-backend", "sdpaa"], None), ([], "sdpaa")])
def test_bench_refuses_a_backend_no_op_has(argv, environment, monkeypatch, capsys, tmp_path):
    if environment:
        monkeypatch.setenv("VZ_OPS_BACKEND", environment)
    assert main(["bench", MODEL, "--output-dir", str(tmp_path), *argv]) == 2
    error = capsys.readouterr().err
    assert "'sdpaa' names no ops backend; valid backends: auto, reference, " in error
    assert ("--ops-backend 'sdpaa'" if argv else "VZ_OPS_BACKEND='sdpaa'") in error
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("fmt, kernel", [("onnx", "torchvision.deform_conv2d.default"),
                                         ("executorch", "aten.grid_sampler.default"),
                                         ("coreml", "aten.grid_sampler.default")])
def test_export_traces_portable_backends_where_the_format_needs_them(fmt, kernel):
    layer = DeformConv2d(3, 4, kernel_size=2, stride=2)
    with ops_backends_for(FORMATS[fmt]):
        program = torch.export.export(layer, (torch.randn(2, 3, 6, 6),))
    targets = {str(node.target) for node in program.graph.nodes}
    other_kernel = ({"torchvision.deform_conv2d.default", "aten.grid_sampler.default"} - {kernel}).pop()
    assert kernel in targets and other_kernel not in targets
