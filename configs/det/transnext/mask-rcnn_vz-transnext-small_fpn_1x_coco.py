# TransNeXt-Small Mask R-CNN 1x (paper: box AP 51.1, mask AP 45.5).
_base_ = ['./mask-rcnn_vz-transnext-tiny_fpn_1x_coco.py']
model = dict(backbone=dict(model_name='vz_transnext_small', drop_path_rate=0.6))
