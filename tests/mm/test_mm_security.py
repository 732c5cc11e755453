"""No code runs from a checkpoint on any mm path.

The payload is the one that beat the old allow-list (which admitted ``builtins.getattr``):
``getattr(getattr, '__self__')`` is the builtins module, ``getattr(builtins, 'eval')`` is eval, and torch's
own allow-listed ``torch._tensor._rebuild_from_type_v2(func, ...)`` calls it. Each test checks that a
marker file the payload would create does not exist afterwards.
"""
from __future__ import annotations

import collections
import os
import sys

import numpy as np
import pytest
import torch

pytest.importorskip("mmengine")

from mmengine.logging.history_buffer import HistoryBuffer  # noqa: E402

from visionzoo.mm.checkpoint import load_mmengine_checkpoint  # noqa: E402
from visionzoo.models import CheckpointError  # noqa: E402


class _BuiltinsModule:
    def __reduce__(self):
        return getattr, (getattr, "__self__")


class _Eval:
    def __reduce__(self):
        return getattr, (_BuiltinsModule(), "eval")


class _RunsCode:
    """Unpickles as ``_rebuild_from_type_v2(eval, Tensor, (code,), {})``: a tensor, after ``code`` has run."""

    def __init__(self, code: str):
        self.code = code

    def __reduce__(self):
        return torch._tensor._rebuild_from_type_v2, (_Eval(), torch.Tensor, (self.code,), {})


class _HistoryBufferAttribute:
    def __init__(self, name: str):
        self.name = name

    def __reduce__(self):
        return getattr, (HistoryBuffer, self.name)


def _touch(marker) -> str:
    return f"(__import__('pathlib').Path({str(marker)!r}).touch(), __import__('torch').zeros(1))[1]"


@pytest.fixture
def evil_checkpoint(tmp_path):
    """A resume-shaped checkpoint whose message hub runs code; returns (path, marker it would create)."""
    marker = tmp_path / "code_ran"
    path = tmp_path / "evil.pth"
    torch.save({"meta": {"epoch": 1, "iter": 1}, "state_dict": {}, "message_hub": _RunsCode(_touch(marker))}, path)
    return path, marker


def test_payload_runs_code_where_getattr_is_allow_listed(evil_checkpoint):
    """The payload is live: the old allow-list let it run (so its refusal below means something)."""
    path, marker = evil_checkpoint
    with torch.serialization.safe_globals([getattr]):
        torch.load(path, weights_only=True)
    assert marker.exists()


def test_loader_refuses_the_payload(evil_checkpoint):
    path, marker = evil_checkpoint
    refusal = r"refused to load .*evil.pth: .*calls getattr\(getattr, '__self__'\).*Nothing from the file was executed"
    with pytest.raises(CheckpointError, match=refusal):
        load_mmengine_checkpoint(path)
    assert not marker.exists()


class _MakesDirectory:
    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return os.mkdir, (self.path,)


def test_loader_refuses_other_callables_without_advising_to_disable_the_check(tmp_path):
    torch.save({"meta": _MakesDirectory(tmp_path / "made")}, tmp_path / "mkdir.pth")
    with pytest.raises(CheckpointError, match=r"\(Trying to load unsupported GLOBAL \w+\.mkdir") as refusal:
        load_mmengine_checkpoint(tmp_path / "mkdir.pth")
    assert "weights_only" not in str(refusal.value)
    assert not (tmp_path / "made").exists()


def test_loader_answers_getattr_only_with_statistic_names(tmp_path):
    torch.save({"message_hub": _HistoryBufferAttribute("__init__")}, tmp_path / "init.pth")
    with pytest.raises(CheckpointError, match=r"calls getattr\(HistoryBuffer, '__init__'\)"):
        load_mmengine_checkpoint(tmp_path / "init.pth")


def test_loader_rebuilds_history_buffers_from_data(tmp_path):
    """What mmengine writes (buffers with their statistics methods, numpy scalars, a Counter) loads as data.

    The methods a file names are not installed: mmengine's own unpickling would register them for every buffer.
    """
    buffer = HistoryBuffer([0.5, 0.25, 0.125], [1, 2, 1], max_length=7)
    methods = dict(HistoryBuffer._statistics_methods)
    buffer._statistics_methods = {"mean": HistoryBuffer.max}
    checkpoint = {
        "meta": {"epoch": 3, "iter": 12, "seed": np.int64(5)},
        "message_hub": {"log_scalars": collections.OrderedDict(loss=buffer), "runtime_info": {"eta": np.float64(1.5)}},
        "param_schedulers": [{"milestones": collections.Counter({8: 1, 11: 1})}],
        "state_dict": {"w": torch.arange(3.0)},
    }
    torch.save(checkpoint, tmp_path / "epoch_3.pth")
    loaded = load_mmengine_checkpoint(tmp_path / "epoch_3.pth")
    restored = loaded["message_hub"]["log_scalars"]["loss"]
    assert type(restored) is HistoryBuffer and restored.max_length == 7
    np.testing.assert_array_equal(restored.data[0], [0.5, 0.25, 0.125])
    np.testing.assert_array_equal(restored.data[1], [1, 2, 1])
    assert restored.mean(2) == pytest.approx((0.25 + 0.125) / (2 + 1)) and restored.statistics("max") == 0.5
    assert loaded["meta"]["seed"] == 5 and loaded["message_hub"]["runtime_info"]["eta"] == 1.5
    assert loaded["param_schedulers"][0]["milestones"] == collections.Counter({8: 1, 11: 1})
    assert torch.equal(loaded["state_dict"]["w"], torch.arange(3.0))
    assert HistoryBuffer._statistics_methods == methods


