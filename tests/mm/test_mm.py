"""mmdetection / mmsegmentation transfer: every config builds, and real pipelines train and evaluate.

The end-to-end runs use generated COCO- and ADE20K-format data (drawn shapes), a few iterations on the
CPU: losses must be finite and the evaluators (pycocotools bbox/segm mAP, mIoU) must report numbers.
"""
from __future__ import annotations

import math
import re

import pytest
import torch

pytest.importorskip("mmcv.ops", reason="mmcv with compiled ops is not installed (tools/install_mmcv.sh)")
pytest.importorskip("mmdet")
pytest.importorskip("mmseg")

from _mm import CONFIGS, tiny_det_cfg  # noqa: E402
from mmengine.config import Config  # noqa: E402
from mmengine.registry import DefaultScope  # noqa: E402

import visionzoo  # noqa: E402
import visionzoo.mm  # noqa: E402
from visionzoo.data.shapes import write_ade_shapes, write_coco_shapes  # noqa: E402
from visionzoo.mm.backbone import VisionZooBackbone  # noqa: E402
from visionzoo.mm.necks import TransposedConvFPN  # noqa: E402
from visionzoo.mm.runner import test as mm_test  # noqa: E402
from visionzoo.mm.runner import train as mm_train  # noqa: E402
from visionzoo.models import CheckpointError  # noqa: E402

DET_CONFIGS = sorted(p for p in (CONFIGS / "det").rglob("*.py") if "_base_" not in p.parts)
SEG_CONFIGS = sorted(p for p in (CONFIGS / "seg").rglob("*.py") if "_base_" not in p.parts)


def _build(cfg: Config):
    scope = cfg.default_scope
    registry = visionzoo.mm.REGISTRIES[scope]
    with DefaultScope.overwrite_default_scope(scope):
        return registry.build(cfg.model)


def _build_cost_mark(path):
    """Cascade heads and backbones of 85M parameters or more take many seconds to build and run on two cores:
    `-m slow` builds those, the default run the rest."""
    from visionzoo.models._cards import variant_card

    name = re.search(r"model_name='(\w+)'", path.read_text()).group(1)  # no Config parse at collection
    heavy = "cascade" in path.name or (variant_card(name) or {}).get("params", 0) >= 85_000_000
    return pytest.param(path, marks=pytest.mark.slow if heavy else (), id=str(path.relative_to(CONFIGS)))


@pytest.mark.parametrize("path", [_build_cost_mark(path) for path in DET_CONFIGS + SEG_CONFIGS])
def test_config_loads_and_builds(path):
    cfg = Config.fromfile(str(path))
    backbone = cfg.model.backbone
    assert backbone.type == "VisionZooBackbone"
    assert backbone.model_name in visionzoo.list_models(), f"{path.name} names unregistered {backbone.model_name}"
    assert backbone.init_cfg.type == "Pretrained" and "checkpoint" not in backbone.init_cfg
    cfg.model.backbone.init_cfg = None
    model = _build(cfg).eval()
    with torch.no_grad():
        feats = model.extract_feat(torch.randn(1, 3, 96, 128))
    assert all(torch.isfinite(f).all() for f in feats)


def test_cards_and_configs_reference_each_other():
    """Each config stands beside the paper's result it reproduces in the model card, and names that model."""
    from visionzoo.models._cards import load_cards

    referenced = {}
    for card in load_cards().values():
        for name, variant in card["variants"].items():
            for task, result in (variant.get("downstream") or {}).items():
                if "config" in result:
                    referenced[result["config"]] = (name, task)
    configs = {str(p.relative_to(CONFIGS.parent)) for p in DET_CONFIGS + SEG_CONFIGS}
    assert configs == set(referenced), f"configs without a card entry: {sorted(configs - set(referenced))}"
    for config, (name, task) in referenced.items():
        assert Config.fromfile(str(CONFIGS.parent / config)).model.backbone.model_name == name, (config, task)


def test_mask_rcnn_trains_evaluates_and_resumes(tmp_path):
    root = write_coco_shapes(tmp_path / "coco", num_train=2, num_val=2, size=96)
    config = CONFIGS / "det/shvit/mask-rcnn_vz-shvit-s4_tconv-fpn_1x_coco.py"
    cfg = tiny_det_cfg(config, root, tmp_path / "work")
    cfg.train_cfg.max_epochs = 1
    cfg_path = tmp_path / "tiny_mask_rcnn.py"
    cfg.dump(str(cfg_path))

    runner = mm_train([str(cfg_path)])
    loss = runner.message_hub.get_scalar("train/loss").current()
    assert math.isfinite(loss)
    assert (tmp_path / "work/epoch_1.pth").is_file()

    # --resume continues from epoch 1 of the same work dir with mmengine's own checkpoint, its message hub
    # rebuilt from data: the loss history holds epoch 1's value and the new one.
    resumed = mm_train([str(cfg_path), "--resume", "--cfg-options", "train_cfg.max_epochs=2"])
    assert resumed.epoch == 2 and resumed.iter == 2
    history, _ = resumed.message_hub.get_scalar("train/loss").data
    assert len(history) == 2 and history[0] == loss
    metrics = mm_test([str(cfg_path), str(tmp_path / "work/epoch_2.pth")])
    for key in ("coco/bbox_mAP", "coco/segm_mAP"):
        assert key in metrics and 0.0 <= metrics[key] <= 1.0


