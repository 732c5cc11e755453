# DaViT-S Mask R-CNN 1x (paper: box AP 47.7, mask AP 42.9); drop path 0.2, the dense base config's default.
_base_ = ['./mask-rcnn_vz-davit-tiny_fpn_1x_coco.py']
model = dict(backbone=dict(model_name='vz_davit_small', drop_path_rate=0.2))