def test_loader_refuses_malformed_buffers(tmp_path):
    buffer = HistoryBuffer([1.0], [1])
    buffer._log_history = "not numbers"
    torch.save({"message_hub": {"log_scalars": {"loss": buffer}}}, tmp_path / "bad.pth")
    with pytest.raises(CheckpointError, match="log history is not a numeric vector"):
        load_mmengine_checkpoint(tmp_path / "bad.pth")


def test_loader_drops_a_config_that_resume_would_run(tmp_path):
    """mmengine's resume parses meta['config'] as a Python config file, which executes it."""
    marker = tmp_path / "code_ran"
    torch.save({"meta": {"epoch": 1, "iter": 1, "config": f"x = {_touch(marker)}"}}, tmp_path / "config.pth")
    assert "config" not in load_mmengine_checkpoint(tmp_path / "config.pth")["meta"]
    assert not marker.exists()


def test_loader_refuses_containers_nested_past_recursion(tmp_path):
    limit = sys.getrecursionlimit()
    nested = []
    for _ in range(2 * limit):
        nested = [nested]
    sys.setrecursionlimit(8 * limit)
    try:
        torch.save({"meta": nested}, tmp_path / "deep.pth")
    finally:
        sys.setrecursionlimit(limit)
    with pytest.raises(CheckpointError, match="nests its containers too deeply"):
        load_mmengine_checkpoint(tmp_path / "deep.pth")


def test_loader_reports_unreadable_files(tmp_path):
    torch.save({"state_dict": {"w": torch.ones(1000)}}, tmp_path / "whole.pth")
    (tmp_path / "cut.pth").write_bytes((tmp_path / "whole.pth").read_bytes()[:500])
    with pytest.raises(CheckpointError, match="cut.pth is not a readable PyTorch checkpoint"):
        load_mmengine_checkpoint(tmp_path / "cut.pth")
    with pytest.raises(CheckpointError, match="does not exist"):
        load_mmengine_checkpoint(tmp_path / "missing.pth")


@pytest.fixture(scope="module")
def tiny_mask_rcnn(tmp_path_factory):
    """Mask R-CNN configs on two generated images: the backbone from scratch, and from ImageNet weights."""
    pytest.importorskip("mmcv.ops", reason="mmcv with compiled ops is not installed (tools/install_mmcv.sh)")
    pytest.importorskip("mmdet")
    from _mm import CONFIGS, tiny_det_cfg

    from visionzoo.data.shapes import write_coco_shapes

    root = tmp_path_factory.mktemp("mm_security")
    data = write_coco_shapes(root / "coco", num_train=2, num_val=2, size=96)
    cfg = tiny_det_cfg(CONFIGS / "det/shvit/mask-rcnn_vz-shvit-s4_tconv-fpn_1x_coco.py", data, root / "work")
    cfg.train_cfg.max_epochs = 1
    cfg.dump(str(root / "scratch.py"))
    cfg.model.backbone.init_cfg = dict(type="Pretrained", checkpoint="set with --cfg-options")
    cfg.dump(str(root / "pretrained.py"))
    return {"scratch": root / "scratch.py", "pretrained": root / "pretrained.py"}


ENTRY_POINTS = {
    "test": lambda configs, checkpoint: ["test", str(configs["scratch"]), str(checkpoint)],
    "train --resume": lambda configs, checkpoint: ["train", str(configs["scratch"]), "--resume", str(checkpoint)],
    "backbone init_cfg": lambda configs, checkpoint: [
        "train", str(configs["pretrained"]), "--cfg-options", f"model.backbone.init_cfg.checkpoint={checkpoint}",
    ],
}


@pytest.mark.parametrize("entry_point", ENTRY_POINTS)
def test_every_entry_point_refuses_the_payload(entry_point, tiny_mask_rcnn, evil_checkpoint, tmp_path, capsys):
    from visionzoo.mm.runner import main

    path, marker = evil_checkpoint
    argv = ENTRY_POINTS[entry_point](tiny_mask_rcnn, path) + ["--work-dir", str(tmp_path / "work")]
    assert main(argv) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith(f"python -m visionzoo.mm {argv[0]}: error: refused to load {path}")
    assert "getattr" in error and "\n" not in error, error
    assert not marker.exists()


def test_resume_ignores_a_config_that_would_run(tiny_mask_rcnn, tmp_path):
    """A resume file at the run's last epoch with code in meta['config']: the run resumes, the code never runs."""
    from visionzoo.mm.runner import train

    marker = tmp_path / "code_ran"
    hub = {"log_scalars": {}, "runtime_info": {}, "resumed_keys": {}}
    torch.save({"meta": {"epoch": 1, "iter": 1, "config": f"x = {_touch(marker)}"}, "state_dict": {},
                "message_hub": hub}, tmp_path / "epoch_1.pth")
    resume = ["--resume", str(tmp_path / "epoch_1.pth"), "--work-dir", str(tmp_path / "w")]
    runner = train([str(tiny_mask_rcnn["scratch"]), *resume])
    assert runner.epoch == 1 and runner.iter == 1
    assert not marker.exists()


def test_resume_from_weights_only_file_says_what_to_do(tiny_mask_rcnn, tmp_path, capsys):
    from visionzoo.mm.runner import main

    torch.save({"state_dict": {}}, tmp_path / "weights.pth")
    assert main(["train", str(tiny_mask_rcnn["scratch"]), "--resume", str(tmp_path / "weights.pth"),
                 "--work-dir", str(tmp_path / "w")]) == 2
    assert "not an mmengine training checkpoint" in capsys.readouterr().err
