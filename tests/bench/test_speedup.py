"""bench.speedup: op and model ratios over dense, merged from runs and rendered into docs and a card."""
import json

import pytest
import yaml

from visionzoo.bench.speedup import CARD_MARKERS, MARKDOWN_MARKERS, main, merge, speedups

MACHINE = {"device_name": "Test CPU", "device": "cpu", "torch_threads": 2, "torch": "2.x"}


def _ops_run(size, kept_keys_vs_dense):
    def row(backend, eager, compiled):
        return {"op": "sparse_topk_attention", "call": "8x6x197x64", "backend": backend,
                "eager": {"ms": 1.0, "vs_dense": eager}, "compiled": {"ms": 1.0, "vs_dense": compiled}}

    rows = [row("reference", 0.3, 0.4), row("kept_keys", kept_keys_vs_dense, 1.2), row("dense (replaced)", 1.0, 1.0),
            {"op": "other", "call": "x", "backend": "reference", "eager": {"ms": 1.0}}]
    return {"machine": MACHINE, "settings": {"img_size": size}, "rows": rows}


def _model_run(size, compile, ratio):
    vs = {"against": "deit_small_patch16_224", "speed_ratio": ratio, "speed_ratio_p10": ratio - 0.1,
          "speed_ratio_p90": ratio + 0.1, "pairs": 6}
    return {"machine": MACHINE, "settings": {"img_size": size, "compile": compile, "batch_size": 8},
            "results": [{"model": "vz_sparsifiner_deit_small", "vs": vs}]}


def test_speedups_pair_each_size_and_mode_with_its_op_and_model_ratios():
    results = merge([_ops_run(224, 1.6)], [_model_run(224, False, 0.6), _model_run(224, True, 0.7)], "cmd")
    rows = speedups(results)
    assert [(row["img_size"], row["mode"]) for row in rows] == [(224, "compiled"), (224, "eager")]
    eager = rows[1]
    assert eager["ops"]["sparse_topk_attention"]["backends"] == {"reference": 0.3, "kept_keys": 1.6}
    assert eager["model"]["ratio"] == 0.6 and rows[0]["model"]["ratio"] == 0.7


def test_merge_refuses_a_run_that_is_not_a_comparison():
    with pytest.raises(ValueError, match="--vs"):
        merge([], [{"results": [{"model": "m", "vs": None}]}], "cmd")


def test_render_writes_the_measured_ratios_between_the_markers(tmp_path):
    results_path = tmp_path / "results.json"
    results_path.write_text(json.dumps(merge([_ops_run(384, 1.53)], [_model_run(384, False, 0.45)], "cmd")))
    doc = tmp_path / "doc.md"
    doc.write_text(f"intro\n{MARKDOWN_MARKERS[0]}\nold\n{MARKDOWN_MARKERS[1]}\noutro\n")
    card = tmp_path / "card.yaml"
    card.write_text(f"family: x\n{CARD_MARKERS[0]}\n{CARD_MARKERS[1]}\nvariants: {{}}\n")
    assert main(["render", str(results_path), "--markdown", str(doc), "--card", str(card)]) == 0
    text = doc.read_text()
    assert "kept_keys 1.53×" in text and "0.45× deit_small_patch16_224 (0.35–0.55, 6 pairs" in text
    assert text.startswith("intro\n") and text.endswith("outro\n") and "old" not in text
    measured = yaml.safe_load(card.read_text())["measured_speedup"]["384 eager"]
    assert measured["sparse_topk_attention_vs_dense"]["kept_keys"] == 1.53
    assert measured["model_vs_deit_small_patch16_224"]["ratio"] == 0.45


def test_render_refuses_a_file_without_markers(tmp_path):
    results_path = tmp_path / "results.json"
    results_path.write_text(json.dumps(merge([_ops_run(224, 1.6)], [], "cmd")))
    doc = tmp_path / "doc.md"
    doc.write_text("no markers\n")
    with pytest.raises(SystemExit, match="speedup:start"):
        main(["render", str(results_path), "--markdown", str(doc)])


def test_runs_of_one_comparison_in_several_processes_report_their_median_and_each_ratio(tmp_path):
    runs = [_model_run(384, False, ratio) for ratio in (1.06, 0.98, 1.03)]
    model = speedups(merge([], runs, "cmd"))[0]["model"]
    assert [process["ratio"] for process in model["processes"]] == [1.06, 0.98, 1.03]
    assert model["ratio"] == 1.03 and model["pairs"] == 18
    assert model["p10"] == pytest.approx(0.88) and model["p90"] == pytest.approx(1.16)
    results_path = tmp_path / "results.json"
    results_path.write_text(json.dumps(merge([], runs, "cmd")))
    doc = tmp_path / "doc.md"
    doc.write_text(f"{MARKDOWN_MARKERS[0]}\n{MARKDOWN_MARKERS[1]}\n")
    card = tmp_path / "card.yaml"
    card.write_text(f"{CARD_MARKERS[0]}\n{CARD_MARKERS[1]}\n")
    main(["render", str(results_path), "--markdown", str(doc), "--card", str(card)])
    text = doc.read_text()
    assert "1.03× deit_small_patch16_224 (median of 3 processes: 1.06 / 0.98 / 1.03; pairs 0.88–1.16" in text
    assert "Command: <code>cmd</code>" in text
    measured = yaml.safe_load(card.read_text())["measured_speedup"]["384 eager"]["model_vs_deit_small_patch16_224"]
    assert measured["ratio"] == 1.03 and measured["processes"] == [1.06, 0.98, 1.03]
