# Mask R-CNN 1x on COCO with a visionzoo backbone; family configs name the model and the neck's channels.
# ImageNet weights (our layout, timm's or the official release's) come from
# --cfg-options model.backbone.init_cfg.checkpoint=PATH.
_base_ = [
    'mmdet::_base_/models/mask-rcnn_r50_fpn.py',
    'mmdet::_base_/datasets/coco_instance.py',
    './vz_adamw_1x.py',
    'mmdet::_base_/default_runtime.py',
]
custom_imports = dict(imports=['visionzoo.mm'], allow_failed_imports=False)
model = dict(
    backbone=dict(_delete_=True, type='VisionZooBackbone', model_name=None, init_cfg=dict(type='Pretrained')),
    neck=dict(in_channels=None),
)
train_dataloader = dict(batch_size=2)