def test_upernet_trains_and_reports_miou(tmp_path):
    root = write_ade_shapes(tmp_path / "ade", num_train=2, num_val=2, size=96)
    smallest_upernet = sorted(p for p in SEG_CONFIGS if p.name.startswith("upernet"))[0]
    cfg = Config.fromfile(str(smallest_upernet))
    cfg.model.backbone.init_cfg = None
    cfg.crop_size = (96, 96)
    cfg.model.data_preprocessor.size = (96, 96)
    cfg.model.test_cfg = dict(mode="whole")
    for loader, split in (("train_dataloader", "training"), ("val_dataloader", "validation"),
                          ("test_dataloader", "validation")):
        dataloader = cfg[loader]
        dataloader.num_workers = 0
        dataloader.persistent_workers = False
        dataloader.dataset.data_root = str(root)
        dataloader.dataset.data_prefix = dict(img_path=f"images/{split}", seg_map_path=f"annotations/{split}")
        for step in dataloader.dataset.pipeline:
            if step["type"] in ("RandomResize", "Resize"):
                step["scale"] = (128, 96)
            if step["type"] == "RandomCrop":
                step["crop_size"] = (96, 96)
    cfg.train_cfg = dict(type="IterBasedTrainLoop", max_iters=2, val_interval=2)
    cfg.default_hooks.logger.interval = 1
    cfg.default_hooks.checkpoint.interval = 2
    cfg.work_dir = str(tmp_path / "work")
    cfg_path = tmp_path / "tiny_upernet.py"
    cfg.dump(str(cfg_path))
    runner = mm_train([str(cfg_path)])
    assert math.isfinite(runner.message_hub.get_scalar("train/loss").current())
    metrics = mm_test([str(cfg_path), str(tmp_path / "work/iter_2.pth")])
    assert "mIoU" in metrics and 0.0 <= metrics["mIoU"] <= 100.0


def test_backbone_adapter_options():
    name = "vz_shvit_s1"
    backbone = VisionZooBackbone(name, out_indices=(1, 2), frozen_stages=1, norm_eval=True)
    maps = backbone(torch.randn(1, 3, 97, 131))
    assert [m.shape[1] for m in maps] == backbone.channels == [224, 320]
    assert backbone.strides == [32, 64]
    frozen = {n for n, p in backbone.model.named_parameters() if not p.requires_grad}
    assert frozen and all(not n.startswith("stages.1") for n in frozen)
    assert any(n.startswith("stages.0") for n in frozen)
    backbone.train()
    assert all(not m.training for m in backbone.modules() if isinstance(m, torch.nn.BatchNorm2d))
    with pytest.raises(ValueError, match="out_indices"):
        VisionZooBackbone(name, out_indices=(5,))
    with pytest.raises(ValueError, match="frozen_stages"):
        VisionZooBackbone(name, frozen_stages=7)


@pytest.mark.parametrize("out_indices, fix", [((2, 1), r"use \(1, 2\)"), ((1, 1), r"use \(1,\)"),
                                              ((-1, 0), r"use \(0, 2\)")])
def test_backbone_refuses_unordered_or_repeated_levels(out_indices, fix):
    with pytest.raises(ValueError, match=r"each level once, from fine to coarse.*" + fix):
        VisionZooBackbone("vz_shvit_s1", out_indices=out_indices)


def test_cli_reports_unordered_levels_in_one_line(tmp_path, capsys):
    from visionzoo.mm.runner import main

    cfg = tiny_det_cfg(CONFIGS / "det/shvit/mask-rcnn_vz-shvit-s4_tconv-fpn_1x_coco.py", tmp_path, tmp_path / "work")
    cfg.dump(str(tmp_path / "tiny.py"))
    assert main(["train", str(tmp_path / "tiny.py"), "--cfg-options", "model.backbone.out_indices=(2,1)"]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("python -m visionzoo.mm train: error: ") and error.endswith("use (1, 2)")


def test_backbone_negative_levels_return_maps_in_reported_order():
    backbone = VisionZooBackbone("vz_shvit_s1", out_indices=(0, -1)).eval()
    assert backbone.out_indices == (0, 2)
    maps = backbone(torch.randn(1, 3, 64, 64))
    assert [m.shape[1] for m in maps] == backbone.channels == [128, 320]


def test_backbone_loads_imagenet_checkpoint_and_rejects_wrong_one(tmp_path):
    classifier = visionzoo.create_model("vz_shvit_s1").eval()
    torch.save({"model": classifier.state_dict()}, tmp_path / "in1k.pth")
    backbone = VisionZooBackbone("vz_shvit_s1", init_cfg=dict(type="Pretrained", checkpoint=str(tmp_path / "in1k.pth")))
    backbone.init_weights()
    backbone.eval()
    expected = classifier.forward_intermediates(torch.ones(1, 3, 64, 64), intermediates_only=True)
    actual = backbone(torch.ones(1, 3, 64, 64))
    assert all(torch.allclose(a, b) for a, b in zip(actual, expected))

    torch.save(visionzoo.create_model("vz_shvit_s2").state_dict(), tmp_path / "other.pth")
    wrong = VisionZooBackbone("vz_shvit_s1", init_cfg=dict(type="Pretrained", checkpoint=str(tmp_path / "other.pth")))
    with pytest.raises(CheckpointError, match="wrong shapes"):
        wrong.init_weights()


def test_transposed_conv_fpn_strides():
    neck = TransposedConvFPN([128, 224, 320], 32, num_outs=5, num_upsample=2)
    inputs = [torch.randn(1, c, 64 // s, 64 // s) for c, s in ((128, 1), (224, 2), (320, 4))]
    assert [o.shape[-1] for o in neck(inputs)] == [256, 128, 64, 32, 16]
    retina = TransposedConvFPN([128, 224, 320], 32, num_outs=5, num_upsample=1, add_extra_convs="on_input")
    assert [o.shape[-1] for o in retina(inputs)] == [128, 64, 32, 16, 8]
    with pytest.raises(ValueError, match="num_outs"):
        TransposedConvFPN([128, 224, 320], 32, num_outs=3, num_upsample=2)
