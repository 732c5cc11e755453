# TransNeXt-Base Mask R-CNN 1x (paper: box AP 51.7, mask AP 45.9).
_base_ = ['./mask-rcnn_vz-transnext-tiny_fpn_1x_coco.py']
model = dict(
    backbone=dict(model_name='vz_transnext_base', drop_path_rate=0.7),
    neck=dict(in_channels=[96, 192, 384, 768]),
)
