# Mask R-CNN 3x on COCO with a visionzoo backbone: the multi-scale 1x base with 36 epochs (lr steps at 27 and 33).
_base_ = ['./mask-rcnn_vz_fpn_ms-1x_coco.py']
train_cfg = dict(max_epochs=36)
param_scheduler = [
    dict(type='LinearLR', start_factor=0.001, by_epoch=False, begin=0, end=500),
    dict(type='MultiStepLR', begin=0, end=36, by_epoch=True, milestones=[27, 33], gamma=0.1),
]
