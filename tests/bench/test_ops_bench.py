"""``visionzoo bench --ops``: op calls captured from a real forward, replayed per backend, counted and tabled."""
import json

import pytest
import torch

from visionzoo.bench.ops import DENSE, OpCall, bench_ops, capture_calls, format_ops_table, reference_flops, time_call
from visionzoo.bench.runner import BenchSettings
from visionzoo.bench.timing import Schedule
from visionzoo.cli import main
from visionzoo.models._factory import create_model
from visionzoo.ops import get_op, record_calls

QUICK = {"batch_size": 1, "img_size": 64, "schedule": Schedule(warmup=0, iters=1)}


def test_record_calls_keeps_each_eager_call_with_its_arguments():
    x, weight = torch.randn(1, 4, 4, 6), torch.randn(18, 6)
    with record_calls() as calls:
        get_op("window_attention")(x, weight, None, (2, 2), 2)
        get_op("window_attention")(x, weight, None, (4, 4), 2)
    assert [(name, args[3]) for name, args, _ in calls] == [("window_attention", (2, 2)),
                                                              ("window_attention", (4, 4))]
    assert calls[0][1][0] is x


def test_capture_merges_repeated_calls_and_names_their_models():
    calls = capture_calls(["vz_davit_tiny"], BenchSettings(**QUICK))
    window_calls = [call for call in calls if call.op == "window_attention"]
    # DaViT-T at 64 px: stage maps 16, 8, 4, 2 padded to the 7x7 window (21, 14, 7, 7) and 1+1+3+1 blocks;
    # stages 3 and 4 share the 7x7 map but not the width.
    assert [call.args[0].shape[1:3] for call in window_calls] == [(21, 21), (14, 14), (7, 7), (7, 7)]
    assert [call.count for call in window_calls] == [1, 1, 3, 1]
    assert all(call.models == ["vz_davit_tiny"] for call in calls)


def test_reference_flops_count_the_projection_and_both_attention_matmuls():
    call = OpCall("window_attention", (torch.randn(1, 7, 7, 8), torch.randn(24, 8), None, (7, 7), 2), {},
                  ["test"])
    projection = 2 * 49 * 8 * 24
    attention = 2 * (2 * 49 * 49 * 8)  # q kᵀ and softmax · v over 2 heads of 4 channels
    assert reference_flops(call) == projection + attention


def test_rows_give_every_backend_and_the_reference_is_the_unit_of_speedup():
    rows = bench_ops(["vz_davit_tiny"], BenchSettings(**QUICK))
    first_call = rows[0]["call"]
    backends = [row["backend"] for row in rows if row["call"] == first_call]
    assert backends == get_op(rows[0]["op"]).available()
    for row in rows:
        if row["backend"] == "reference":
            assert row["eager"]["speedup"] == pytest.approx(1.0)
        if "ms" in row["eager"]:
            assert row["eager"]["gflops"] == pytest.approx(row["gflop"] / row["eager"]["ms"] * 1e3)
    table = format_ops_table(rows, markdown=True)
    assert table.count("\n") == len(rows) + 1 and "eager GFLOP/s" in table


def test_a_refused_backend_shows_its_reason_instead_of_a_time():
    call = OpCall("window_attention", (torch.randn(1, 4, 4, 6), torch.randn(18, 6), None, (2, 2), 2), {}, ["test"])
    refused = BenchSettings(**QUICK, device="cpu")

    result = time_call(call, "no_such_backend", False, refused)
    assert "ms" not in result and "has no backend 'no_such_backend'" in result["error"]


def test_cli_writes_the_ops_table(tmp_path, capsys):
    code = main(["bench", "vz_davit_tiny", "--ops", "--batch-size", "1", "--img-size", "64", "--iters", "1",
                 "--warmup", "0", "--no-progress", "--output-dir", str(tmp_path)])
    assert code == 0
    doc = json.loads((tmp_path / "ops.json").read_text())
    assert doc["settings"]["batch_size"] == 1 and {row["op"] for row in doc["rows"]} >= {"window_attention"}
    assert "| window_attention |" in (tmp_path / "ops.md").read_text()
    assert "eager speedup" in capsys.readouterr().out


def test_reference_flops_of_spectral_gating_are_its_two_real_ffts():
    call = OpCall("spectral_gating", (torch.randn(1, 8, 8, 4), torch.randn(8, 5, 4, 2)), {}, ["test"])
    one_transform = 2.5 * 64 * 6 * 4  # 2.5·N·log2(N) real FLOPs per 64-point plane, 4 channels
    assert reference_flops(call) == 2 * one_transform


def test_an_op_that_replaces_dense_work_is_timed_against_it():
    rows = bench_ops(["vz_sparsifiner_deit_tiny"], BenchSettings(**QUICK),
                     build=lambda name: create_model(name, depth=1, num_classes=10))
    sparse = [row for row in rows if row["op"] == "sparse_topk_attention"]
    assert [row["backend"] for row in sparse] == [*get_op("sparse_topk_attention").available(), DENSE]
    dense = sparse[-1]["eager"]
    assert dense["vs_dense"] == pytest.approx(1.0)
    for row in sparse:
        if "ms" in row["eager"]:
            assert row["eager"]["vs_dense"] == pytest.approx(dense["ms"] / row["eager"]["ms"])
    assert "eager vs dense" in format_ops_table(sparse, markdown=True)
    assert all("vs_dense" not in row["eager"] for row in rows if row["op"] != "sparse_topk_attention")
