"""Tiny mmdet runs for the tests: generated COCO-format shapes, a few images, small inputs, no workers."""
from __future__ import annotations

import copy
from pathlib import Path

from mmengine.config import Config

from visionzoo.data.shapes import SHAPE_CLASSES

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def _shrink_pipeline(pipeline, scale):
    for step in pipeline:
        if step["type"] == "Resize":
            step["scale"] = scale
    return pipeline


def tiny_det_cfg(config: Path, root: Path, work_dir: Path) -> Config:
    cfg = Config.fromfile(str(config))
    cfg.model.backbone.init_cfg = None
    cfg.model.roi_head.bbox_head.num_classes = len(SHAPE_CLASSES)
    cfg.model.roi_head.mask_head.num_classes = len(SHAPE_CLASSES)
    metainfo = dict(classes=SHAPE_CLASSES)
    for loader, split in (("train_dataloader", "train"), ("val_dataloader", "val"), ("test_dataloader", "val")):
        dataloader = cfg[loader]
        dataloader.num_workers = 0
        dataloader.persistent_workers = False
        dataloader.batch_size = 2
        dataloader.dataset.update(
            data_root=str(root), ann_file=f"annotations/instances_{split}.json", data_prefix=dict(img=f"{split}/"),
            metainfo=metainfo, pipeline=_shrink_pipeline(copy.deepcopy(dataloader.dataset.pipeline), (128, 96)),
        )
    for evaluator in ("val_evaluator", "test_evaluator"):
        cfg[evaluator].ann_file = str(root / "annotations/instances_val.json")
    cfg.train_cfg = dict(type="EpochBasedTrainLoop", max_epochs=2, val_interval=2)
    cfg.default_hooks.logger.interval = 1
    cfg.default_hooks.checkpoint.interval = 1
    cfg.work_dir = str(work_dir)
    return cfg
